"""Phone-NPU path: fixed-shape graphs, QDQ for the HTP, and real runs on onnxruntime-qnn's HTP
backend (x86 simulation) with CPU fallback disabled."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedistill.convert import npu
from edgedistill.errors import EdgeDistillError
from edgedistill.export import ExportConfig, export
from edgedistill.profiles import load_profile
from edgedistill.runtimes import qnn

from conftest import tiny_distilbert, tiny_roberta, tiny_sentence_bert, tiny_xlm_roberta


def test_graph_shapes_follow_the_profile():
    prof = load_profile("phone-npu")
    (enc,) = npu.graph_shapes(True, prof)
    assert (enc.role, enc.tokens) == ("encoder", prof.latency_targets.encoder_seq_len)
    pre, dec = npu.graph_shapes(False, prof)
    assert pre.tokens == prof.constraints.prefill_chunk and pre.context == prof.context_length
    assert (dec.tokens, dec.past) == (1, prof.context_length - 1)
    with pytest.raises(EdgeDistillError, match="prefill chunk"):
        npu.graph_shapes(False, prof, context=prof.constraints.prefill_chunk)


def test_fixed_graphs_are_static_and_match_torch(trained_llama, tmp_path):
    import onnx

    from edgedistill.convert.onnx import export_onnx
    from edgedistill.runtimes.outputs import ort_session, torch_causal_logits

    fp32 = export_onnx(trained_llama, tmp_path / "onnx")
    graphs = [qnn.GraphShape("prefill", 32, 48), qnn.GraphShape("decode", 1, 79)]
    fixed = [npu.fix_graph(fp32, g) for g in graphs]
    for path in fixed:
        m = onnx.load(str(path))
        for t in list(m.graph.input) + list(m.graph.output):
            dims = [d.dim_value for d in t.type.tensor_type.shape.dim]
            assert dims and all(d > 0 for d in dims), (t.name, dims)
        vals = [onnx.numpy_helper.to_array(t) for t in m.graph.initializer]
        assert not any(v.dtype.kind == "f" and v.size and v.min() < -1e30 for v in vals)
        # each RMSNorm is one op (its squares are never quantized on their own)
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("RMSNormalization") == 2 * 2 + 1 and "Pow" not in ops, ops
    seqs = [list(range(5, 25)), list(range(40, 72))]  # shorter than the chunk, and a full one
    nxt = [7, 9]
    sessions = [ort_session(p, basic=True) for p in fixed]
    pre, dec = qnn.run_causal(sessions[0], sessions[1], seqs, nxt, graphs)
    ref = torch_causal_logits(trained_llama, [s + [t] for s, t in zip(seqs, nxt)])
    for r, p, d in zip(ref, pre, dec):
        assert np.abs(r[:-1] - p).max() < 1e-4  # masked, padded prefill == torch
        assert np.abs(r[-1] - d).max() < 1e-4   # decode on the prefill's cache == torch


def test_context_the_profile_cannot_hold_is_a_clear_error(trained_llama, tmp_path):
    with pytest.raises(EdgeDistillError, match="prefill chunk") as e:
        export(trained_llama, "phone-npu", ExportConfig(context=64), tmp_path / "x")
    assert e.value.exit_code == 2


@pytest.mark.slow
def test_causal_lm_runs_entirely_on_the_htp(trained_llama, tmp_path):
    pytest.importorskip("onnxruntime_qnn")
    res = export(trained_llama, "phone-npu",
                 ExportConfig(quants=("qdq_a16w8",), context=192, eval_sequences=2,
                              npu_eval_items=2), tmp_path / "out")
    by = {a.quant: a for a in res.artifacts}
    assert set(by) == {"fp32", "qdq_a16w8"}
    assert by["fp32"].status == "passed" and by["fp32"].verdict.figures["max_abs_diff"] < 1e-4
    v = by["qdq_a16w8"].verdict
    assert v.passed, v.failures
    assert v.figures["runtime"].startswith("onnxruntime-qnn HTP")
    assert len(v.figures["htp"]) == 2  # prefill and decode graphs
    for info in v.figures["htp"].values():
        cov = info["coverage"]
        assert cov["on_htp"] == cov["nodes"] > 0 and not cov["unsupported_ops"]
        assert info["compile_s"] > 0
        assert info["context"]["max_diff_vs_compiled"] == 0.0
    assert v.figures["top1_agreement"] >= 0.95 and v.figures["decode_tokens"] == 2
    _assert_deployable_contexts(by["qdq_a16w8"], 2)
    # the HTP and onnxruntime's CPU provider run the same QDQ graph to the same numbers
    assert abs(v.figures["cpu_qdq"]["top1_agreement"] - v.figures["top1_agreement"]) < 0.03


@pytest.fixture(scope="module")
def bert_a8w8(tmp_path_factory):
    """A tiny sentence bert exported for phone-npu at qdq_a8w8, checked on the HTP: (model
    folder, export result)."""
    pytest.importorskip("onnxruntime_qnn")
    tmp = tmp_path_factory.mktemp("npu")
    model = tiny_sentence_bert(tmp / "bert")
    return model, export(model, "phone-npu",
                         ExportConfig(quants=("qdq_a8w8",), eval_sentences=8,
                                      npu_eval_items=2), tmp / "out")


@pytest.mark.slow
def test_encoder_a8w8_runs_on_the_htp(bert_a8w8):
    import onnx

    _, res = bert_a8w8
    art = [a for a in res.artifacts if a.quant == "qdq_a8w8"][0]
    assert art.status == "passed", art.verdict.failures
    assert art.verdict.figures["cosine"] >= 0.95
    # LayerNorm and Softmax outputs stay 16-bit in a8w8
    m = onnx.load(str(art.path))
    q16 = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"
           and any(i.name == n.input[2] and i.data_type == onnx.TensorProto.UINT16
                   for i in m.graph.initializer)}
    soft = [n.output[0] for n in m.graph.node if n.op_type == "Softmax"]
    assert soft and all(s in q16 for s in soft)
    _assert_deployable_contexts(art, 1)


def _assert_deployable_contexts(art, n):
    """Each QDQ graph's compiled HTP context was saved beside it, as an EPContext model with
    the QNN binary inside, and loads on the HTP with CPU fallback disabled."""
    import onnx

    ctx = sorted(art.path.parent.glob("*.qnn-ctx.onnx"))
    assert len(ctx) == n and "compiled HTP context" in art.note
    assert not list(art.path.parent.glob(".*tmp*"))  # written atomically
    opts = qnn.htp_options(load_profile("phone-npu"))
    for path in ctx:
        nodes = onnx.load(str(path)).graph.node
        assert [nd.op_type for nd in nodes] == ["EPContext"]
        attrs = {a.name: a for a in nodes[0].attribute}
        assert attrs["embed_mode"].i == 1 and len(attrs["ep_cache_context"].s) > 1000
        qnn.htp_session(path, opts)  # loads without compiling or falling back


@pytest.mark.slow
def test_npu_context_can_be_left_out(tmp_path):
    pytest.importorskip("onnxruntime_qnn")
    model = tiny_sentence_bert(tmp_path / "bert")
    res = export(model, "phone-npu", ExportConfig(quants=("qdq_a8w8",), eval_sentences=8,
                                                  npu_eval_items=2, npu_context=False),
                 tmp_path / "out")
    art = res.artifacts[-1]
    assert art.status == "passed", art.verdict.failures
    assert not list((tmp_path / "out").rglob("*.qnn-ctx.onnx"))
    assert all("context" not in i for i in art.verdict.figures["htp"].values())


@pytest.mark.parametrize("make", [tiny_xlm_roberta, tiny_roberta, tiny_distilbert])
def test_xlm_roberta_a8w8_runs_on_the_htp(tmp_path, make):
    """multilingual-e5's and all-distilroberta's families in fixed shapes: positions derived
    from the padded ids (the padding id + 1 onwards) compile and run on the HTP with CPU
    fallback disabled."""
    pytest.importorskip("onnxruntime_qnn")
    model = make(tmp_path / "e5")
    res = export(model, "phone-npu", ExportConfig(quants=("qdq_a8w8",), eval_sentences=8,
                                                  npu_eval_items=2, npu_context=False),
                 tmp_path / "out")
    art = res.artifacts[-1]
    assert art.quant == "qdq_a8w8" and art.status == "passed", art.verdict.failures
    assert art.verdict.figures["cosine"] >= 0.95 and art.verdict.figures["htp"]


def test_unsupported_op_is_listed_with_a_fix(tmp_path):
    pytest.importorskip("onnxruntime_qnn")
    from onnx import TensorProto, helper

    # NonZero has a data-dependent output shape: no NPU compiles it
    g = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    opts = qnn.htp_options(load_profile("phone-npu"))
    with pytest.raises(Exception):
        qnn.htp_session(path, opts)  # CPU fallback disabled: the session refuses the graph
    cov = qnn.coverage(path, opts, {"x": np.eye(4, dtype=np.float32)})
    assert cov["on_cpu"] == 1 and cov["on_htp"] == 0
    assert cov["unsupported_ops"][0]["op"] == "NonZero"
    assert "mask" in cov["unsupported_ops"][0]["fix"]


@pytest.mark.slow
def test_bench_reports_npu_graphs_with_htp_figures_and_no_simulated_time(bert_a8w8):
    from edgedistill.bench import BenchConfig, bench
    from edgedistill.records import BenchRecord
    from edgedistill.report import main_table

    model, res = bert_a8w8
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    recs = bench(arts, model, "phone-npu", BenchConfig(repeats=1))
    q = [r for r in recs if r.quant == "qdq_a8w8"][0]
    b = q.bench
    assert b["measured"] is False and "decode_tokens_per_s" not in b and "batch_ms" not in b
    assert b["htp"]["nodes_on_htp"] == b["htp"]["nodes"] > 0 and b["htp"]["compile_s"] > 0
    assert b["htp"]["context_files"] == [Path(q.path).name.replace(".onnx", ".qnn-ctx.onnx")]
    assert q.quality["cosine"] >= 0.95
    assert q.predicted["target"]["label"] in ("predicted", "uncalibrated")
    head, rows = main_table(recs)
    assert not any("failed" in str(c) for row in rows for c in row)


@pytest.mark.slow
def test_bench_qai_hub_measures_the_graphs_on_the_phone(bert_a8w8, tmp_path, monkeypatch):
    """bench --qai-hub through bench(): the QDQ encoder graph goes to AI Hub (a client that
    answers as qai-hub documents: the service cannot be reached from here), the row becomes
    measured on the phone, and the phone-npu predictor is calibrated by it."""
    from edgedistill.bench import BenchConfig, bench
    from edgedistill.plan.predictor import load_phone_measurements
    from edgedistill.records import BenchRecord
    from edgedistill.report import main_table

    from test_qaihub import FakeHubClient

    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    model, res = bert_a8w8
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    from edgedistill.bench import phone
    from edgedistill.profiles import load_profile

    client = FakeHubClient(latency_us={"encoder": 1_600})
    hub = phone.connect(load_profile("phone-npu"), None, client)
    recs = bench(arts, model, "phone-npu", BenchConfig(repeats=1, qai_hub=True), qai_hub=hub)
    q = [r for r in recs if r.quant == "qdq_a8w8"][0]
    b = q.bench
    assert b["measured"] is True and b["batch_ms"] == pytest.approx(1.6)
    assert b["device"].startswith("Samsung Galaxy S24 (Family)")
    assert b["htp"]["nodes_on_htp"] > 0  # the export's HTP figures stay
    assert b["qai_hub"]["graphs"]["encoder"]["compute_units"]
    assert client.profiled == [Path(q.path).name]  # the float graph is not sent
    kept = load_phone_measurements("phone-npu")
    assert [m["workload"] for m in kept] == ["encoder"] and kept[0]["latency_ms"] == 1.6
    head, rows = main_table(recs)
    row = [r for r in rows if r[1] == "onnx:qdq_a8w8"][0]
    assert row[2] == "QNN context binary (Qualcomm AI Hub)"
    assert float(row[head.index("ms/batch")]) == pytest.approx(1.6, abs=0.01)


@pytest.mark.slow
def test_phone_npu_whole_chain_writes_its_report(trained_llama, tmp_path):
    """The phone-NPU chain of a tiny model (2 steps, one QDQ scheme, a short context) through
    to report.html. It used to die after all its work with KeyError: 'device': its first bench
    row is an NPU graph, which is not timed."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgedistill", "export", "--teacher", str(trained_llama),
           "--target", "phone-npu", "--out", str(out), "--steps", "2", "--batch-size", "2",
           "--seq-len", "32", "--quant", "qdq_a16w8", "--context", "160", "--npu-items", "2",
           "--speedup", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    rows = {(a["role"], a["format"], a["quant"]): a for a in doc["artifacts"]}
    for role in ("student", "teacher"):
        npu = rows[(role, "onnx", "qdq_a16w8")]
        assert npu["bench"]["measured"] is False and "not timed" in npu["bench"]["note"]
        assert npu["bench"]["htp"]["nodes_on_htp"] == npu["bench"]["htp"]["nodes"] > 0
        assert npu["parity"]["status"] in ("passed", "below-target")
        assert rows[(role, "hf", "fp32")]["bench"]["measured"] is True
    assert doc["artifacts"][0]["bench"].get("device") is None  # an NPU graph comes first
    assert doc["measured_on"] == rows[("student", "hf", "fp32")]["bench"]["device"]
    md = (out / "report.md").read_text()
    assert "| student | onnx:qdq_a16w8 |" in md and "| teacher | hf:fp32 |" in md
    html = (out / "report.html").read_text()
    assert "onnxruntime-qnn (HTP, x86 simulation)" in html
    assert html.count("data:image/png;base64,") >= 1  # the torch rows were timed


