"""A quantized file judged against its own weights (verify/own.py): a sound exporter is never
called broken for what a format's rounding costs a model, and a corrupted file still fails."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgedistill.export import ExportConfig, export, verify_artifact
from edgedistill.verify import own


def test_matmulnbits_blocks_decode_to_what_onnxruntime_multiplies_by(tmp_path):
    """4-bit asymmetric (scales and packed zero points) and 8-bit symmetric blocks, K not a
    multiple of the block: x @ decoded weight equals onnxruntime's MatMulNBits output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    k, n = 80, 24
    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(3, k)).astype(np.float32)
    fp32 = tmp_path / "f.onnx"
    onnx.save(model, str(fp32))
    for bits, sym in ((4, False), (8, True)):
        q = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=32,
                                 is_symmetric=sym)
        q.process()
        qm = q.model.model
        path = tmp_path / f"q{bits}.onnx"
        onnx.save(qm, str(path))
        node = next(nd for nd in qm.graph.node if nd.op_type == "MatMulNBits")
        dec = own.matmulnbits_weight(node, {i.name: i for i in qm.graph.initializer})
        y = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
        assert np.abs(y - x @ dec).max() < 1e-4, bits
        assert own._rel(dec, w) < (0.12 if bits == 4 else 0.01)
        rows = own.onnx_own_graph(path, fp32, tmp_path / "d.onnx")
        assert rows[0]["ratio"] < 1.5, rows
        y = ort.InferenceSession(str(tmp_path / "d.onnx")).run(None, {"x": x})[0]
        assert np.abs(y - x @ dec).max() < 1e-4


def test_round_to_nearest_and_weight_rows():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 64))
    for bits, block, asym in ((4, 32, False), (4, 32, True), (8, 32, False), (6, 16, False)):
        r = own.rtn(w, bits, block, asym)
        assert own._rel(r, w) < 2.0 ** (1 - bits)
        assert len(np.unique(r[0, :block])) <= 2 ** bits
    row = own.weight_row("t", "Q4_0", w, own.rtn(w, 4, 32, False), (4, 32, False))
    assert row["ratio"] == pytest.approx(1.0)
    assert own.weight_row("t", "Q4_0", w, 1.3 * w, (4, 32, False))["ratio"] > own.WEIGHT_RATIO
    assert own.weight_row("t", "Q4_0", w, w.T, (4, 32, False))["ratio"] == float("inf")


def test_the_verdict_rules():
    """Failed: a tensor beyond a plain rounding, or logits off the file's own weights.
    Below target: a loss well beyond what the weights alone cost. Else passed, however much
    the weights alone cost."""
    fig = {"kl": 0.30, "top1_agreement": 0.6}
    weights = {"kl": 0.29, "top1_agreement": 0.6}
    good = [{"tensor": "a", "type": "Q4_0", "rel_error": 0.1, "rtn_rel_error": 0.1,
             "ratio": 1.0}]
    assert own.judge_own(False, fig, weights, {"kl": 1e-4}, good, 0.01).status == "passed"
    v = own.judge_own(False, {"kl": 0.5}, weights, {"kl": 1e-4}, good, 0.01)
    assert v.status == "below-target" and v.failures[0].endswith("(target)")
    v = own.judge_own(False, fig, weights, {"kl": 0.2}, good, 0.4)
    assert v.status == "failed" and "own weights" in v.failures[0]
    bad = good + [{"tensor": "b", "type": "Q4_0", "rel_error": 0.5, "rtn_rel_error": 0.1,
                   "ratio": 5.0}]
    v = own.judge_own(False, fig, weights, {"kl": 1e-4}, bad, 0.01)
    assert v.status == "failed" and "tensor b (Q4_0)" in v.failures[0]
    v = own.judge_own(True, {"cosine": 0.90}, {"cosine": 0.91}, {"cosine": 0.9999}, good)
    assert v.status == "passed" and v.threshold["target"]["loss"] == "1-cosine"
    assert own.judge_own(True, {"cosine": 0.9}, {"cosine": 0.91}, {"cosine": 0.98},
                         good).status == "failed"


@pytest.fixture(scope="module")
def random_qwen2(tmp_path_factory):
    """A qwen2 with random weights (QKV bias, GQA, tied head): near-flat logits whose argmax
    no 4-bit file keeps."""
    from edgedistill.toy import make_causal_lm

    return make_causal_lm(tmp_path_factory.mktemp("m") / "qwen2-random", family="qwen2",
                          hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, vocab=2048,
                          steps=0, chars=150_000)


