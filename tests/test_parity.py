"""The verification table and its verdicts: passed, below target, failed (fast, no models)."""
import json
from dataclasses import fields
from pathlib import Path

import pytest

from edgedistill.formats import QUANT_TYPES
from edgedistill.verify.parity import (ENCODER_THRESHOLDS, Threshold, THRESHOLDS, judge,
                                       threshold_for)

# Figures measured on SmolLM2-135M-Instruct, as committed by benchmarks/export_parity.py:
# ordinary losses of a real small model, every one of which misses the export issue's targets.
_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SMOLLM2 = {(r["format"], r["quant"]): r for r in
           json.loads((_RESULTS / "export_parity_smollm2.json").read_text())["artifacts"]}


def test_the_table_covers_every_quantization_and_floors_sit_below_targets():
    lm = {key for key in QUANT_TYPES if key[0] != "hf"}
    assert set(THRESHOLDS) == lm and set(ENCODER_THRESHOLDS) == lm
    for table in (THRESHOLDS, ENCODER_THRESHOLDS):
        for key, lim in table.items():
            for f in fields(Threshold):
                t, fl = getattr(lim.target, f.name), getattr(lim.floor, f.name)
                if t is None or fl is None:
                    continue
                looser = fl <= t if f.name in ("top1_agreement", "cosine") else fl >= t
                assert looser, (key, f.name, t, fl)
            assert any(getattr(lim.floor, f.name) is not None for f in fields(Threshold)), key


@pytest.mark.parametrize("key", list(SMOLLM2), ids=lambda k: ":".join(k))
def test_a_real_models_ordinary_losses_are_below_target_not_failed(key):
    v = judge(SMOLLM2[key], threshold_for(*key, encoder=False))
    assert v.status == "below-target" and v.usable and not v.passed, v.failures
    assert v.failures and all(f.endswith("(target)") for f in v.failures)


def test_broken_files_fail_their_floor():
    # a scaled LM head (every logit 1.3x): top-1 kept, distribution not
    v = judge({"max_abs_diff": 6.0, "max_rel_diff": 0.23, "kl": 0.04, "top1_agreement": 1.0},
              threshold_for("onnx", "fp32", encoder=False))
    assert v.status == "failed" and not v.usable
    assert any("largest logit" in f and f.endswith("(floor)") for f in v.failures)
    # one wrong position in 128 (an off-by-one in a KV cache) in an F16 file
    v = judge({"max_abs_diff": 0.3, "max_rel_diff": 0.012, "kl": 2.0 / 128,
               "top1_agreement": 0.995}, threshold_for("gguf", "f16", encoder=False))
    assert v.status == "failed" and any(f.startswith("KL") for f in v.failures)
    # a 4-bit file that lost the model
    v = judge({"top1_agreement": 0.41, "kl": 1.9}, threshold_for("gguf", "q4_k_m", False))
    assert v.status == "failed" and len([f for f in v.failures if "(floor)" in f]) == 2
    # a figure the runtime did not produce is a miss, not a pass
    assert judge({}, threshold_for("gguf", "q8_0", encoder=False)).status == "failed"
    assert judge({"cosine": 0.91}, threshold_for("onnx", "int8", encoder=True)).status == \
        "failed"


def test_a_sound_fp16_onnx_file_of_a_small_model_is_not_failed():
    """Figures of a real fp16 ONNX export (the 4.2M llama of benchmarks/export_parity.py):
    all-fp16 arithmetic moves one logit in 1024 tokens by 0.2, 1.2% of its largest logit, with
    KL 5e-6 and top-1 99.9%. Lossy beyond the target, not broken."""
    v = judge({"max_abs_diff": 0.205, "max_rel_diff": 0.0119, "kl": 5.2e-6,
               "top1_agreement": 0.999}, threshold_for("onnx", "fp16", encoder=False))
    assert v.status == "below-target" and v.usable, v.failures
    # the same file with one KV position off (KL of a wrong token in 128) is failed
    v = judge({"max_abs_diff": 0.4, "max_rel_diff": 0.024, "kl": 2.0 / 128,
               "top1_agreement": 0.99}, threshold_for("onnx", "fp16", encoder=False))
    assert v.status == "failed" and any(f.startswith("KL") for f in v.failures)


def test_exact_files_pass_and_the_verdict_serializes():
    v = judge({"max_abs_diff": 3e-5, "max_rel_diff": 2e-6, "kl": 1e-12, "top1_agreement": 1.0},
              threshold_for("onnx", "fp32", encoder=False))
    assert v.status == "passed" and v.passed and v.usable and not v.failures
    d = v.to_dict()
    assert d["passed"] and d["status"] == "passed"
    assert d["threshold"]["target"]["max_abs_diff"] == 1e-4
    assert d["threshold"]["floor"]["max_rel_diff"] == 1e-4
    v.fail("tokenizer parity: 3 of 40 probe texts tokenize differently in llama.cpp")
    assert v.status == "failed" and not v.to_dict()["passed"]