def test_rms_norm_steps_become_one_op_with_the_same_outputs(tmp_path):
    """x / sqrt(mean(x^2) + eps), with and without the weight's Mul after it, as torch exports
    an RMSNorm: one RMSNormalization each, the same outputs on the CPU provider; a look-alike
    over another axis is left alone."""
    import onnx
    import onnx.version_converter
    from onnx import TensorProto, helper, numpy_helper

    from edgedistill.runtimes.outputs import ort_session

    rng = np.random.default_rng(0)
    c = {"two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32),
         "last": np.array([-1], np.int64), "first": np.array([1], np.int64),
         "w": rng.normal(1, 0.1, 16).astype(np.float32)}

    def norm(x, out, axes, weight):
        mid = out + ("_n" if weight else "")
        nodes = [helper.make_node("Pow", [x, "two"], [out + "_sq"]),
                 helper.make_node("ReduceMean", [out + "_sq", axes], [out + "_m"]),
                 helper.make_node("Add", [out + "_m", "eps"], [out + "_e"]),
                 helper.make_node("Sqrt", [out + "_e"], [out + "_r"]),
                 helper.make_node("Div", [x, out + "_r"], [mid])]
        return nodes + ([helper.make_node("Mul", ["w", mid], [out])] if weight else [])

    graph = helper.make_graph(
        norm("x", "a", "last", True) + norm("a", "b", "last", False)
        + norm("b", "y", "first", False), "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])],
        [numpy_helper.from_array(v, k) for k, v in c.items()])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.save(model, tmp_path / "steps.onnx")
    fused = onnx.version_converter.convert_version(model, npu.RMS_NORM_OPSET)
    assert npu.fuse_rms_norms(fused) == 2
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("RMSNormalization") == 2 and ops.count("Pow") == 1, ops
    onnx.save(fused, tmp_path / "fused.onnx")
    x = {"x": rng.normal(0, 3, (2, 5, 16)).astype(np.float32)}
    want, got = (ort_session(tmp_path / f, basic=True).run(None, x)[0]
                 for f in ("steps.onnx", "fused.onnx"))
    assert np.abs(want - got).max() < 1e-5
