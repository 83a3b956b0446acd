"""The fake-quant grids (edgedistill/quantgrid.py) are the formats' own: equal to gguf-py's
port of ggml's reference quantizers, and a fixed point of llama.cpp's quantizer, so a file
made from weights on the grid holds exactly those weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from edgedistill import quantgrid
from edgedistill.errors import EdgeDistillError


def _awkward(rows: int = 16, cols: int = 128) -> torch.Tensor:
    """Normal weights with the cases quantizers get wrong: a zero block, equal magnitudes of
    both signs, a lone outlier, values on the rounding boundary."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :32] = 0
    w[1, :32] = torch.tensor([0.25, -0.25] * 16)
    w[2, 5] = 3.0
    w[3, :32] = torch.linspace(-1, 1, 32)
    return w


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0"])
def test_grids_equal_ggml_reference_quantizers(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = _awkward()
    t = getattr(GGMLQuantizationType, kind)
    want = dequantize(quantize(w.numpy(), t), t)
    got = quantgrid.GGML_GRIDS[kind](w).numpy()
    assert np.array_equal(got, want)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("case", ["awkward", "positive", "negative", "constant"])
def test_qdq_grids_are_a_fixed_point_of_onnxruntimes_quantizer(bits, case):
    """Weights on a U8/U16 grid, quantized as onnxruntime's QDQ quantizer quantizes a weight
    (the QNN config's MinimumRealRange included) and decoded as DequantizeLinear decodes it,
    come back bit for bit; the grid is close to a plain rounding of the weights."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    w = {"awkward": _awkward(), "positive": _awkward().abs() + 0.01,
         "negative": -_awkward().abs(), "constant": torch.full((4, 32), 0.02)}[case]
    g = quantgrid.affine(w, bits)
    assert torch.equal(quantgrid.affine(g, bits), g)
    a = g.numpy().T.copy()  # as the MatMul initializer holds it
    zp, scale, q = quantize_data(a.ravel(), TensorProto.UINT8 if bits == 8 else
                                 TensorProto.UINT16, False, min_real_range=1e-4)
    back = (q.astype(np.float32) - np.float32(zp)) * np.float32(scale)
    assert np.array_equal(back.reshape(a.shape), a)
    span = max(float(w.max().clamp(min=0) - w.min().clamp(max=0)), 1e-4)
    err = (g - w).abs().flatten().sort().values
    assert float(err[-3]) <= span / (2 ** bits - 1) * 0.51  # all but the two ends: rounding
    assert float(err[-1]) <= span * (0.51 / (2 ** bits - 1) + 2.0 ** -(24 - bits))  # + snap


def test_matmulnbits_grids_are_a_fixed_point_of_onnxruntimes_quantizer(tmp_path):
    """A MatMul weight and a Gather table on the MNB4 grid, and a weight on MNB8, quantized
    by the export's own onnxruntime call (quantize/onnx.py) and decoded as the runtime
    decodes MatMulNBits and GatherBlockQuantized, come back bit for bit."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgedistill.quantize.onnx import _nbits
    from edgedistill.verify.own import gather_block_weight, matmulnbits_weight

    w, table = _awkward(16, 128), _awkward(40, 64) * 2
    for kind, bits in (("MNB4", 4), ("MNB8", 8)):
        gw, gt = quantgrid.GRIDS[kind](w), quantgrid.mnb4(table)
        assert torch.equal(quantgrid.GRIDS[kind](gw), gw)
        inits = [numpy_helper.from_array(gw.numpy().T.copy(), "W"),
                 numpy_helper.from_array(gt.numpy(), "T")]
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["y"], name="/mm/MatMul"),
             helper.make_node("Gather", ["T", "ids"], ["e"], name="/embed/Gather")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128]),
             helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16]),
             helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3, 64])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                    ir_version=10), tmp_path / "m.onnx")
        _nbits(tmp_path / "m.onnx", tmp_path / "q.onnx", {bits: None}, 32, False)
        q = onnx.load(tmp_path / "q.onnx")
        by = {i.name: i for i in q.graph.initializer}
        ops = {n.op_type: n for n in q.graph.node}
        assert np.array_equal(matmulnbits_weight(ops["MatMulNBits"], by), gw.numpy().T)
        if bits == 4:
            assert np.array_equal(gather_block_weight(ops["GatherBlockQuantized"], by),
                                  gt.numpy())
        rtn = 0.09 if bits == 4 else 0.01  # a plain rounding: 0.078 and 0.0086
        assert float((gw - w).norm() / w.norm()) < rtn