def test_a_random_weight_model_exports_with_exit_0(random_qwen2, tmp_path):
    """Every file is sound: none failed, the export exits 0, and each quantized file's
    verdict carries its weights' own loss beside its own."""
    r = subprocess.run([sys.executable, "-m", "edgedistill", "export", "--student",
                        str(random_qwen2), "--target", "laptop", "--quant",
                        "int4,q4_0,q4_k_m,q8_0", "--out", str(tmp_path / "out"), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    quantized = [a for a in doc["artifacts"] if a["quant"] in ("int4", "q4_0", "q4_k_m", "q8_0")]
    assert len(quantized) == 4
    for a in quantized:
        f = a["parity"]["figures"]
        assert a["status"] != "failed", a["parity"]["failures"]
        assert f["own_rel_rms"] < own.OWN_REL_RMS and f["weights"]["beyond"] == 0
        assert f["kl"] <= own.LOSS_RATIO * f["weights_kl"] + own.LOSS_SLACK["kl"]
        assert a["parity"]["threshold"]["basis"] == "the file's own decoded weights"
    assert min(a["parity"]["figures"]["top1_agreement"] for a in quantized) < 0.93


def test_a_corrupted_quantized_file_still_fails(trained_llama, tmp_path):
    """Scaled Q4_0 blocks fail the weights check; a wrong RoPE base in a sound file's
    metadata fails the own-weights check (the weights are untouched)."""
    from gguf import GGUFReader

    res = export(trained_llama, "laptop", ExportConfig(formats=("gguf",), quants=("q4_0",)),
                 tmp_path / "out")
    art = res.artifacts[0]
    assert art.status != "failed", art.verdict.failures
    bad = tmp_path / "scaled.gguf"
    shutil.copy(art.path, bad)
    reader = GGUFReader(str(bad), "r+")
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert t.tensor_type.name == "Q4_0"
    blocks = t.data.reshape(-1, 18)  # fp16 scale, then 16 bytes of 4-bit values
    d = blocks[:, :2].copy().view(np.float16)
    blocks[:, :2] = (d * np.float16(1.5)).view(np.uint8)
    reader.data.flush()
    del reader
    v = verify_artifact(trained_llama, bad, "gguf", "q4_0")
    assert v.status == "failed" and "blk.0.ffn_up.weight" in v.failures[0], v.failures

    bad = tmp_path / "rope.gguf"
    shutil.copy(art.path, bad)
    reader = GGUFReader(str(bad), "r+")
    reader.fields["llama.rope.freq_base"].parts[-1][0] = 10.0
    reader.data.flush()
    del reader
    v = verify_artifact(trained_llama, bad, "gguf", "q4_0")
    assert v.status == "failed" and "own weights" in v.failures[0], v.failures
    assert v.figures["weights"]["beyond"] == 0


def test_a_qdq_file_is_judged_by_its_own_grid_and_arithmetic(tmp_path):
    """An NPU QDQ file: each matrix against a plain rounding in its own grid (8 or 4 bits per
    output channel, a table per tensor), so a scale written wrong fails whatever the model;
    the HTP's outputs against the same file on the CPU provider (its own arithmetic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgedistill.export.checks import _own_arithmetic, _weights_on_grid
    from edgedistill.quantize.qdq import quantize_graph
    from edgedistill.records import Verdict

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (64, 32)).astype(np.float32)
    table = rng.normal(0, 1.0, (50, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["T", "ids"], ["e"], name="/embed/Gather"),
         helper.make_node("MatMul", ["e", "W"], ["y"], name="/mm/MatMul")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(table, "T")])
    fixed = tmp_path / "m.fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                ir_version=10), fixed)
    feeds = [{"ids": rng.integers(0, 50, (1, 8)).astype(np.int64)} for _ in range(2)]
    for quant, kinds in (("qdq_a8w8", {"S8C", "U8"}), ("qdq_a16w4", {"S4C", "U16"})):
        out = quantize_graph(fixed, quant, feeds)
        rows = own.qdq_weight_rows(out, fixed)
        assert {r["type"] for r in rows} == kinds, rows
        assert all(r["ratio"] <= 1.5 for r in rows), rows
        v = Verdict("passed", {})
        _weights_on_grid(v, rows)
        assert v.status == "passed" and v.figures["weights"]["beyond"] == 0
    # the matrix's scales written 1.5x too large: the file decodes to another matrix
    m = onnx.load(out)
    scale = next(t for t in m.graph.initializer if t.name.startswith("W") and "scale" in t.name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 1.5, scale.name))
    onnx.save(m, out)
    v = Verdict("passed", {})
    _weights_on_grid(v, own.qdq_weight_rows(out, fixed))
    assert v.status == "failed" and "tensor W (S4C)" in v.failures[0], v.failures
    # the HTP against the file's own arithmetic: rounding passes; outputs far apart fail
    # when their quality against torch differs too, not when two lossy runs drift alike
    logits = [rng.normal(size=(6, 40)) for _ in range(2)]
    cpu = (logits, rng.normal(size=(2, 40)))
    good, lossy = {"top1_agreement": 0.9, "kl": 0.02}, {"top1_agreement": 0.39, "kl": 1.77}
    near = ([x + rng.normal(0, 0.01, x.shape) for x in logits], cpu[1] + 0.01)
    fig, bad = _own_arithmetic(False, cpu, near, good, good)
    assert bad is None and fig["own_rel_rms"] < 0.02
    apart = ([x[:, ::-1] for x in logits], cpu[1])
    fig, bad = _own_arithmetic(False, cpu, apart, good, {"top1_agreement": 0.02, "kl": 10.0})
    assert bad and "CPU provider" in bad and fig["own_rel_rms"] > 1
    assert _own_arithmetic(False, cpu, apart, lossy,
                           {"top1_agreement": 0.382, "kl": 1.71})[1] is None
    emb = rng.normal(size=(4, 16))
    assert _own_arithmetic(True, emb, emb + 1e-4, {"cosine": 0.99}, {"cosine": 0.99})[1] is None
    assert "cosine" in _own_arithmetic(True, emb, -emb, {"cosine": 0.99}, {"cosine": -0.9})[1]
