"""Static QDQ quantization of fixed-shape graphs for Qualcomm's HTP, with onnxruntime's QNN
configuration: activations 8 or 16 bit per tensor, calibrated on the user's data; matrices 8 or
4 bit per output channel, symmetric. In ``qdq_a8w8`` the outputs of LayerNorm and Softmax,
Softmax's input and the residual stream (every normalisation's input) stay 16 bit."""
from __future__ import annotations

from pathlib import Path

from edgedistill.convert.onnx import atomic_onnx, quiet_root_logger
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import quant_names, quant_type
from edgedistill.quantgrid import s4c_scales
from edgedistill.quantize.onnx import FeedReader


SCHEMES = {q: (quant_type("onnx", q).activation_bits, quant_type("onnx", q).weight_bits)
           for q in quant_names("onnx", static=True)}
"""Static QDQ quantizations NPUs run: name -> (activation bits, weight bits)."""


SENSITIVE_OPS = ("LayerNormalization", "Softmax")
"""Ops whose outputs keep 16-bit activations when the rest of the graph is 8 bit."""
NORMALIZATIONS = ("LayerNormalization", "RMSNormalization")
"""Ops whose input, the residual stream, keeps 16-bit activations in an 8-bit graph (but where
it is an embedding's output, whose values its 8-bit table holds already): a real LLM's
residual stream holds a few values hundreds of times the rest (SmolLM2-135M's), which an
8-bit grid over its range rounds to zero."""


def quantize_graph(fixed: Path, quant: str, feeds: list[dict], trained_grid: bool = False) -> Path:
    """QDQ-quantize a fixed float graph for the HTP with activation ranges from ``feeds``.
    ``trained_grid``: the model was trained quant-aware for this file; 4-bit weights then
    take quantgrid.s4c's scales (:func:`int4_channels`), which keep its weights exactly,
    instead of onnxruntime's own, which round an untrained model a little better
    (benchmarks/a16w4_scales.py)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    if quant not in SCHEMES:
        raise EdgeDistillError(f"{quant!r} is not an NPU quantization.",
                               f"use one of {', '.join(SCHEMES)}")
    if not feeds:
        raise EdgeDistillError(f"{quant} is a static quantization and needs calibration data.",
                               "pass --data (text to calibrate activation ranges on)")
    a_bits, w_bits = SCHEMES[quant]
    act = QuantType.QUInt16 if a_bits == 16 else QuantType.QUInt8
    model = onnx.load(str(fixed))
    overrides: dict = {}
    if a_bits == 8:
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        for n in model.graph.node:
            if n.op_type in SENSITIVE_OPS:
                overrides[n.output[0]] = [{"quant_type": QuantType.QUInt16}]
            if n.op_type == "Softmax":  # masked scores: 8-bit steps would swamp real ones
                overrides[n.input[0]] = [{"quant_type": QuantType.QUInt16}]
            if n.op_type in NORMALIZATIONS and \
                    producer.get(n.input[0]) not in ("Gather", "GatherElements"):
                # (an embedding's output holds its 8-bit table's values already; made 16
                # bit, the HTP could not allocate SmolLM2's prefill graph: QNN MEM_ALLOC)
                overrides[n.input[0]] = [{"quant_type": QuantType.QUInt16}]
    # matrices per output channel, symmetric (what the HTP's MatMul takes; per tensor, a
    # real LLM's 8-bit matrices lose 4x the KL: SmolLM2-135M's a16w8 0.097 against 0.022).
    # A student trained on quantgrid's S4C grid gets its 4-bit scales written here, so that
    # it keeps exactly its weights (onnxruntime's own int4 range has no fixed point; its
    # int8 one, [-127, 127], has: quantgrid.s8c)
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            axis = 0 if n.op_type == "Gemm" and _trans_b(n) else 1
            overrides[n.input[1]] = (
                int4_channels(inits[n.input[1]], axis) if w_bits == 4 and trained_grid else
                [{"quant_type": QuantType.QInt4 if w_bits == 4 else QuantType.QInt8,
                  "symmetric": True, "axis": axis}])

    out = fixed.with_name(fixed.name.replace(".fp32.onnx", f".{quant}.onnx"))
    with quiet_root_logger(), atomic_onnx(out) as tmp:
        cfg = get_qnn_qdq_config(str(fixed), FeedReader(feeds), activation_type=act,
                                 weight_type=QuantType.QUInt8, init_overrides=overrides or None,
                                 keep_removable_activations=True)
        quantize(str(fixed), str(tmp), cfg)
    return out


def int4_channels(init, axis: int) -> list[dict]:
    """Per-channel overrides of a 4-bit weight: quantgrid.s4c's scale for each channel along
    ``axis`` (the output channel), zero point 0."""
    import numpy as np
    import torch
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType

    w = np.moveaxis(numpy_helper.to_array(init).astype(np.float32), axis, 0)
    scales = s4c_scales(torch.from_numpy(w.reshape(len(w), -1).copy())).reshape(-1).numpy()
    return [{"quant_type": QuantType.QInt4, "axis": axis, "scale": np.float32(s),
             "zero_point": np.int8(0)} for s in scales]


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)
