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


def test_the_phase_is_the_last_share_of_the_steps():
    assert phase(None, 0.25, 100) is None
    p = phase("gguf:q4_0", 0.25, 100)
    assert (p.start, p.fmt, p.quant) == (75, "gguf", "q4_0")
    assert phase("gguf:q8_0", 0.01, 10).start == 9  # at least one step
    assert phase("gguf:q8_0", 1.0, 10).start == 0
    assert phase("gguf:q4_k_m", 0.5, 10).start == 5
    for bad, hint in (("q4_0", "gguf:q4_k_m"), ("gguf:q5_k_m", "gguf:q4_0"),
                      ("onnx:int4", "gguf:q8_0")):
        with pytest.raises(EdgeDistillError) as e:
            DistillConfig(quant_aware=bad)
        assert hint in (e.value.hint or "")
    with pytest.raises(EdgeDistillError, match="--quant-aware-share"):
        DistillConfig(quant_aware="gguf:q4_0", quant_aware_share=0)
    with pytest.raises(EdgeDistillError, match="progressive"):
        DistillConfig(quant_aware="gguf:q4_0", stages=2)


def test_the_whole_chains_default_and_the_deployed_file_check():
    """On by default where the deployment file has 4-bit weights with a grid (the laptop's
    Q4_K_M, causal LMs only); off for encoders, 8-bit files and QDQ; a file the profile
    does not deploy is refused."""
    from edgedistill.distill.quant_aware import check_deployed, default_for
    from edgedistill.profiles import load_profile

    laptop, npu = load_profile("laptop"), load_profile("phone-npu")
    assert default_for(laptop, False)[0] == "gguf:q4_k_m"
    spec, why = default_for(laptop, True)
    assert spec is None and "encoders" in why
    spec, why = default_for(npu, False)
    assert spec is None and "qdq" in why
    check_deployed("gguf:q4_0", laptop)
    with pytest.raises(EdgeDistillError) as e:
        check_deployed("gguf:q4_0", npu)
    assert "phone-npu profile does not deploy" in str(e.value) and "onnx:qdq_a16w8" in str(
        e.value)


@pytest.mark.slow
def test_a_qat_checkpoint_of_a_model_and_its_exact_file(trained_llama, text_file, tmp_path):
    """distill --teacher M --student M --quant-aware gguf:q4_0: the layers' matrices end on
    the Q4_0 grid, the config says so, the last steps trained through the grid, and the Q4_0
    file holds exactly the trained weights (no importance matrix moves them)."""
    res = distill(trained_llama, "laptop", text_file, tmp_path / "run",
                  DistillConfig(student=str(trained_llama), quant_aware="gguf:q4_0",
                                train=TrainConfig(steps=8, batch_size=2, lr=1e-3, eval_every=4,
                                                  save_every=0),
                                data=DataConfig(seq_len=32)))
    qa = res.metrics["quant_aware"]
    assert qa["format"] == "gguf:q4_0" and qa["start_step"] == 6 and qa["steps"] == 2
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

    out = export(res.student_dir, "laptop", ExportConfig(formats=("gguf",), quants=("q4_0",)),
                 tmp_path / "export")
    art = out.artifacts[0]
    assert art.status != "failed", art.verdict.failures
    assert art.quantization["quant_aware"] == "gguf:q4_0"
    assert "importance_matrix" not in art.quantization
    assert art.verdict.figures["weights"]["exact"] == 16
    assert "16 of its 16 quantized matrices hold exactly the trained weights" in art.note


def test_cli_refuses_a_format_without_a_grid(trained_llama, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgedistill", "distill", "--teacher",
                        str(trained_llama), "--quant-aware", "gguf:q5_k_m", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no fake-quant grid for gguf:q5_k_m" in r.stderr and "gguf:q4_k_m" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_sentence_encoder_trains_quant_aware_into_an_exact_gguf(tmp_path):
    """BERT's GGUF names too: its layers' matrices and the word embedding (the output-role
    table in Q8_0 here) train through the grid, and the Q8_0 file holds them exactly."""
    from conftest import tiny_sentence_bert
    from edgedistill.data import stdlib_sentences

    teacher = tiny_sentence_bert(tmp_path / "bert")
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(stdlib_sentences()[:400]))
    res = distill(teacher, "laptop", sentences, tmp_path / "run",
                  DistillConfig(student=str(teacher), quant_aware="gguf:q8_0",
                                train=TrainConfig(steps=4, batch_size=8, save_every=0,
                                                  eval_every=4),
                                data=DataConfig(seq_len=32)))
    qa = res.metrics["quant_aware"]
    assert qa["trained_types"] == {"Q8_0": qa["tensors"]} and qa["tensors"] >= 13, qa
    out = export(res.student_dir, "laptop", ExportConfig(formats=("gguf",), quants=("q8_0",)),
                 tmp_path / "export")
    art = out.artifacts[0]
    assert art.status != "failed", art.verdict.failures
    w = art.verdict.figures["weights"]
    assert w["exact"] == w["quantized"] == qa["tensors"], w