def _matmul_gemm_graph(gw, gv, tmp_path):
    """A float graph of a MatMul ([K, N] weight ``gw``.T) into a Gemm (transposed [N, K]
    weight ``gv``), as the NPU's fixed graphs hold matrices, and one calibration feed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="/mm/MatMul"),
         helper.make_node("Gemm", ["y", "V"], ["z"], name="/gemm/Gemm", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 128])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 24])],
        [numpy_helper.from_array(gw.numpy().T.copy(), "W"),
         numpy_helper.from_array(gv.numpy(), "V")])
    fixed = tmp_path / "m.fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                ir_version=10), fixed)
    return fixed, [{"x": np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)}]


def test_s4c_grid_is_a_fixed_point_of_the_a16w4_export(tmp_path):
    """Matrices on the S4C grid (a MatMul's [K, N] weight and a Gemm's transposed [N, K]),
    quantized by the export's own qdq_a16w4 call for a model trained on it (quantize/qdq.py)
    and decoded as DequantizeLinear decodes them, come back bit for bit: int4, per output
    channel, zero point 0. onnxruntime's own scales, which an untrained model's file keeps,
    move them (from a grid's values they compute another scale)."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import (compute_scale_zp,
                                                      get_qmin_qmax_for_qType)

    from edgedistill.quantize.qdq import quantize_graph
    from edgedistill.verify.own import qdq_weights

    w, v = _awkward(16, 128), _awkward(16, 32)[:, :24].T.contiguous()
    w[5] = 0  # a row of zeros
    gw, gv = quantgrid.s4c(w), quantgrid.s4c(v)
    assert torch.equal(quantgrid.s4c(gw), gw) and torch.equal(quantgrid.s4c(-gw), -gw)
    assert set((gw / quantgrid.s4c_scales(w)).round().unique().tolist()) <= set(range(-7, 8))
    fixed, feeds = _matmul_gemm_graph(gw, gv, tmp_path)
    out = quantize_graph(fixed, "qdq_a16w4", feeds)  # an untrained model: onnxruntime's
    assert qdq_weights(out, fixed) == {"tensors": 2, "quantized": 2, "exact": 0}
    out = quantize_graph(fixed, "qdq_a16w4", feeds, trained_grid=True)
    q = onnx.load(out)
    types = {i.name: i.data_type for i in q.graph.initializer}
    assert types["W_quantized"] == TensorProto.INT4 == types["V_quantized"]
    assert qdq_weights(out, fixed) == {"tensors": 2, "quantized": 2, "exact": 2}
    # onnxruntime's symmetric int4 scale for the same row: max|x| / 7.5, another grid
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT4, symmetric=True)
    row = gw[0].numpy()
    _, ort_scale = compute_scale_zp(row.min(), row.max(), qmin, qmax, True)
    assert float(ort_scale) != float(quantgrid.s4c_scales(gw)[0])
    rtn = float((gw - w).norm() / w.norm())
    assert rtn < 0.2, rtn  # a plain 4-bit rounding per channel


@pytest.mark.parametrize("quant", ["qdq_a8w8", "qdq_a16w8"])
def test_s8c_grid_is_a_fixed_point_of_the_8_bit_qdq_export(tmp_path, quant):
    """Matrices on the S8C grid (a MatMul's [K, N] weight and a Gemm's transposed [N, K]),
    quantized by the export's own call for any model (quantize/qdq.py: onnxruntime's scales)
    and decoded as DequantizeLinear decodes them, come back bit for bit: int8, per output
    channel, zero point 0."""
    import onnx
    from onnx import TensorProto

    from edgedistill.quantize.qdq import quantize_graph
    from edgedistill.verify.own import qdq_weights

    w, v = _awkward(16, 128), _awkward(16, 32)[:, :24].T.contiguous()
    w[5] = 0  # a row of zeros
    w[6] = -w[6].abs()  # a row whose largest magnitude is negative
    gw, gv = quantgrid.s8c(w), quantgrid.s8c(v)
    assert torch.equal(quantgrid.s8c(gw), gw) and torch.equal(quantgrid.s8c(-gw), -gw)
    fixed, feeds = _matmul_gemm_graph(gw, gv, tmp_path)
    out = quantize_graph(fixed, quant, feeds)
    q = onnx.load(out)
    types = {i.name: i.data_type for i in q.graph.initializer}
    assert types["W_quantized"] == TensorProto.INT8 == types["V_quantized"]
    assert qdq_weights(out, fixed) == {"tensors": 2, "quantized": 2, "exact": 2}
    # a plain 8-bit rounding per channel (0.015: row 2's lone outlier widens its steps)
    assert float((gw - w).norm() / w.norm()) < 0.02


def test_activation_rounding_is_static_and_straight_through():
    x = torch.linspace(-1, 3, 101, requires_grad=True)
    y = quantgrid.fake_quant_act(x, -1.0, 3.0, 8)
    assert len(torch.unique(y.detach())) <= 256
    assert float((y - x).detach().abs().max()) <= 4 / 255 / 2 + 1e-6
    clipped = quantgrid.fake_quant_act(torch.tensor([9.0]), -1.0, 3.0)
    assert float(clipped) == pytest.approx(3, abs=0.02)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("kind, rtn", [("Q4_K", 0.12), ("Q6_K", 0.03)])
