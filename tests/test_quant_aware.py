"""Quant-aware distillation: the last steps train through the file's exact grid, the saved
student holds the rounded weights, and llama.cpp's file holds exactly those."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgedistill import quantgrid
from edgedistill.distill import DataConfig, DistillConfig, TrainConfig, distill
from edgedistill.distill.quant_aware import CONFIG_KEY, phase
from edgedistill.errors import EdgeDistillError
from edgedistill.export import ExportConfig, export


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from edgedistill.data import stdlib_source

    p = tmp_path_factory.mktemp("data") / "code.txt"
    p.write_text(stdlib_source(60_000))
    return p


def _qat(model, target, data, spec, out, steps=8, batch_size=2, lr=1e-3):
    """distill --teacher MODEL --student MODEL --quant-aware SPEC: a QAT checkpoint of it."""
    return distill(model, target, data, out,
                   DistillConfig(student=str(model), quant_aware=spec,
                                 train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                                                   eval_every=4, save_every=0),
                                 data=DataConfig(seq_len=32)))


def test_the_phase_is_the_last_share_of_the_steps():
    assert phase(None, 0.25, 100) is None
    p = phase("gguf:q4_0", 0.25, 100)
    assert (p.start, p.fmt, p.quant) == (75, "gguf", "q4_0")
    assert phase("gguf:q8_0", 0.01, 10).start == 9  # at least one step
    assert phase("gguf:q8_0", 1.0, 10).start == 0
    assert phase("gguf:q4_k_m", 0.5, 10).start == 5
    for bad, hint in (("q4_0", "gguf:q4_k_m"), ("gguf:q5_k_m", "gguf:q4_0"),
                      ("onnx:int8", "onnx:int4")):
        with pytest.raises(EdgeDistillError) as e:
            DistillConfig(quant_aware=bad)
        assert hint in (e.value.hint or "")
    with pytest.raises(EdgeDistillError, match="--quant-aware-share"):
        DistillConfig(quant_aware="gguf:q4_0", quant_aware_share=0)
    with pytest.raises(EdgeDistillError, match="progressive"):
        DistillConfig(quant_aware="gguf:q4_0", stages=2)


def test_the_whole_chains_default_and_the_deployed_file_check():
    """On by default for the first deployed file that loses measurably and has a grid (the
    laptop's Q4_K_M; the phone NPU's a8w8, static 8-bit activations; causal LMs only); off
    for encoders and for near-lossless files; a file the profile does not deploy is
    refused."""
    from edgedistill.distill.quant_aware import check_deployed, default_for
    from edgedistill.profiles import load_profile

    laptop, npu = load_profile("laptop"), load_profile("phone-npu")
    assert default_for(laptop, False)[0] == "gguf:q4_k_m"
    spec, why = default_for(laptop, True)
    assert spec is None and "encoders" in why
    spec, why = default_for(npu, False)
    assert spec == "onnx:qdq_a8w8" and "static 8-bit activations" in why
    spec, why = default_for(npu, False, ("qdq_a16w8",))  # --quant qdq_a16w8
    assert spec is None and "onnx:qdq_a16w8 loses little" in why
    spec, why = default_for(npu, False, ("qdq_a16w4",))  # --quant qdq_a16w4: 4-bit weights
    assert spec == "onnx:qdq_a16w4" and "4-bit weights" in why
    assert default_for(laptop, False, ("q8_0",))[0] is None
    check_deployed("gguf:q4_0", laptop)
    with pytest.raises(EdgeDistillError) as e:
        check_deployed("gguf:q4_0", npu)
    assert "phone-npu profile does not deploy" in str(e.value) and "onnx:qdq_a16w8" in str(
        e.value)


@pytest.mark.slow
def test_a_qat_checkpoint_of_a_model_and_its_exact_file(trained_llama, text_file, tmp_path,
                                                        capsys):
    """distill --teacher M --student M --quant-aware gguf:q4_0: the layers' matrices end on
    the Q4_0 grid, the config says so, the last steps trained through the grid at the QAT
    checkpoint's learning rate, and the Q4_0 file holds exactly the trained weights (no
    importance matrix moves them)."""
    res = _qat(trained_llama, "laptop", text_file, "gguf:q4_0", tmp_path / "run", lr=None)
    qa = res.metrics["quant_aware"]
    assert qa["format"] == "gguf:q4_0" and qa["start_step"] == 4 and qa["steps"] == 4
    # q, k, v, o, gate, up, down x 2 layers; the untied embedding (Q4_0) and head (hidden 64
    # does not divide into Q6_K's blocks: llama.cpp falls back on Q8_0)
    assert qa["tensors"] == 16 and qa["trained_types"] == {"Q4_0": 15, "Q8_0": 1}
    cfg = json.loads((res.student_dir / "config.json").read_text())
    assert cfg[CONFIG_KEY] == "gguf:q4_0"
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(res.student_dir)
    on_grid = [n for n, p in m.named_parameters()
               if p.dim() == 2 and ".layers." in n and torch.equal(quantgrid.q4_0(p), p)]
    assert len(on_grid) == 14
    assert torch.equal(quantgrid.q4_0(m.model.embed_tokens.weight), m.model.embed_tokens.weight)
    assert torch.equal(quantgrid.q8_0(m.lm_head.weight), m.lm_head.weight)
    log = (res.run_dir / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 8
    # no --lr: a QAT checkpoint's own low rate (distill's 5e-4 would shake it off its grid)
    assert 2e-5 < max(json.loads(r)["lr"] for r in log) <= 5e-5
    assert "a QAT checkpoint (the teacher's own shape, trained quant-aware): lr 5e-05" in \
        capsys.readouterr().err

    out = export(res.student_dir, "laptop", ExportConfig(formats=("gguf",), quants=("q4_0",)),
                 tmp_path / "export")
    art = out.artifacts[0]
    assert art.status != "failed", art.verdict.failures
    assert art.quantization["quant_aware"] == "gguf:q4_0"
    assert "importance_matrix" not in art.quantization
    assert art.verdict.figures["weights"]["exact"] == 16
    assert "16 of its 16 quantized matrices hold exactly the trained weights" in art.note


@pytest.mark.slow
@pytest.mark.parametrize("model, exact", [("trained_llama", 16), ("trained_qwen2", 15)])
def test_an_onnx_int4_student_holds_exactly_its_trained_blocks(model, exact, text_file,
                                                               tmp_path, request):
    """--quant-aware onnx:int4: 4-bit blocks with zero points, 8-bit blocks for the head, the
    value and the FFN down projections, the embedding table in 4-bit blocks; the int4 file's
    MatMulNBits and GatherBlockQuantized weights decode to exactly the trained ones. A tied
    head (qwen2) trains on the table's 4-bit grid, and the file's 8-bit copy of it is the
    one matrix that is not exact."""
    teacher = request.getfixturevalue(model)
    res = _qat(teacher, "laptop", text_file, "onnx:int4", tmp_path / "run", steps=4)
    qa = res.metrics["quant_aware"]
    # q, k, o, gate, up at 4 bits and v, down at 8 per layer; the table; an untied head at 8
    want = {"MNB4": 11, "MNB8": 5} if model == "trained_llama" else {"MNB4": 11, "MNB8": 4}
    assert qa["trained_types"] == want, qa
    out = export(res.student_dir, "laptop", ExportConfig(formats=("onnx",), quants=("int4",)),
                 tmp_path / "export")
    art = next(a for a in out.artifacts if a.quant == "int4")
    assert art.status != "failed", art.verdict.failures
    w = art.verdict.figures["weights"]
    assert (w["quantized"], w["exact"]) == (16, exact), w
    assert f"{exact} of its 16 quantized matrices hold exactly the trained weights" in art.note


@pytest.mark.slow
def test_compare_ptq_sets_the_same_student_with_and_without_qad_side_by_side(
        trained_llama, tmp_path):
    """export --compare-ptq: the chain also distils the planned student without QAD, for the
    same steps, exports and measures it; the report's table pairs the two files."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgedistill", "export", "--teacher", str(trained_llama),
           "--target", "laptop", "--out", str(out), "--steps", "4", "--seq-len", "32",
           "--batch-size", "2", "--quant", "q4_0", "--new-tokens", "8", "--repeats", "1",
           "--speedup", "1", "--no-baselines", "--compare-ptq"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "quant-aware distillation: on, for gguf:q4_0" in r.stderr
    assert "distill without quant-aware (--compare-ptq)" in r.stderr
    assert "a QAT checkpoint" not in r.stderr  # a planned student keeps distillation's rate
    assert CONFIG_KEY in json.loads((out / "student" / "config.json").read_text())
    assert CONFIG_KEY not in json.loads((out / "ptq" / "student" / "config.json").read_text())
    doc = json.loads((out / "report.json").read_text())
    assert {a["role"] for a in doc["artifacts"]} == {"student", "student-ptq"}
    rows = {c["file"]: c for c in doc["compare_ptq"]}
    assert set(rows) == {"gguf:q4_0", "hf:fp32"}
    for c in rows.values():
        for side in ("quant_aware", "ptq"):
            assert c[side]["kl_to_teacher"] >= 0 and c[side]["decode_tokens_per_s"] > 0
    assert doc["recommendation"]["headline"]
    assert (doc["recommendation"].get("file") or doc["recommendation"]["closest"])[
        "role"] == "student"
    md = (out / "report.md").read_text()
    assert "## Quant-aware against distil-then-quantize" in md and "| gguf:q4_0 |" in md
    assert "id='compare-ptq'" in (out / "report.html").read_text()


