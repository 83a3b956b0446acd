"""Runners, timing, quality, reports and the whole chain, on tiny models built here."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedistill.bench import BenchConfig, bench
from edgedistill.bench.quality import causal_quality
from edgedistill.similarity import neighbour_overlap
from edgedistill.bench.timing import percentile, roofline_fraction, summarize_causal
from test_report import render


def test_timing_statistics():
    runs = [{"prefill_s": 0.5, "token_s": [0.01] * 9 + [0.1]},
            {"prefill_s": 1.0, "token_s": [0.02] * 10}]
    s = summarize_causal(runs, prompt_tokens=100, new_tokens=10)
    assert s["prefill_tokens_per_s"] == pytest.approx(150.0)  # median of 200 and 100
    assert s["spread"]["prefill_tokens_per_s"] == [100.0, 200.0]
    assert s["p50_ms"] == pytest.approx(20.0) and s["p95_ms"] > 20
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert roofline_fraction(1e9, 10, 20) == pytest.approx(0.5)


def test_quality_figures():
    rng = np.random.default_rng(0)
    t = [rng.normal(size=(6, 11))]
    ids = [[1, 2, 3, 4, 5, 6, 7]]
    same = causal_quality(t, [ids[0][:6]], t)
    assert same["kl_to_teacher"] == pytest.approx(0) and same["top1_agreement"] == 1
    assert same["perplexity"] > 1
    a = rng.normal(size=(30, 8))
    assert neighbour_overlap(a, a) == 1.0 and neighbour_overlap(a, rng.normal(size=(30, 8))) < 1


def _arts(model: Path, export_dir: Path, extra=()):
    from edgedistill.export import ExportConfig, export
    res = export(model, "laptop", ExportConfig(quants=("q8_0", "int8")), export_dir)
    return [{"role": "student", "path": str(a.path), "format": a.format, "quant": a.quant,
             "model_dir": str(model)} for a in res.artifacts] + list(extra)


@pytest.mark.slow
def test_a_crashing_or_missing_runtime_is_reported_and_the_rest_measured(trained_llama,
                                                                         tmp_path,
                                                                         monkeypatch):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    arts = _arts(trained_llama, tmp_path / "e", [
        {"role": "student", "path": str(junk), "format": "gguf", "quant": "q8_0",
         "model_dir": str(trained_llama)}])
    recs = bench(arts, trained_llama, "laptop", BenchConfig(new_tokens=8, repeats=1))
    by = {(r.path): r for r in recs}
    bad = by[str(junk)]
    assert bad.bench["measured"] is False and "llama.cpp failed" in bad.bench["error"]
    good = [r for r in recs if r.path != str(junk)]
    for r in good:
        b = r.bench
        assert b["measured"] and b["decode_tokens_per_s"] > 0 and b["prefill_tokens_per_s"] > 0
        assert b["p95_ms"] >= b["p50_ms"] > 0 and b["peak_rss_mb"] > 10
        assert 0 < b["roofline_fraction"] and r.quality["perplexity"] > 1
        assert r.predicted["target"]["label"] == "uncalibrated"
        if r.format == "gguf":  # llama-cpp-python's generate loop beside the bare step
            assert 0 < b["generate_tokens_per_s"] < 1.5 * b["decode_tokens_per_s"]
            assert r.predicted["target"]["generate_tokens_per_s"] > 0
        else:
            assert "generate_tokens_per_s" not in b
    from edgedistill.runtimes import runners
    monkeypatch.setattr(runners, "available", lambda rt: rt != "onnxruntime-cpu")
    recs = bench(arts[:1], trained_llama, "laptop", BenchConfig(new_tokens=4, repeats=1))
    assert recs[0].format != "onnx" or "not installed" in recs[0].bench["error"]


@pytest.mark.slow
def test_whole_chain_report_and_rerun_skips(trained_llama, tmp_path):
    cmd = [sys.executable, "-m", "edgedistill", "export", "--teacher", str(trained_llama),
           "--target", "laptop", "--out", str(tmp_path / "run"), "--steps", "4",
           "--seq-len", "32", "--batch-size", "2", "--quant", "q8_0,int8", "--new-tokens", "8",
           "--repeats", "1", "--speedup", "1", "--verify-plan", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    doc = json.loads((run / "report.json").read_text())
    roles = {a["role"] for a in doc["artifacts"]}
    assert roles == {"student", "teacher"}
    for a in doc["artifacts"]:
        for key in ("role", "path", "format", "quant", "size_bytes", "bench", "quality"):
            assert key in a
        b = a["bench"]
        assert b["measured"] is True and b["device"] and b["runtime"]
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "p50_ms",
                    "p95_ms", "peak_rss_mb"):
            assert b[key] > 0
        if a["format"] != "hf":
            assert {"max_abs_diff", "top1_agreement", "status"} <= set(a["parity"])
            assert a["predicted"]["target"]["label"] == "uncalibrated"
            assert b["roofline_fraction"] > 0
    assert (run / "report.md").read_text().startswith("# edgedistill report")
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # quality/speed, training, predicted
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert again.stderr.count("inputs unchanged") == 5  # distill, verify plan, 2 exports, bench
    rec = doc["recommendation"]
    assert rec["headline"] and (rec["file"] or rec["closest"])["role"] == "student"
    assert doc["training"]["steps"] == 4 and len(doc["training"]["curve"]) == 4
    assert doc["plan"]["predicted_vs_measured"][0]["measured_here"] > 0
    # --verify-plan: the candidates around the choice, timed here, in the report
    v = doc["plan"]["verify"]
    assert len(v["candidates"]) == 2 and v["target"] == "laptop"
    assert all(c["measured"]["decode_tokens_per_s"] > 0 for c in v["candidates"])
    assert not v["regret"]["applies"]  # the laptop is not this machine
    assert "checked by measurement" in (run / "report.md").read_text()
    assert "id='plan-verify'" in html
    out = render(run / "report.html", tmp_path)
    assert out["sections"] == ["recommendation", "files", "pareto", "plan", "training",
                               "predicted", "notes"]


@pytest.mark.slow
def test_whole_chain_on_this_machine_distils_the_verified_choice(trained_llama, tmp_path):
    """--target local --verify-plan K: the plan is checked by timing before distilling, and
    the student distilled is the verified choice, planned on the speeds measured here."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgedistill", "export", "--teacher",
                        str(trained_llama), "--target", "local", "--out", str(run), "--steps",
                        "2", "--seq-len", "32", "--batch-size", "2", "--quant", "q8_0",
                        "--new-tokens", "4", "--repeats", "1", "--speedup", "1",
                        "--verify-plan", "2", "--no-baselines", "--no-quant-aware"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    v = json.loads((run / "plan_verify.json").read_text())["verified"]
    assert v["applies"] and v["converged"], v
    student = json.loads((run / "plan.json").read_text())["student"]
    sh = student["shape"]
    assert (f"{sh['num_layers']}L h{sh['hidden_size']} ffn{sh['intermediate_size']}"
            == v["choice"].split(" heads")[0])
    assert student["predicted"]["label"] == "measured"
    assert "planned on the speeds measured here" in r.stderr
    assert "Re-planned on the measured speeds" in (run / "report.md").read_text()


