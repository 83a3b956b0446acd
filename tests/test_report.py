"""Reports from every kind of bench row: timed, not timed (NPU graphs), failed, crashed runtime
and never benched. Fast: records written by hand in the shapes bench() produces."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgedistill.pipeline import report
from edgedistill.report import build_report


def _timed(role, quant, tps, ppl):
    return {"role": role, "path": f"/x/{role}.{quant}.gguf", "format": "gguf", "quant": quant,
            "model_dir": f"/x/{role}", "size_bytes": 10 * 2**20,
            "parity": {"status": "passed", "max_abs_diff": 0.1, "top1_agreement": 0.99},
            "bench": {"runtime": "llama.cpp", "device": "Xeon (2 threads, this machine)",
                      "measured": True, "decode_tokens_per_s": tps,
                      "prefill_tokens_per_s": 9 * tps, "ttft_ms": 5.0, "p50_ms": 3.0,
                      "p95_ms": 4.0, "peak_rss_mb": 50.0, "roofline_fraction": 0.5},
            "quality": {"perplexity": ppl, "kl_to_teacher": 0.1, "top1_agreement": 0.9,
                        "measured": True},
            "predicted": {"this_machine": {"decode_tokens_per_s": tps * 1.3,
                                           "label": "uncalibrated"},
                          "target": {"decode_tokens_per_s": tps * 2, "label": "uncalibrated",
                                     "basis": "roofline"}}}


def _npu_graph(role):
    # the shape bench._npu_record writes: no device, no speed, quality from export's check
    return {"role": role, "path": f"/x/{role}.qdq_a16w8.onnx", "format": "onnx",
            "quant": "qdq_a16w8", "model_dir": f"/x/{role}", "size_bytes": 5 * 2**20,
            "parity": {"status": "below-target", "top1_agreement": 0.97},
            "bench": {"runtime": "onnxruntime-qnn (HTP, x86 simulation)", "measured": False,
                      "note": "not timed",
                      "htp": {"graphs": 2, "nodes_on_htp": 10, "nodes": 10,
                              "unsupported_ops": [], "compile_s": 1.0}},
            "quality": {"measured": True, "against": "the float student (export check)",
                        "top1_agreement": 0.97, "kl": 0.01},
            "predicted": {"target": {"decode_tokens_per_s": 40.0, "label": "uncalibrated"}}}


def _crashed(role):
    return {"role": role, "path": f"/x/{role}.q8_0.gguf", "format": "gguf", "quant": "q8_0",
            "model_dir": f"/x/{role}", "size_bytes": 7 * 2**20,
            "parity": {"status": "error"},
            "bench": {"runtime": "llama.cpp", "device": "Xeon (this machine)", "measured": False,
                      "error": "llama.cpp failed: killed by SIGSEGV"},
            "quality": {"error": "llama.cpp failed", "measured": False}}


def _never_benched(role):
    return {"role": role, "path": f"/x/{role}", "format": "hf", "quant": "fp32",
            "model_dir": f"/x/{role}"}


@pytest.mark.parametrize("rows", [
    [_npu_graph("student"), _timed("student", "q4_k_m", 300.0, 12.0), _crashed("teacher"),
     _never_benched("teacher"), _timed("teacher", "q4_k_m", 100.0, 10.0)],
    [_npu_graph("student"), _npu_graph("teacher")],  # phone-npu: nothing timed here at all
    [_crashed("student"), _never_benched("teacher")],
], ids=["mixed", "npu-only", "nothing-timed"])
def test_report_renders_every_kind_of_row(tmp_path, rows):
    (tmp_path / "bench.json").write_text(json.dumps(rows))
    paths = report(tmp_path)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert len(doc["artifacts"]) == len(rows)
    timed = [r for r in rows if (r.get("bench") or {}).get("decode_tokens_per_s")]
    assert doc["measured_on"] == ("Xeon (2 threads, this machine)" if timed else
                                  next((r["bench"]["device"] for r in rows
                                        if (r.get("bench") or {}).get("device")),
                                       "this machine"))
    md = (tmp_path / "report.md").read_text()
    for r in rows:  # every row is in the table
        assert f"| {r['role']} | {r['format']}:{r['quant']} |" in md
    html = open(paths["html"]).read()
    # a quality-against-speed plot, and predicted against measured, only with timed rows
    assert html.count("data:image/png;base64,") == (2 if timed else 0)


def test_report_cli_on_an_npu_run(tmp_path):
    from edgedistill.cli import main
    (tmp_path / "bench.json").write_text(json.dumps([_npu_graph("student"),
                                                     _timed("teacher", "q8_0", 50.0, 9.0)]))
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()


# -- the recommendation, the frontier, the plan and training sections, compare ------------------

def _causal_run(folder, teacher_dir, rows, steps=200, falling=True, speedup=2.0):
    """A causal-LM run folder as the chain leaves it: a real plan of TinyLlama's config for
    the laptop, distill.json, a training log and bench rows in the shapes bench() writes."""
    from edgedistill.plan import PlanConfig, plan
    folder.mkdir(parents=True, exist_ok=True)
    doc = plan(str(teacher_dir("tinyllama-1.1b")), "laptop", PlanConfig(speedup=speedup))
    (folder / "plan.json").write_text(json.dumps(doc.to_dict()))
    log = [{"step": i + 1, "loss": (4.0 - 2.0 * i / steps) if falling else 2.0 + 0.01 * (i % 3),
            "lr": 1e-3} for i in range(steps)]
    for r in log[steps // 4 - 1::steps // 4]:
        r |= {"val_loss": r["loss"] + 0.1, "val_ppl": 10.0, "val_kl": r["loss"] / 4}
    (folder / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    (folder / "distill.json").write_text(json.dumps({
        "steps": steps, "tokens": steps * 1024, "seconds": 60.0, "tokens_per_s": 3000.0,
        "device": "cpu", "teacher_val_loss": 1.5,
        "validation": {"loss": log[-1]["loss"] + 0.1, "ppl": 10.0, "kl": 0.4}}))
    (folder / "bench.json").write_text(json.dumps(rows))
    return folder


def _row(role, fmt, quant, tps, ppl, top1, status="passed", size=10):
    r = _timed(role, quant, tps, ppl)
    r |= {"format": fmt, "path": f"/x/{role}.{quant}.{fmt}", "size_bytes": size * 2**20}
    r["parity"]["status"] = status
    r["quality"]["top1_agreement"] = top1
    if fmt == "hf":
        r["parity"] = None
        r["bench"]["runtime"] = "torch"
        r.pop("predicted")
    return r


def _good_rows():
    # the student's q4_0 is fastest but below target; q4_k_m is the fastest good file
    return [_row("student", "gguf", "q4_0", 400.0, 12.0, 0.80, status="below-target", size=6),
            _row("student", "gguf", "q4_k_m", 300.0, 11.0, 0.85, size=7),
            _row("student", "gguf", "q8_0", 200.0, 10.5, 0.90, size=12),
            _row("student", "hf", "fp32", 50.0, 10.4, 0.91, size=40),
            _row("teacher", "gguf", "q4_k_m", 100.0, 8.2, 0.95, size=20),
            _row("teacher", "gguf", "q8_0", 70.0, 8.0, 0.99, size=35),
            _row("teacher", "hf", "fp32", 20.0, 8.0, 1.0, size=120)]


def test_the_report_recommends_the_fastest_file_that_passes_and_meets_the_targets(
        tmp_path, teacher_dir):
    run = _causal_run(tmp_path / "run", teacher_dir, _good_rows())
    report(run)
    doc = json.loads((run / "report.json").read_text())
    rec = doc["recommendation"]
    assert rec["meets_targets"] and rec["file"]["id"] == "student gguf:q4_k_m"
    assert rec["file"]["vs_teacher"]["speedup"] == pytest.approx(3.0)
    assert rec["file"]["quality"]["perplexity_ratio"] == pytest.approx(11.0 / 8.0)
    assert rec["runner_up"]["id"] == "student gguf:q8_0" and "1.50x slower" in \
        rec["runner_up"]["why"]
    assert rec["passed_over"] == [{"id": "student gguf:q4_0",
                                   "why": "its check is below-target"}]
    assert rec["headline"].startswith("Ship the student gguf:q4_k_m (llama.cpp, 7.0 MiB): "
                                      "3.00x faster than the teacher's gguf:q4_k_m")
    # the teachers' torch row is as good as its q8_0 and slower; the float student is slower
    # and worse than the teacher's q4_k_m
    assert doc["frontier"] == ["student gguf:q4_0", "student gguf:q4_k_m", "student gguf:q8_0",
                               "teacher gguf:q4_k_m", "teacher gguf:q8_0"]
    md = (run / "report.md").read_text()
    assert md.splitlines()[2] == f"**{rec['headline']}**"
    assert "| ★ | meets |" in md and "## Plan" in md and "## Training" in md
    # the plan beside what was measured, each figure with its machine
    pvm = doc["plan"]["predicted_vs_measured"]
    assert [p["role"] for p in pvm] == ["student", "teacher"]
    assert pvm[0]["measured_here"] == 300.0 and "laptop" in pvm[0]["predicted_target_label"]
    assert "this machine" in pvm[0]["predicted_here_label"]
    assert doc["plan"]["candidates"]["rows"][0][0] == "teacher"
    assert any(r[0] == "*" for r in doc["plan"]["candidates"]["rows"])
    assert len(doc["training"]["curve"]) == 200 and doc["training"]["device"] == "cpu"
    assert doc["advice"] == []  # the student meets the targets
    html = (run / "report.html").read_text()
    for sid in ("recommendation", "files", "pareto", "plan", "training", "predicted", "notes"):
        assert f"id='{sid}'" in html
    assert html.count("data:image/png;base64,") == 3


def test_nothing_meets_the_targets_names_the_closest_and_advises(tmp_path, teacher_dir):
    rows = [_row("student", "gguf", "q4_k_m", 570.0 * 5.3, 92.0, 0.30),
            _row("student", "gguf", "q8_0", 2000.0, 90.0, 0.31),
            _row("student", "hf", "fp32", 300.0, 89.0, 0.31),
            _row("teacher", "gguf", "q4_k_m", 570.0, 8.4, 0.97),
            _row("teacher", "hf", "fp32", 100.0, 8.2, 1.0)]
    run = _causal_run(tmp_path / "run", teacher_dir, rows, falling=True, speedup=2.5)
    report(run)
    doc = json.loads((run / "report.json").read_text())
    rec = doc["recommendation"]
    assert rec["file"] is None and not rec["meets_targets"]
    assert rec["closest"]["id"] == "student gguf:q8_0"  # misses by less than q4_k_m
    assert rec["headline"].startswith("No file meets laptop's quality targets. The closest "
                                      "is the student gguf:q8_0")
    assert "top-1 agreement 0.310 < 0.6" in rec["headline"]
    adv = " ".join(doc["advice"])
    assert "perplexity 89.0 against the teacher's 8.2 (10.9x)" in adv
    assert "validation kl was still falling" in adv and "more --steps (now 200)" in adv
    assert "GPU" in adv
    flat = _causal_run(tmp_path / "flat", teacher_dir, rows, falling=False, speedup=2.5)
    report(flat)
    adv = " ".join(json.loads((flat / "report.json").read_text())["advice"])
    assert "validation kl had flattened" in adv
    assert "#recommendation.miss" in (run / "report.html").read_text()


def test_a_file_whose_check_failed_is_never_named(tmp_path, teacher_dir):
    """The real-teacher phone-npu run: a16w8 below target, a8w8 and a16w4 failed, each judged
    on the float student's figures (all equally close), so 'the fastest' named a failed file.
    A below-target file is named before any failed one, and when every file failed nothing is."""
    rows = [_row("student", "gguf", "q4_0", 900.0, 60.0, 0.14, status="failed"),
            _row("student", "gguf", "q8_0", 300.0, 59.0, 0.30, status="below-target"),
            _row("student", "gguf", "q4_k_m", 600.0, 59.5, 0.25, status="failed"),
            _row("student", "hf", "fp32", 50.0, 58.0, 0.31),
            _row("teacher", "hf", "fp32", 20.0, 8.0, 1.0)]
    run = _causal_run(tmp_path / "run", teacher_dir, rows)
    report(run)
    rec = json.loads((run / "report.json").read_text())["recommendation"]
    assert rec["closest"]["id"] == "student gguf:q8_0" and rec["closest"]["check"] == \
        "below-target"
    for r in rows:
        if r["role"] == "student" and r["format"] != "hf":
            r["parity"]["status"] = "failed"
    gone = _causal_run(tmp_path / "gone", teacher_dir, rows)
    report(gone)
    doc = json.loads((gone / "report.json").read_text())
    rec = doc["recommendation"]
    assert rec["file"] is None and rec["closest"] is None and not rec["meets_targets"]
    assert [f["id"] for f in rec["failed"]] == ["student gguf:q4_0", "student gguf:q4_k_m",
                                                "student gguf:q8_0"]
    assert rec["headline"].startswith("Nothing to ship for laptop: every student file failed")
    assert rec["headline"] in (gone / "report.md").read_text()
    assert doc["advice"]  # still says how far the float student is


def test_an_npu_graph_carries_the_float_models_quality_through_its_own_agreement():
    """NPU graphs are checked against their float model, not scored against the teacher: a
    file keeping 40% of its float student's top-1 no longer ranks as the float student (the
    real-teacher run's a16w4 was named as closest on the float student's figures)."""
    from edgedistill.report.recommend import judge, recommend

    def graph(quant, top1, kl, tps):
        g = _npu_graph("student")
        g |= {"quant": quant, "path": f"/x/student.{quant}.onnx"}
        g["parity"] = {"status": "below-target", "top1_agreement": top1, "kl": kl}
        g["predicted"] = {"target": {"decode_tokens_per_s": tps, "label": "uncalibrated"}}
        return g

    rows = [graph("qdq_a16w4", 0.40, 1.5, 550.0), graph("qdq_a16w8", 0.95, 0.02, 420.0),
            _row("student", "hf", "fp32", 50.0, 20.0, 0.50),
            _row("teacher", "hf", "fp32", 20.0, 10.0, 1.0)]
    j = judge(rows[0], rows, "causal", {"top1_agreement": 0.6, "perplexity_ratio": 1.5})
    assert j["figures"]["top1_agreement"] == pytest.approx(0.50 * 0.40)
    assert j["figures"]["perplexity_ratio"] == pytest.approx(2.0 * np.exp(1.5))
    assert "carried through the file's agreement" in j["source"]
    rec = recommend(rows, "causal", {"top1_agreement": 0.6, "perplexity_ratio": 1.5},
                    {"onnx": ["qdq_a16w8", "qdq_a16w4"]}, "phone-npu", "here")
    assert rec["closest"]["quant"] == "qdq_a16w8", rec["closest"]


def test_more_steps_advice_reads_validation_not_the_decayed_loss():
    """The demo's encoder run: its training loss rose 5% over the last quarter (the learning
    rate had decayed to its floor), which read as 'flattened', while its validation cosine
    rose 0.026 over the second half, and doubling the steps did raise the news cosine."""
    from edgedistill.report.recommend import _more_steps, val_trend
    curve = [{"step": i, "loss": 0.20 + 0.01 * (i % 2)} for i in range(1, 801)]
    for step, cos in ((200, 0.834), (400, 0.860), (600, 0.879), (800, 0.886)):
        curve[step - 1] |= {"val_cosine": cos, "val_cosine_general_english": cos - 0.02}
    assert val_trend(curve) == ("cosine", 400, 0.860, 800, 0.886)
    adv = _more_steps(curve, {"steps": 800})[0]
    assert "validation cosine was still rising" in adv and "more --steps (now 800)" in adv
    for r in curve[400:]:
        if "val_cosine" in r:
            r["val_cosine"] = 0.862
    assert "had flattened" in _more_steps(curve, {"steps": 800})[0]
    # no validation records: the training loss's last quarter, as before
    assert "training loss had flattened" in _more_steps(
        [{"step": i, "loss": 1.0} for i in range(1, 101)], {})[0]
    assert _more_steps([{"step": 1, "loss": 1.0}], {}) == []


def test_a_plan_that_shrank_too_far_suggests_a_larger_student(tmp_path, teacher_dir):
    rows = [_row("student", "gguf", "q4_k_m", 570.0 * 5.3, 92.0, 0.30),
            _row("student", "hf", "fp32", 300.0, 89.0, 0.31),
            _row("teacher", "gguf", "q4_k_m", 570.0, 8.4, 0.97),
            _row("teacher", "hf", "fp32", 100.0, 8.2, 1.0)]
    run = _causal_run(tmp_path / "run", teacher_dir, rows, speedup=2.5)
    adv = " ".join(build_report(run)["advice"])
    assert "The plan asked 2.5x on the target" in adv and "measured 5.3x" in adv
    assert "A lower --speedup (e.g. 1.2)" in adv


def test_loss_in_the_quantization_advises_a_higher_precision_file(tmp_path, teacher_dir):
    rows = [_row("student", "gguf", "q4_k_m", 300.0, 20.0, 0.50),
            _row("student", "gguf", "q8_0", 200.0, 14.0, 0.55),
            _row("student", "hf", "fp32", 50.0, 10.0, 0.9),
            _row("teacher", "hf", "fp32", 20.0, 8.0, 1.0)]
    run = _causal_run(tmp_path / "run", teacher_dir, rows)
    doc = build_report(run)
    assert not doc["recommendation"]["meets_targets"]
    assert "the loss is in the quantization" in " ".join(doc["advice"])


def test_a_phone_npu_run_recommends_by_the_targets_prediction(tmp_path):
    student_hf = _row("student", "hf", "fp32", 50.0, 10.0, 0.9)
    teacher_hf = _row("teacher", "hf", "fp32", 20.0, 8.0, 1.0)
    slow = _npu_graph("student") | {"quant": "qdq_a8w8", "predicted": {
        "target": {"decode_tokens_per_s": 60.0, "label": "uncalibrated"}}}
    slow["parity"] = {"status": "passed"}
    fast = _npu_graph("student")
    fast["parity"] = {"status": "passed"}
    teacher = _npu_graph("teacher") | {"quant": "qdq_a8w8", "predicted": {
        "target": {"decode_tokens_per_s": 10.0}}}
    teacher["parity"] = {"status": "passed"}
    rows = [slow, fast, teacher, student_hf, teacher_hf]
    (tmp_path / "bench.json").write_text(json.dumps(rows))
    (tmp_path / "plan.json").write_text(json.dumps({"target": {
        "name": "phone-npu", "device": "Snapdragon",
        "formats": {"onnx": ["qdq_a16w8", "qdq_a8w8", "qdq_a16w4"]}}}))
    doc = build_report(tmp_path)
    rec = doc["recommendation"]
    assert rec["file"]["quant"] == "qdq_a8w8"  # predicted 60 tok/s beats 40
    assert rec["file"]["speed_basis"] == "predicted"
    assert rec["file"]["quality_source"].startswith("the float student (torch)")
    assert rec["file"]["vs_teacher"]["speedup"] == pytest.approx(6.0)  # both predicted
    assert "not timed here" in rec["headline"]
    paths = report(tmp_path)
    assert "Ship the student onnx:qdq_a8w8" in open(paths["md"]).read()


def test_frontier_and_label_spreading():
    from edgedistill.report.plots import spread
    from edgedistill.report.recommend import frontier
    rows = _good_rows()
    rows[4]["quality"]["perplexity"] = 10.6  # now the student's q8_0 is faster and better
    rows.append(_crashed("student"))  # not timed: never on the frontier
    assert frontier(rows, "causal") == ["student gguf:q4_0", "student gguf:q4_k_m",
                                        "student gguf:q8_0", "teacher gguf:q8_0"]
    ys = [0.5, 0.5, 0.51, 0.49, 0.9, 0.1, 0.5]
    pos = spread(ys, 0.05)
    s = sorted(pos)
    assert all(b - a >= 0.05 - 1e-9 for a, b in zip(s, s[1:]))
    assert all(0 <= p <= 1 for p in pos)
    order = sorted(range(len(ys)), key=lambda i: -ys[i])  # order kept (ties by index)
    assert [pos[i] for i in order] == sorted(pos, reverse=True)
    assert spread([0.3], 0.05) == [0.3]


def test_the_pareto_plot_labels_do_not_overlap():
    """Twenty files, six at nearly one point (as the demo's GGUF files are): every label in
    its own box."""
    from edgedistill.report.plots import pareto_plot
    rows = []
    for i in range(20):
        role = "student" if i < 12 else "teacher"
        tps = 270.0 + (i % 6) if i < 6 else 100.0 + 40 * i
        ppl = 9.0 + (i % 6) * 0.01 if i < 6 else 8 + i / 10
        rows.append(_row(role, "gguf", f"q{i}", tps, ppl, 0.9))
    fig = pareto_plot(rows, "causal", ["student gguf:q0"], "here")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text
    boxes = [Text.get_window_extent(t, r) for t in fig.axes[0].texts]  # the text, no leader
    assert len(boxes) == 20
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    w = fig.get_figwidth() * fig.dpi
    assert max(b.x1 for b in boxes) <= w * 1.2  # saved with bbox_inches="tight"


def test_report_compare_two_runs(tmp_path, teacher_dir):
    from edgedistill.cli import main
    a = _causal_run(tmp_path / "a", teacher_dir, _good_rows())
    rows = _good_rows()
    rows[1]["bench"]["decode_tokens_per_s"] = 350.0
    b = _causal_run(tmp_path / "b", teacher_dir, rows, speedup=3.0)
    out = tmp_path / "cmp"
    assert main(["report", "--compare", str(a), str(b), "--out", str(out)]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in doc["runs"]] == ["a", "b"]
    assert [r["recommended"] for r in doc["runs"]] == ["student gguf:q4_k_m"] * 2
    assert doc["formats"]["gguf:q4_k_m"]["b"]["speed"] == 350.0
    assert "hf:fp32" not in doc["formats"]
    md = (out / "compare.md").read_text()
    assert "| a | laptop |" in md and "| gguf:q4_k_m | 300.0 / 11.0000 | 350.0 / 11.0000 |" in md
    assert (out / "compare.html").read_text().count("data:image/png;base64,") == 1
    # the reports were written on the way (the runs had only bench.json)
    assert (a / "report.json").is_file()


def test_report_compare_refuses_bad_input(tmp_path, teacher_dir, capsys):
    from edgedistill.cli import main
    a = _causal_run(tmp_path / "a", teacher_dir, _good_rows())
    assert main(["report", "--compare", str(a)]) == 2
    assert main(["report", "--compare", str(a), str(tmp_path / "nope")]) == 2
    enc = tmp_path / "enc"
    enc.mkdir()
    row = _timed("student", "int8", 1.0, 1.0)
    row["format"], row["bench"], row["quality"] = "onnx", {
        "measured": True, "device": "x", "batch_ms": 3.0, "sentences_per_s": 9.0}, {
        "cosine_to_teacher": 0.9, "neighbour_overlap": 0.7}
    (enc / "bench.json").write_text(json.dumps([row]))
    assert main(["report", "--compare", str(a), str(enc)]) == 2
    err = capsys.readouterr().err
    assert "mix model kinds" in err and "at least two run folders" in err
    assert main(["report"]) == 2


# -- report.html in a real browser: headless Chromium at 1280 px -------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# After the page loads: every element outside a horizontally scrolling box lies within the
# page's width, the images decoded, and which sections exist; written into the DOM for
# --dump-dom to print.
LAYOUT_CHECK = """<script>
window.addEventListener('load', () => {
  const W = document.documentElement.clientWidth;
  const out = {width: W, page: document.documentElement.scrollWidth, over: [], images: [],
               scrolled: []};
  for (const el of document.body.querySelectorAll('*')) {
    if (el.parentElement.closest('.scroll')) continue;
    const r = el.getBoundingClientRect();
    if (r.right > W + 1) out.over.push(el.tagName + (el.id ? '#' + el.id : ''));
    if (el.classList.contains('scroll') && el.scrollWidth > el.clientWidth + 1)
      out.scrolled.push(el.parentElement.id);
  }
  for (const im of document.images)
    out.images.push([im.naturalWidth, im.naturalHeight,
                     Math.round(im.getBoundingClientRect().width)]);
  out.sections = [...document.querySelectorAll('section')].map(s => s.id);
  out.headline = (document.getElementById('headline') || {}).textContent || '';
  const pre = document.createElement('pre');
  pre.id = 'layout-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,2400", "--virtual-time-budget=10000"]


def render(page: Path, tmp: Path) -> dict:
    """Open ``page`` in headless Chromium at 1280 px; check that no element overflows the
    page, that every image decodes and is not blank, and return what the page holds
    (sections, headline). CI installs Chromium (make setup), so there it fails, never skips."""
    import base64
    import html as html_mod
    import io

    import numpy as np
    from PIL import Image
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: 'make setup' installs it (apt)")
        pytest.skip("chromium is not installed (make setup installs it)")
    text = page.read_text()
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), float)
        assert img.std() > 10, "a blank plot"
    probe = tmp / "probe.html"
    probe.write_text(text.replace("</body>", LAYOUT_CHECK + "</body>"))
    flags = CHROME_FLAGS + [f"--user-data-dir={tmp / 'chrome'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"<pre id=\"layout-check\">(.*?)</pre>", dom, re.S)
    assert m, dom[-2000:]
    out = json.loads(html_mod.unescape(m.group(1)))
    assert out["width"] >= 1200 and out["page"] <= out["width"], out
    assert out["over"] == [], out
    n = text.count("data:image/png;base64,")
    assert len(out["images"]) == n and all(w > 100 and h > 100 and 0 < shown <= out["width"]
                                           for w, h, shown in out["images"]), out
    shot = tmp / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10  # not a blank page
    return out


def test_report_html_in_headless_chromium(tmp_path, teacher_dir):
    """A causal-LM run, a phone-NPU run (NPU rows, not timed) and a run where nothing meets
    the targets each render: the headline first, every section, plots that are not blank,
    nothing wider than the page."""
    good = _causal_run(tmp_path / "good", teacher_dir, _good_rows())
    bad_rows = [_row("student", "gguf", "q4_k_m", 3000.0, 92.0, 0.30),
                _row("student", "hf", "fp32", 300.0, 89.0, 0.31),
                _row("teacher", "gguf", "q4_k_m", 570.0, 8.4, 0.97),
                _row("teacher", "hf", "fp32", 100.0, 8.2, 1.0)]
    bad = _causal_run(tmp_path / "bad", teacher_dir, bad_rows, speedup=2.5)
    npu = tmp_path / "npu"
    npu.mkdir()
    graph = _npu_graph("student") | {"parity": {"status": "passed"}}
    (npu / "bench.json").write_text(json.dumps([graph, _npu_graph("teacher"),
                                                _row("student", "hf", "fp32", 50.0, 10.0, 0.9),
                                                _row("teacher", "hf", "fp32", 20.0, 8.0, 1.0)]))
    every = ["recommendation", "files", "pareto", "plan", "training", "predicted", "notes"]
    for run, sections, starts in (
            (good, every, "Ship the student gguf:q4_k_m"),
            (bad, every, "No file meets laptop's quality targets"),
            (npu, ["recommendation", "files", "pareto", "notes"], "Ship the student onnx:")):
        report(run)
        out = render(run / "report.html", tmp_path / run.name)
        assert out["sections"] == sections and out["headline"].startswith(starts), out