def test_cli_refuses_a_format_without_a_grid(trained_llama, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgedistill", "distill", "--teacher",
                        str(trained_llama), "--quant-aware", "gguf:q5_k_m", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no fake-quant grid for gguf:q5_k_m" in r.stderr and "gguf:q4_k_m" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["qdq_a8w8", "qdq_a16w4"])
def test_a_phone_npu_student_trains_for_its_qdq_file_exactly(trained_llama, text_file,
                                                             tmp_path, quant):
    """--quant-aware onnx:qdq_a8w8: matrices on 8 bits per channel (S8C), the embedding table
    on the file's per-tensor grid, the linear layers' activations rounded to 8 bits. onnx:qdq_a16w4: the matrices on
    4 bits per channel (S4C), the table at 16 bits. The QDQ files onnxruntime writes for the
    HTP decode to exactly the trained weights, and the model still agrees with its teacher."""
    res = _qat(trained_llama, "phone-npu", text_file, f"onnx:{quant}", tmp_path / "run")
    qa = res.metrics["quant_aware"]
    if quant == "qdq_a8w8":
        assert qa["trained_types"] == {"S8C": 15, "U8": 1} and "8 bits per tensor" in qa["activations"]
    else:
        assert qa["trained_types"] == {"S4C": 15, "U16": 1} and "activations" not in qa, qa
    assert res.metrics["validation"]["kl"] < 0.05, res.metrics["validation"]
    out = export(res.student_dir, "phone-npu",
                 ExportConfig(quants=(quant,), context=160, eval_sequences=2,
                              npu_eval_items=2), tmp_path / "export")
    art = next(a for a in out.artifacts if a.quant == quant)
    assert art.status == "passed", art.verdict.failures
    w = art.verdict.figures["weights"]
    assert (w["tensors"], w["quantized"], w["exact"], w["beyond"]) == (16, 16, 16, 0), w
    assert "16 of its 16 quantized matrices hold exactly the trained weights" in art.note


@pytest.mark.slow
def test_a_sentence_encoder_trains_quant_aware_into_an_exact_gguf(tmp_path):
    """BERT's GGUF names too: its layers' matrices and the word embedding (the output-role
    table in Q8_0 here) train through the grid, and the Q8_0 file holds them exactly."""
    from conftest import tiny_sentence_bert
    from edgedistill.data import stdlib_sentences

    teacher = tiny_sentence_bert(tmp_path / "bert")
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(stdlib_sentences()[:400]))
    res = _qat(teacher, "laptop", sentences, "gguf:q8_0", tmp_path / "run", steps=4,
               batch_size=8, lr=5e-4)
    qa = res.metrics["quant_aware"]
    assert qa["trained_types"] == {"Q8_0": qa["tensors"]} and qa["tensors"] >= 13, qa
    out = export(res.student_dir, "laptop", ExportConfig(formats=("gguf",), quants=("q8_0",)),
                 tmp_path / "export")
    art = out.artifacts[0]
    assert art.status != "failed", art.verdict.failures
    w = art.verdict.figures["weights"]
    assert w["exact"] == w["quantized"] == qa["tensors"], w