def test_k_quant_grids_are_idempotent_and_close(kind, rtn):
    """A k-quant grid's values are on the grid (rounding them again changes nothing), and
    round about as tightly as a plain rounding in the same bits."""
    w = _awkward(16, 512)
    y = quantgrid.GGML_GRIDS[kind](w)
    assert torch.equal(quantgrid.GGML_GRIDS[kind](y), y)
    assert float((y - w).norm() / w.norm()) < rtn
    assert torch.equal(y[0, :32], torch.zeros(32))


def test_fake_quant_passes_gradients_straight_through():
    w = _awkward().requires_grad_()
    y = quantgrid.fake_quant(w, "Q4_0")
    assert torch.equal(y.detach(), quantgrid.q4_0(w.detach()))
    (y * 3).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def test_a_format_without_a_grid_is_a_clear_error():
    assert quantgrid.file_types("gguf", "q4_k_m") == {"Q4_K", "Q6_K"}
    assert quantgrid.file_types("onnx", "qdq_a16w8") == {"S8C", "U16"}
    assert quantgrid.file_types("onnx", "qdq_a8w8") == {"S8C", "U8"}
    assert quantgrid.file_types("onnx", "int4") == {"MNB4", "MNB8"}
    assert quantgrid.file_types("onnx", "qdq_a16w4") == {"S4C", "U16"}
    for fmt, quant in (("gguf", "q5_k_m"), ("onnx", "int8"), ("gguf", "f16")):
        with pytest.raises(EdgeDistillError) as e:
            quantgrid.file_types(fmt, quant)
        assert ("gguf:q4_0, gguf:q4_k_m, gguf:q6_k, gguf:q8_0, onnx:int4, onnx:qdq_a16w4, "
                "onnx:qdq_a16w8, onnx:qdq_a8w8" in e.value.hint)
    with pytest.raises(ValueError):
        quantgrid.q4_0(torch.zeros(4, 40))
    with pytest.raises(ValueError):
        quantgrid.q4_k(torch.zeros(4, 288))


@pytest.fixture(scope="module")
def llama256(tmp_path_factory):
    """Rows of 256 and 512, which k-quant blocks divide; an untied head."""
    from edgedistill.toy import make_causal_lm

    return make_causal_lm(tmp_path_factory.mktemp("m") / "llama256", hidden=256, layers=2,
                          heads=4, kv_heads=2, ffn=512, vocab=320, steps=20, seq_len=64,
                          chars=100_000, lr=1e-2)


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_k_m", "q6_k"])
def test_llama_cpp_writes_weights_on_the_grid_bit_for_bit(
        llama256, trained_qwen2, tmp_path, quant):
    """Every matrix of the file's types with a grid (here all: Q4_K_M's Q4_K and Q6_K, Q4_0's
    Q6_K output, ...), put on its grid, is stored by llama.cpp in that type and decodes to
    exactly the baked weights (the F32 file of the same model holds them): requantizing
    changes nothing, the exact export of a quant-aware student. Q4_0, Q8_0 and Q4_K_M also
    on a tied qwen2 whose rows k-quants do not divide (Q4_K falls back on Q5_0, Q6_K on
    Q8_0)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from edgedistill.convert.gguf import export_gguf
    from edgedistill.distill.quant_aware import ggml_types, targets
    from edgedistill.quantize.gguf import quantize_gguf

    for src_dir, family in ((llama256, "llama"), (trained_qwen2, "qwen2")):
        if family == "qwen2" and quant not in ("q8_0", "q4_0", "q4_k_m"):
            continue
        if family == "qwen2" and quant == "q4_k_m":  # 64-wide rows: Q4_K's fallback, Q5_0
            assert "Q5_0" in ggml_types(src_dir, quant).values()
        types = ggml_types(src_dir, quant)
        model = tmp_path / f"{family}-on-grid"
        shutil.copytree(src_dir, model)
        m = AutoModelForCausalLM.from_pretrained(src_dir)
        with torch.no_grad():
            baked = {id(mod.weight): mod.weight.copy_(quantgrid.GGML_GRIDS[k](mod.weight))
                     for mod, k in targets(m, family, types)}
        m.save_pretrained(model)
        f32 = export_gguf(model, tmp_path / f"{family}.f32.gguf", "f32")
        qfile, _ = quantize_gguf(f32, quant, tmp_path / f"{family}.{quant}.gguf")
        src = {t.name: np.asarray(t.data) for t in GGUFReader(str(f32)).tensors}
        stored = [t for t in GGUFReader(str(qfile)).tensors if t.tensor_type.name != "F32"]
        assert {t.name: t.tensor_type.name for t in stored} == {
            n: k for n, k in types.items() if k != "F32"}
        for t in stored:
            dec = dequantize(np.asarray(t.data), t.tensor_type).reshape(src[t.name].shape)
            assert np.array_equal(dec, src[t.name]), (family, t.name, t.tensor_type.name)
        # the layers' 14 matrices, with the embedding and the head (llama) or the shared one
        assert len(stored) == len(baked) == (16 if family == "llama" else 15)
