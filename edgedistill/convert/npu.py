"""Phone-NPU deployment: fixed-shape ONNX graphs (their QDQ quantization is quantize/qdq.py, their
run on onnxruntime-qnn's HTP backend runtimes/qnn.py).

NPUs compile a graph for fixed shapes. From optimum's export we make:

- encoders: one graph for batch 1 at the profile's ``encoder_seq_len`` (padded, masked);
- causal LMs: the KV-cache export fixed twice, as Qualcomm's LLM recipes do. A *prefill* graph
  takes ``prefill_chunk`` tokens with a past of ``context - chunk`` slots, and a *decode* graph
  takes one token with ``context - 1`` past slots. Unused past slots are masked, so the same
  graphs serve every prompt length up to ``context``.

Each graph then has its shape arithmetic folded, its -inf attention-mask constants bounded
(a quantized Add whose range reaches -3.4e38 flattens every attention score to one value), and
is quantized to QDQ with onnxruntime's QNN configuration: activations 8 or 16 bit, weights 8 or
4 bit, calibrated on the user's data. In ``qdq_a8w8`` the outputs of LayerNorm and Softmax stay
16 bit (the sensitive ops).

Verification runs every graph on the HTP backend (in simulation on x86) with CPU fallback
disabled, and compares it with the float model (torch) and with the same QDQ graph on
onnxruntime's CPU provider. Simulated run time on x86 says nothing about the phone; it is not
reported as latency.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgedistill.convert.onnx import atomic_onnx, quiet_root_logger
from edgedistill.errors import EdgeDistillError
from edgedistill.runtimes.qnn import GraphShape

MASK_VALUES = (-100.0, -1000.0, -10000.0, None)
"""Candidates, tried in turn, for the -inf / float32 min of attention masks: the first whose
float graph still matches torch is kept (None: leave the mask as exported). A masked slot
must score below every real one (some heads of our trained test llama score below -100), yet
the smaller the value, the finer the 16-bit (or 8-bit) steps of the scores it is added to."""


def graph_shapes(encoder: bool, profile, context: int | None = None) -> list[GraphShape]:
    """The graphs a model needs on ``profile`` (a static-shape profile)."""
    lt, c = profile.latency_targets, profile.constraints
    if encoder:
        return [GraphShape("encoder", lt.encoder_seq_len)]
    ctx = context or profile.context_length
    chunk = c.prefill_chunk or lt.prompt_tokens
    if ctx <= chunk:
        raise EdgeDistillError(
            f"context {ctx} is not longer than the prefill chunk {chunk} of {profile.name!r}.",
            f"use a context above {chunk} (profile context_length or --context)")
    return [GraphShape("prefill", chunk, ctx - chunk), GraphShape("decode", 1, ctx - 1)]


def fixed_path(fp32: Path, g: GraphShape, quant: str | None = None) -> Path:
    tag = g.role if g.role == "encoder" else f"{g.role}{g.tokens}-ctx{g.context}"
    return fp32.with_name(f"model.{tag}.{quant or 'fp32'}.onnx")


def _input_shape(name: str, dims: list, g: GraphShape) -> list[int]:
    if name.startswith("past_key_values"):
        return [1, int(dims[1]), g.past, int(dims[3])]
    if name == "attention_mask" and g.role != "encoder":
        return [1, g.context]
    return [1, g.tokens]


def fix_graph(fp32: Path, g: GraphShape, mask_value: float | None = -1000.0) -> Path:
    """Write the float graph of ``fp32`` with every input fixed to ``g``'s shape, shape ops
    folded, mask constants bounded to ``mask_value``, and QNN's fusions applied. Returns its
    path."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    out = fixed_path(fp32, g)
    model = onnx.load(str(fp32))
    for inp in model.graph.input:
        dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
        for d, v in zip(inp.type.tensor_type.shape.dim, _input_shape(inp.name, dims, g)):
            d.Clear()
            d.dim_value = v
    for o in model.graph.output:  # re-inferred below
        o.type.tensor_type.ClearField("shape")
    with tempfile.TemporaryDirectory(prefix="edgedistill-npu-") as tmp:
        fixed, folded, pre = (Path(tmp) / n for n in ("fixed.onnx", "folded.onnx", "pre.onnx"))
        onnx.save(model, str(fixed))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(fixed), so, providers=["CPUExecutionProvider"])
        model = onnx.load(str(folded))
        for t in model.graph.initializer:
            a = numpy_helper.to_array(t)
            if mask_value is not None and a.dtype.kind == "f" and a.size and \
                    float(a.min()) < -1e30:
                bounded = np.where(a < -1e30, mask_value, a).astype(a.dtype)
                t.CopyFrom(numpy_helper.from_array(bounded, t.name))
        model = onnx.shape_inference.infer_shapes(model)
        onnx.save(model, str(folded))
        with quiet_root_logger():
            src = pre if qnn_preprocess_model(str(folded), str(pre), fuse_layernorm=True) \
                else folded
        with atomic_onnx(out) as tmp:
            onnx.save(onnx.load(str(src)), str(tmp))
    return out