@pytest.mark.slow
def test_encoders_are_predicted_at_the_lengths_the_bench_runs(tmp_path):
    """An encoder's batch is timed padded to its longest sentence (onnxruntime) or unpadded
    (llama.cpp), not at the profile's cap: the record says which length it ran and why, and
    both predictions beside it are for that length."""
    from conftest import tiny_sentence_bert
    from edgedistill.arch import shape_from_config
    from edgedistill.bench import _at_seq_len
    from edgedistill.export import ExportConfig, export
    from edgedistill.plan.predictor import predictor_for
    from edgedistill.profiles import load_profile
    from edgedistill.records import BenchRecord

    model = tiny_sentence_bert(tmp_path / "bert")
    res = export(model, "laptop", ExportConfig(quants=("fp32", "f16")), tmp_path / "out")
    recs = bench([BenchRecord.from_export(a, model) for a in res.artifacts], model, "laptop",
                 BenchConfig(repeats=2))
    laptop = load_profile("laptop")
    cap = laptop.latency_targets.encoder_seq_len
    by = {r.format: r for r in recs}
    onnx, gguf = by["onnx"].bench, by["gguf"].bench
    assert onnx["seq_len_cap"] == cap and 4 < onnx["seq_len"] < cap
    assert "longest" in onnx["seq_len_basis"] and "does not pad" in gguf["seq_len_basis"]
    assert gguf["seq_len"] <= onnx["seq_len"]
    assert onnx["batches"] == gguf["batches"] == 5  # runs cycle through 5 batches of 32
    from edgedistill.english import heldout_available
    if heldout_available():  # judged on general English too, beside the data's held-out text
        g = by["onnx"].quality["general_english"]
        assert g["sentences"] == 256 and 0 < g["cosine_to_teacher"] <= 1
        assert by["onnx"].quality["sentences"] < 256 + 1
    shape = shape_from_config(json.loads((Path(model) / "config.json").read_text()))
    for fmt, b in (("onnx", onnx), ("gguf", gguf)):
        want = predictor_for(_at_seq_len(laptop, b["seq_len"]))(
            shape, fmt, by[fmt].quant).encoder_batch_ms
        got = by[fmt].predicted["target"]["encoder_batch_ms"]
        assert got == pytest.approx(want)
        at_cap = predictor_for(laptop)(shape, fmt, by[fmt].quant).encoder_batch_ms
        assert got < at_cap  # shorter than the cap: less work predicted


