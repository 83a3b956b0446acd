"""Phone-NPU deployment: fixed-shape ONNX graphs, QDQ quantization for Qualcomm's HTP, and a
run through onnxruntime-qnn's HTP backend with CPU fallback disabled.

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

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeDistillError
from ..quantize.onnx import FeedReader, atomic_onnx, quiet_root_logger

SCHEMES = {  # quant -> (activation bits, weight bits)
    "qdq_a8w8": (8, 8),
    "qdq_a16w8": (16, 8),
    "qdq_a16w4": (16, 4),
}
MASK_VALUES = (-100.0, -1000.0, -10000.0, None)
"""Candidates, tried in turn, for the -inf / float32 min of attention masks: the first whose
float graph still matches torch is kept (None: leave the mask as exported). A masked slot
must score below every real one (some heads of our trained test llama score below -100), yet
the smaller the value, the finer the 16-bit (or 8-bit) steps of the scores it is added to."""
SENSITIVE_OPS = ("LayerNormalization", "Softmax")
"""Ops whose outputs keep 16-bit activations when the rest of the graph is 8 bit."""
# Fixes to suggest for ops the HTP backend refuses (QNN HTP op support tables).
OP_FIXES = {
    "ArgMax": "take the argmax on the CPU after the graph (export logits, not ids)",
    "Cast": "keep inputs in the graph's own dtypes (int32 ids, float masks)",
    "Range": "fix the shapes so that ranges fold to constants",
    "NonZero": "replace data-dependent shapes with masks",
    "Loop": "unroll the loop at export time",
    "If": "export one graph per branch",
    "ScatterND": "write the KV cache outside the graph (return new slots only)",
}


@dataclass(frozen=True)
class GraphShape:
    """The fixed dimensions of one NPU graph."""

    role: str
    """``encoder``, ``prefill`` or ``decode``."""
    tokens: int
    """Tokens per call (sequence length, prefill chunk, or 1)."""
    past: int = 0
    """Past KV slots (causal LMs)."""

    @property
    def context(self) -> int:
        return self.past + self.tokens


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


def quantize_graph(fixed: Path, quant: str, feeds: list[dict]) -> Path:
    """QDQ-quantize a fixed float graph for the HTP with activation ranges from ``feeds``."""
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
        for n in model.graph.node:
            if n.op_type in SENSITIVE_OPS:
                overrides[n.output[0]] = [{"quant_type": QuantType.QUInt16}]
            if n.op_type == "Softmax":  # masked scores: 8-bit steps would swamp real ones
                overrides[n.input[0]] = [{"quant_type": QuantType.QUInt16}]
    if w_bits == 4:
        # 4-bit weights per output channel, symmetric (what the HTP's int4 MatMul takes)
        inits = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
                axis = 0 if n.op_type == "Gemm" and _trans_b(n) else 1
                overrides[n.input[1]] = [{"quant_type": QuantType.QInt4, "symmetric": True,
                                          "axis": axis}]

    out = fixed.with_name(fixed.name.replace(".fp32.onnx", f".{quant}.onnx"))
    with quiet_root_logger(), atomic_onnx(out) as tmp:
        cfg = get_qnn_qdq_config(str(fixed), FeedReader(feeds), activation_type=act,
                                 weight_type=QuantType.QUInt8, init_overrides=overrides or None,
                                 keep_removable_activations=True)
        quantize(str(fixed), str(tmp), cfg)
    return out


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


# -- feeds ------------------------------------------------------------------------------------
def input_names(path: Path) -> set[str]:
    """The graph inputs of an ONNX file (read without its weights)."""
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def encoder_feeds(tok, texts: list[str], g: GraphShape, names: set[str]) -> list[dict]:
    """One feed per sentence, padded to the graph's fixed length."""
    out = []
    for t in texts:
        enc = tok(t, padding="max_length", truncation=True, max_length=g.tokens,
                  return_tensors="np")
        out.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    return out


def _kv_inputs(sess) -> list:
    return [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]


def prefill_feed(sess, ids: list[int], g: GraphShape) -> dict:
    """Feed for the prefill graph: ``ids`` (at most the chunk) right-aligned after an empty,
    masked past; pad slots before them are masked too."""
    n = len(ids)
    if n > g.tokens:
        raise ValueError(f"{n} tokens do not fit the {g.tokens}-token prefill graph")
    pad = g.tokens - n
    mask = np.zeros((1, g.context), np.int64)
    mask[0, g.past + pad:] = 1
    feed = {"input_ids": np.array([[0] * pad + list(ids)], np.int64), "attention_mask": mask}
    names = {i.name for i in sess.get_inputs()}
    if "position_ids" in names:
        feed["position_ids"] = np.array([[0] * pad + list(range(n))], np.int64)
    for i in _kv_inputs(sess):
        feed[i.name] = np.zeros((1, i.shape[1], g.past, i.shape[3]), np.float32)
    return {k: v for k, v in feed.items() if k in names}


