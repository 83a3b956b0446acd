"""Reports from every kind of bench row: timed, not timed (NPU graphs), failed, crashed runtime
and never benched. Fast: records written by hand in the shapes bench() produces."""
import json

import pytest

from edgedistill.pipeline import report


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