TOKENIZER_TEXTS = ["A short one.", "", "Crème brûlée, naïve café — 東京 and emoji 🙂!",
                   "word " * 300, "Two\nlines\twith   spaces", "UPPER lower MiXeD 12345"]


def test_bench_children_tokenize_as_transformers_does_without_importing_it(trained_llama,
                                                                          tmp_path):
    """An onnxruntime bench child rebuilds the parent's fast tokenizer from tokenizer_spec
    (the tokenizers library alone: importing transformers costs a child about 6 s here). Its
    ids, masks and type ids equal transformers' for padded, truncated batches, on the bundled
    MiniLM's WordPiece and a byte-level BPE with a pad token; the child never imports
    transformers."""
    import shutil

    from transformers import AutoTokenizer

    from edgedistill.runtimes.outputs import spec_encoder, tokenizer_spec
    from edgedistill.teacher import default_teacher_path

    bpe = tmp_path / "bpe"
    shutil.copytree(trained_llama, bpe)
    cfg = json.loads((bpe / "tokenizer_config.json").read_text())
    (bpe / "tokenizer_config.json").write_text(json.dumps(cfg | {"pad_token": cfg.get(
        "eos_token") or "</s>", "padding_side": "left"}))
    for folder in (default_teacher_path(), bpe):
        tok = AutoTokenizer.from_pretrained(folder)
        spec = tokenizer_spec(str(folder))
        assert spec is not None
        for texts in (TOKENIZER_TEXTS, TOKENIZER_TEXTS[:1], TOKENIZER_TEXTS[2:4]):
            want = tok(texts, padding=True, truncation=True, max_length=40, return_tensors="np")
            got = spec_encoder(spec, 40)(texts)
            assert set(got) == set(want.keys()), folder
            for k in got:
                assert np.array_equal(got[k], want[k]), (folder, k)
    assert tokenizer_spec(str(trained_llama)) is None or \
        AutoTokenizer.from_pretrained(trained_llama).pad_token is not None

    task = {"tokenizer_spec": tokenizer_spec(str(default_teacher_path())), "seq_len": 128}
    (tmp_path / "task.json").write_text(json.dumps(task))
    code = ("import json, sys; from edgedistill.runtimes.bench_worker import _encoder_tokenizer;"
            f"enc = _encoder_tokenizer(json.load(open({str(tmp_path / 'task.json')!r})));"
            "print(enc(['hello world'])['input_ids'].tolist(), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    want = AutoTokenizer.from_pretrained(default_teacher_path())(["hello world"])["input_ids"]
    assert " ".join(out[:-1]) == str(want) and out[-1] == "False"