def decode_feed(sess, token: int, position: int, presents: dict, valid: int,
                g: GraphShape) -> dict:
    """Feed for the decode graph after a prefill: the last ``context - 1`` slots of the
    prefill's present KV (the ``valid`` newest are real), and one new token."""
    mask = np.zeros((1, g.context), np.int64)
    mask[0, g.context - 1 - valid:] = 1
    feed = {"input_ids": np.array([[token]], np.int64), "attention_mask": mask,
            "position_ids": np.array([[position]], np.int64)}
    for i in _kv_inputs(sess):
        present = presents[i.name.replace("past_key_values", "present")]
        feed[i.name] = present[:, :, -g.past:, :]
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def run_causal(prefill, decode, seqs: list[list[int]], next_tokens: list[int],
               graphs: list[GraphShape]) -> tuple[list[np.ndarray], np.ndarray]:
    """Run held-out sequences through the fixed prefill graph, then one decode step each with
    ``next_tokens``. Returns (prefill logits (T, V) per sequence, decode logits (N, V))."""
    gp, gd = graphs
    pre_out, dec_out = [], []
    present_names = [o.name for o in prefill.get_outputs() if o.name.startswith("present")]
    for ids, nxt in zip(seqs, next_tokens):
        ids = ids[-gp.tokens:]
        res = prefill.run(["logits"] + present_names, prefill_feed(prefill, ids, gp))
        pre_out.append(res[0][0, gp.tokens - len(ids):].astype(np.float32))
        presents = dict(zip(present_names, res[1:]))
        feed = decode_feed(decode, nxt, len(ids), presents, len(ids), gd)
        dec_out.append(decode.run(["logits"], feed)[0][0, -1].astype(np.float32))
    return pre_out, np.stack(dec_out)


# -- the HTP backend ----------------------------------------------------------------------------
def qnn_available() -> str | None:
    """None when onnxruntime-qnn can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_qnn") is None:
        return "onnxruntime-qnn is not installed (pip install onnxruntime-qnn; Linux x86_64)"
    return None


def htp_options(profile) -> dict:
    """QNN provider options for the profile's Hexagon: backend, SoC and HTP architecture."""
    import onnxruntime_qnn

    c = profile.constraints
    opts = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if c.htp_arch:
        opts["htp_arch"] = str(c.htp_arch)
    if c.soc_model:
        opts["soc_model"] = str(c.soc_model)
    return opts


def context_path(graph: Path) -> Path:
    """Where the compiled HTP context of a QDQ graph is saved (an EPContext ONNX model with the
    QNN context binary embedded: what the phone loads without compiling)."""
    return graph.with_name(graph.name.removesuffix(".onnx") + ".qnn-ctx.onnx")


def context_options(tmp: Path) -> dict:
    """Session config entries that make onnxruntime save the compiled HTP graph to ``tmp``."""
    return {"ep.context_enable": "1", "ep.context_file_path": str(tmp),
            "ep.context_embed_mode": "1"}


def htp_session(path: Path, options: dict, fallback: bool = False, profile_to: str | None = None,
                config: dict | None = None):
    """An onnxruntime session on the QNN HTP backend. Without ``fallback`` a node the HTP
    cannot take fails the session instead of quietly running on the CPU. ``config``: extra
    session config entries."""
    import onnxruntime as ort
    import onnxruntime_qnn

    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNNExecutionProvider",
                                                onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if profile_to:
        so.enable_profiling = True
        so.profile_file_prefix = profile_to
    so.add_provider_for_devices(devices[:1], options)
    return ort.InferenceSession(str(path), sess_options=so)


def coverage(path: Path, options: dict, feed: dict) -> dict:
    """Which nodes of ``path`` the HTP takes: run once with CPU fallback allowed and read
    onnxruntime's profile for nodes executed by the CPU provider."""
    import onnx

    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory(prefix="edgedistill-qnn-") as tmp:
        sess = htp_session(path, options, fallback=True, profile_to=str(Path(tmp) / "p"))
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    cpu: dict[str, str] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and args.get("provider") == "CPUExecutionProvider":
            cpu[e["name"].rsplit("_kernel_time", 1)[0]] = args.get("op_name", "?")
    ops = sorted(set(cpu.values()))
    return {"nodes": nodes, "on_htp": nodes - len(cpu), "on_cpu": len(cpu),
            "unsupported_ops": [{"op": o, "fix": OP_FIXES.get(
                o, f"replace {o} with ops the HTP supports, or keep it outside the graph")}
                for o in ops]}
