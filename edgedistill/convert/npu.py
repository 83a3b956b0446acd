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
has each decomposed RMSNorm fused into one ``RMSNormalization`` (opset 23), and is quantized
to QDQ with onnxruntime's QNN configuration (quantize/qdq.py): activations 8 or 16 bit,
weights 8 or 4 bit per channel, calibrated on the user's data.

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
    import onnx.version_converter
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
        model = onnx.load(str(src))
        if _decomposed_rms_norms(model):
            model = onnx.version_converter.convert_version(model, RMS_NORM_OPSET)
            fuse_rms_norms(model)
        with atomic_onnx(out) as tmp:
            onnx.save(model, str(tmp))
    return out


RMS_NORM_OPSET = 23
"""The ONNX opset with ``RMSNormalization``, which onnxruntime's CPU provider and its QNN HTP
backend both run."""


def _rms_norm_match(node, producer: dict, consumers: dict, const,
                    rank: dict) -> dict | None:
    """The decomposed RMSNorm ending in the Div ``node`` (x / Sqrt(ReduceMean(Pow(x, 2)) +
    eps) over the last axis, as torch exports ``x * rsqrt(mean(x^2) + eps)``), with the Mul by
    a 1-D weight that follows it, if any: {x, eps, nodes, out, scale}; None otherwise."""
    if node.op_type != "Div":
        return None
    x, s = node.input
    sq = producer.get(s)
    add = producer.get(sq.input[0]) if sq is not None and sq.op_type == "Sqrt" else None
    if add is None or add.op_type != "Add":
        return None
    rm = next((producer[i] for i in add.input if i in producer
               and producer[i].op_type == "ReduceMean"), None)
    eps = next((const(i) for i in add.input if const(i) is not None), None)
    pw = producer.get(rm.input[0]) if rm is not None else None
    if pw is None or pw.op_type != "Pow" or pw.input[0] != x or eps is None or eps.size != 1:
        return None
    two = const(pw.input[1])
    axes = const(rm.input[1]) if len(rm.input) > 1 and rm.input[1] else None
    keep = next((a.i for a in rm.attribute if a.name == "keepdims"), 1)
    last = {-1, rank.get(x, 0) - 1}
    if two is None or two.size != 1 or float(two) != 2.0 or axes is None \
            or axes.size != 1 or int(axes.reshape(-1)[0]) not in last or not keep:
        return None
    chain = [pw, rm, add, sq]
    if any(len(consumers[n.output[0]]) != 1 for n in chain):
        return None
    out, scale, nodes = node.output[0], None, chain + [node]
    after = consumers[out]
    if len(after) == 1 and after[0].op_type == "Mul":
        w = next((i for i in after[0].input if i != out), None)
        wv = const(w)
        if wv is not None and wv.ndim == 1:
            out, scale, nodes = after[0].output[0], w, nodes + [after[0]]
    return {"x": x, "eps": float(eps.reshape(-1)[0]), "nodes": nodes, "out": out,
            "scale": scale}


def _graph_maps(model):
    from collections import defaultdict

    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def const(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            attr = next((a for a in constants[name].attribute if a.name == "value"), None)
            return numpy_helper.to_array(attr.t) if attr is not None else None
        return None
    rank = {vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in list(g.value_info) + list(g.input) + list(g.output)}
    return producer, consumers, const, rank


def _decomposed_rms_norms(model) -> list[dict]:
    maps = _graph_maps(model)
    return [m for n in model.graph.node if (m := _rms_norm_match(n, *maps)) is not None]


def fuse_rms_norms(model) -> int:
    """Replace every decomposed RMSNorm of ``model`` (opset :data:`RMS_NORM_OPSET`) with one
    ``RMSNormalization`` node, in place; returns how many. Decomposed, static quantization
    rounds each step on its own, and the squares of a real LLM's residual stream (SmolLM2-135M's
    reaches 2.3e4 on a few tokens, its squares 5e8) leave a per-tensor grid no step for any
    other token, which then normalises by sqrt(eps): its a16w8 file kept 1.6% top-1 on
    onnxruntime's CPU provider, 82% fused. The HTP fuses the pattern itself, so the CPU
    provider, which checks the same file, disagreed with it. Fused, only the norm's input and
    output are quantized."""
    from onnx import helper, numpy_helper

    g = model.graph
    found = _decomposed_rms_norms(model)
    if not found:
        return 0
    width = {vi.name: vi.type.tensor_type.shape.dim[-1].dim_value
             for vi in list(g.value_info) + list(g.input) + list(g.output)
             if vi.type.tensor_type.shape.dim}
    drop, at = set(), {}
    for i, m in enumerate(found):
        scale = m["scale"]
        if scale is None:
            h = width.get(m["x"], 0)
            if not h:
                continue
            scale = f"{m['out']}/rms_norm_ones_{i}"
            g.initializer.append(numpy_helper.from_array(np.ones(h, np.float32), scale))
        node = helper.make_node("RMSNormalization", [m["x"], scale], [m["out"]],
                                name=f"{m['nodes'][-1].name or m['out']}/RMSNormalization",
                                axis=-1, epsilon=m["eps"], stash_type=1)
        drop.update(id(n) for n in m["nodes"])
        at[id(m["nodes"][-1])] = node
    kept = []
    for n in g.node:
        if id(n) in at:
            kept.append(at[id(n)])
        elif id(n) not in drop:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    used = {i for n in g.node for i in n.input}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)
    return len(at)
