"""A quantized file judged against its own weights.

An absolute table of quality limits calls a sound exporter broken whenever a model loses much
to a format's rounding: a random-weight model's near-flat logits cannot keep their argmax at 4
bits, whatever the exporter does. So a quantized file is judged in three parts:

1. **Its weights.** Every tensor it stores is decoded (gguf-py's dequantizers; MatMulNBits'
   blocks, scales and zero points) and compared with the model's own tensor: its relative
   error must stay within :data:`WEIGHT_RATIO` times that of a plain round-to-nearest of the
   same tensor in the same grid (bits, block, symmetric or not), or of normal noise, whichever
   is larger. llama.cpp's and onnxruntime's
   quantizers search scales and do at least as well; a scaled tensor, a negated slice or a
   wrong block layout does far worse.
2. **Its graph.** The model with the file's own decoded weights (torch for GGUF; onnxruntime
   on the float graph with the decoded MatMulNBits and GatherBlockQuantized weights for
   ONNX) is the reference. The file must match
   it as closely as the runtime's arithmetic allows: llama.cpp and MatMulNBits (accuracy level
   4) round activations to 8 bits in quantized matmuls. A layout, tokenizer or graph fault
   misses that by far, whatever the model.
3. **Its quality.** How far the file moves from the float model (KL, 99.9th-percentile KL,
   same top-1, RMS Δp as llama.cpp's KL-divergence tool reports them), against how far its
   weights alone move it: the format's floor for this model. Within :data:`LOSS_RATIO` of the
   floor (plus :data:`LOSS_SLACK`, the activation rounding's own share) it is ``passed``;
   beyond, ``below-target``.

1 or 2 missed: ``failed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgedistill.arch import ModelShape
from edgedistill.convert.gguf import gguf_name, norm_shift, permute_qk
from edgedistill.errors import EdgeDistillError
from edgedistill.quantize.onnx import fold_constant_transposes
from edgedistill.records import Verdict

WEIGHT_RATIO = 2.0
"""A stored tensor's relative error may reach this multiple of a plain round-to-nearest's."""
OWN_REL_RMS = 0.15
"""Causal LMs: largest RMS of the logit difference to the own-weights reference, over the RMS
of that reference's logits (both centred per token: logits are shift-invariant). Measured:
0.01-0.014 on a random-weight qwen2, 0.031-0.046 on SmolLM2-135M (Q8_0, Q4_K_M, Q4_0, ONNX
int4), whose activation outliers lose more to 8-bit activations."""
OWN_COSINE = 0.995
"""Encoders: smallest mean cosine to the own-weights reference's embeddings."""
LOSS_RATIO = 1.25
"""``passed`` while the file's loss to the float model is at most this multiple of its
weights' loss (KL for causal LMs, 1 - cosine for encoders) ..."""
LOSS_SLACK = {"kl": 2e-3, "1-cosine": 1e-3}
"""... plus this, what rounding activations to 8 bits adds on its own."""

_FLOATS = ("F32", "F16", "BF16")
# ggml type -> (bits, block, asymmetric) of a plain round-to-nearest in the same grid
_GGML_GRID = {"Q8_0": (8, 32, False), "Q4_0": (4, 32, False), "Q4_1": (4, 32, True),
              "Q5_0": (5, 32, False), "Q5_1": (5, 32, True), "Q2_K": (2, 16, True),
              "Q3_K": (3, 16, False), "Q4_K": (4, 32, True), "Q5_K": (5, 32, True),
              "Q6_K": (6, 16, False)}


def rtn(w: np.ndarray, bits: int, block: int, asym: bool) -> np.ndarray:
    """Round-to-nearest of ``w`` in blocks of ``block`` along the last axis: symmetric (one
    absmax scale per block) or asymmetric (scale and minimum)."""
    shape = w.shape
    x = w.astype(np.float64).reshape(-1)
    pad = (-len(x)) % block
    x = np.pad(x, (0, pad)).reshape(-1, block)
    if asym:
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        step = (hi - lo) / (2 ** bits - 1)
        step[step == 0] = 1.0
        out = np.round((x - lo) / step) * step + lo
    else:
        levels = 2 ** (bits - 1) - 1
        step = np.abs(x).max(1, keepdims=True) / levels
        step[step == 0] = 1.0
        out = np.clip(np.round(x / step), -levels - 1, levels) * step
    return out.reshape(-1)[:len(w.reshape(-1))].reshape(shape)


@lru_cache(maxsize=None)
def gaussian_rtn_error(bits: int, block: int, asym: bool) -> float:
    """The relative error of :func:`rtn` on normal noise: the least a tensor is allowed in a
    grid, since a model's weights may already lie on a grid of their own (a model
    dequantized from a GGUF file, a quant-aware checkpoint) which a round-to-nearest keeps
    exactly and a runtime's quantizer does not."""
    w = np.random.default_rng(0).normal(size=(64, 256))
    return _rel(rtn(w, bits, min(block, w.size), asym), w)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def weight_row(name: str, kind: str, source: np.ndarray, decoded: np.ndarray,
               grid: tuple | None) -> dict:
    """One stored tensor against the model's: relative error, and its ratio to a plain
    round-to-nearest in ``grid`` ((bits, block, asym); None: a float type, held to 1e-2)."""
    if source.shape != decoded.shape:
        return {"tensor": name, "type": kind, "error": f"shape {decoded.shape} in the file, "
                f"{source.shape} in the model", "ratio": float("inf")}
    err = _rel(decoded, source)
    nominal = (max(_rel(rtn(source, *grid), source), gaussian_rtn_error(*grid)) if grid
               else 1e-2 / WEIGHT_RATIO)
    return {"tensor": name, "type": kind, "rel_error": err, "rtn_rel_error": nominal,
            "ratio": err / max(nominal, 1e-12), "exact": bool(np.array_equal(decoded, source))}


def weight_summary(rows: list[dict]) -> dict:
    """The worst tensor, and every tensor beyond :data:`WEIGHT_RATIO`."""
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    return {"tensors": len(rows), "worst": worst,
            "bad": [r for r in rows if not r["ratio"] <= WEIGHT_RATIO],
            "quantized": sum(r["type"] not in _FLOATS for r in rows),
            "exact": [r["tensor"] for r in rows if r.get("exact") and r["type"] not in _FLOATS]}


def weight_failures(summary: dict, ratio: float = WEIGHT_RATIO) -> list[str]:
    """The floor failures of :func:`weight_summary`'s tensors beyond ``ratio`` (three named,
    then a count)."""
    out = [f"tensor {r['tensor']} ({r['type']}): " + (
        r["error"] if "error" in r else
        f"relative error {r['rel_error']:.3g}, {r['ratio']:.1f}x a plain rounding's "
        f"{r['rtn_rel_error']:.3g} (> {ratio:g}x)") + " (floor)" for r in summary["bad"][:3]]
    if len(summary["bad"]) > 3:
        out.append(f"{len(summary['bad']) - 3} more tensors beyond a plain rounding (floor)")
    return out


def weights_figure(summary: dict) -> dict:
    """A verdict's ``weights`` figure from :func:`weight_summary`."""
    return {"tensors": summary["tensors"], "worst": summary["worst"],
            "beyond": len(summary["bad"]), "quantized": summary["quantized"],
            "exact": len(summary["exact"])}


# -- GGUF: the file's tensors back into the torch model -------------------------------------
def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`edgedistill.convert.gguf.permute_qk`."""
    shape = w.shape
    return (w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def gguf_own_state(path: str | Path, model, shape: ModelShape) -> tuple[dict, list[dict]]:
    """({parameter name: the file's decoded tensor in the torch model's layout}, one
    :func:`weight_row` per stored tensor) for a torch ``model`` the file was made from."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    llama_arch = shape.family in ("llama", "mistral")
    state, rows = {}, []
    for pname, p in model.named_parameters():
        try:
            gname = gguf_name(pname, shape.family)
        except EdgeDistillError:
            gname = None
        t = tensors.get(gname) if gname else None
        if t is None:
            continue
        dec = dequantize(np.asarray(t.data), t.tensor_type)
        dec = dec.reshape(tuple(int(d) for d in reversed(t.shape))).astype(np.float32)
        shift = np.float32(norm_shift(shape.family, gname))  # compared in the file's terms
        src = p.detach().float().numpy() + shift
        head = src[:0]
        if gname == "position_embd.weight":  # xlm-roberta: rows before the first position
            head, src = np.split(src, [shape.position_offset])
        heads = None
        if llama_arch and gname.split(".")[-2] in ("attn_q", "attn_k"):
            heads = shape.num_heads if ".attn_q." in gname else shape.num_kv_heads
            src = permute_qk(src, heads)
        dec = dec.reshape(src.shape) if dec.size == src.size else dec
        kind = t.tensor_type.name
        rows.append(weight_row(gname, kind, src, dec, _GGML_GRID.get(kind)))
        if dec.shape == src.shape:
            dec = dec - shift
            dec = _unpermute_qk(dec, heads) if heads else dec
            state[pname] = np.concatenate([head, dec]) if len(head) else dec
    return state, rows


# -- ONNX: MatMulNBits blocks decoded into a float graph --------------------------------------
def _nibbles(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack the last axis of ``packed`` (uint8) into ``count`` values of ``bits`` bits,
    low bits first."""
    if bits == 8:
        return packed[..., :count].astype(np.int32)
    lo, hi = packed & 0x0F, packed >> 4
    out = np.stack([lo, hi], -1).reshape(*packed.shape[:-1], -1)
    return out[..., :count].astype(np.int32)


def matmulnbits_weight(node, inits: dict) -> np.ndarray:
    """The (K, N) float weight a MatMulNBits node multiplies by: each block's values minus
    its zero point (2^(bits-1) when the node has none), times its scale."""
    from onnx import helper, numpy_helper

    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attr["K"], attr["N"], attr["bits"], attr["block_size"]
    blocks = -(-k // block)
    q = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, -1)
    q = _nibbles(q, bits, block).astype(np.float64)              # (N, blocks, block)
    scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks, 1)
    if len(node.input) > 3 and node.input[3]:
        zp = numpy_helper.to_array(inits[node.input[3]])
        zp = (zp.reshape(n, blocks, 1) if zp.dtype != np.uint8 else
              _nibbles(zp.reshape(n, -1), bits, blocks).reshape(n, blocks, 1))
    else:
        zp = 2 ** (bits - 1)
    w = ((q - zp) * scales.astype(np.float64)).reshape(n, -1)[:, :k]
    return np.ascontiguousarray(w.T, dtype=np.float32)


def gather_block_weight(node, inits: dict) -> np.ndarray:
    """The float table a GatherBlockQuantized node gathers from: each block's values (along
    ``quantize_axis``) minus its zero point (8 for 4 bits when the node has none), times its
    scale."""
    from onnx import helper, numpy_helper

    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis, block = attr.get("quantize_axis", 1), attr.get("block_size", 128)
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    if axis != q.ndim - 1:
        raise EdgeDistillError(f"GatherBlockQuantized {node.name}: blocks along axis {axis}.",
                               "only blocks along the last axis are decoded")
    scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    zp = (numpy_helper.to_array(inits[node.input[3]]).astype(np.float64)
          if len(node.input) > 3 and node.input[3] else np.full_like(scales, 8.0))

    def per_value(a):
        return np.repeat(a, block, axis=-1)[..., :q.shape[-1]]
    return ((q - per_value(zp)) * per_value(scales)).astype(np.float32)


def onnx_own_graph(path: str | Path, fp32_path: str | Path, dst: str | Path) -> list[dict]:
    """Write at ``dst`` the float graph ``fp32_path`` with every weight the quantized graph
    ``path`` stores in MatMulNBits blocks replaced by the decoded blocks (what the file
    multiplies by, in float arithmetic). Returns one :func:`weight_row` per such weight;
    raises EdgeDistillError when the file has none (another kind of quantization)."""
    import onnx
    from onnx import numpy_helper

    qmodel = onnx.load(str(path))
    qinits = {i.name: i for i in qmodel.graph.initializer}
    decoded, gathered, rows = {}, {}, []
    base = onnx.load(str(fp32_path))
    fold_constant_transposes(base)  # as the quantizer did: the names of the weights match
    inits = {i.name: i for i in base.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type == "GatherBlockQuantized" and node.input[0] in qinits:
            name = node.input[0].rsplit("_Q", 1)[0]
            if name in inits:
                block = next((a.i for a in node.attribute if a.name == "block_size"), 128)
                src = numpy_helper.to_array(inits[name]).astype(np.float32)
                dec = gather_block_weight(node, qinits)
                asym = len(node.input) > 3 and bool(node.input[3])
                rows.append(weight_row(name, "GatherBlockQuantized4", src, dec,
                                       (4, block, asym)))
                gathered[name] = dec
            continue
        if node.op_type != "MatMulNBits":
            continue
        bits = next(a.i for a in node.attribute if a.name == "bits")
        block = next(a.i for a in node.attribute if a.name == "block_size")
        name = node.input[1].rsplit("_Q", 1)[0]
        if name not in inits:
            raise EdgeDistillError(f"{Path(path).name}: MatMulNBits weight {node.input[1]} "
                                   "has no float weight in the float graph.",
                                   "export the float graph and quantize it again")
        src = numpy_helper.to_array(inits[name]).astype(np.float32)
        dec = matmulnbits_weight(node, qinits)
        asym = len(node.input) > 3 and bool(node.input[3])
        # blocks run along K, the float weight's first axis: compare in (N, K)
        rows.append(weight_row(name, f"MatMulNBits{bits}", src.T.copy(), dec.T.copy(),
                               (bits, block, asym)))
        decoded[name] = dec
    if not decoded:
        raise EdgeDistillError(f"{Path(path).name} stores no MatMulNBits weights.",
                               "only MatMulNBits files are judged against their own weights")
    for i in base.graph.initializer:
        if i.name in decoded:
            i.CopyFrom(numpy_helper.from_array(decoded[i.name], i.name))
    for name, dec in gathered.items():  # the table, for its Gathers only
        base.graph.initializer.append(numpy_helper.from_array(dec, f"{name}__decoded"))
        for n in base.graph.node:
            if n.op_type == "Gather" and n.input[0] == name:
                n.input[0] = f"{name}__decoded"
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp-{os.getpid()}")
    try:
        onnx.save(base, str(tmp))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _qdq_tensors(path: str | Path, float_path: str | Path):
    """A static QDQ file's 2-D weights behind a DequantizeLinear, decoded as the runtime
    decodes them ((q - zero point) x scale in float32): (name, float file's tensor, decoded,
    bits, per-channel axis or None, asymmetric)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    source = {t.name: t for t in onnx.load(str(float_path)).graph.initializer}
    bits_of = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT8: 8,
               onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
               onnx.TensorProto.UINT16: 16}
    for node in model.graph.node:
        name = node.input[0]
        base = name.removesuffix("_quantized")
        if node.op_type != "DequantizeLinear" or name not in inits or base not in source:
            continue
        src = numpy_helper.to_array(source[base])
        if src.ndim != 2:
            continue
        q = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zp = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
              if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale))
        axis = None
        if scale.ndim:  # per channel along ``axis``
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        asym = inits[name].data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.UINT8,
                                         onnx.TensorProto.UINT16)
        yield base, src, (q - zp) * scale, bits_of.get(inits[name].data_type, 8), axis, asym


def qdq_weights(path: str | Path, float_path: str | Path) -> dict:
    """A static QDQ file's matrices and tables (2-D weights behind a DequantizeLinear),
    decoded as the runtime decodes them and compared bit for bit with the float file's:
    {tensors, quantized, exact} (the ``weights`` summary
    :func:`~edgedistill.distill.quant_aware.file_note` reads)."""
    n = exact = 0
    for _, src, dec, *_ in _qdq_tensors(path, float_path):
        n += 1
        exact += bool(np.array_equal(dec, src))
    return {"tensors": n, "quantized": n, "exact": exact}


def qdq_weight_rows(path: str | Path, float_path: str | Path) -> list[dict]:
    """:func:`weight_row` for every matrix and table of a static QDQ file: its error against
    a plain round-to-nearest in its own grid (bits; per output channel, or per tensor)."""
    rows = []
    for name, src, dec, bits, axis, asym in _qdq_tensors(path, float_path):
        if axis is None:
            s2, d2 = src.reshape(1, -1), dec.reshape(1, -1)
        else:
            s2 = np.moveaxis(src, axis, 0).reshape(src.shape[axis], -1)
            d2 = np.moveaxis(dec, axis, 0).reshape(dec.shape[axis], -1)
        kind = f"{'U' if asym else 'S'}{bits}{'' if axis is None else 'C'}"
        rows.append(weight_row(name, kind, s2, d2, (bits, s2.shape[1], asym)))
    return rows


def is_nbits(path: str | Path) -> bool:
    """True when the ONNX file holds MatMulNBits weights (causal int8/int4, encoder int4)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type == "MatMulNBits" for n in graph.node)


@dataclass(frozen=True)
class OwnLimits:
    """The limits a quantized file is judged by (module docstring)."""

    weight_ratio: float = WEIGHT_RATIO
    own_rel_rms: float = OWN_REL_RMS
    own_cosine: float = OWN_COSINE
    loss_ratio: float = LOSS_RATIO

    def to_dict(self, encoder: bool) -> dict:
        metric = "1-cosine" if encoder else "kl"
        graph = ({"own_cosine": self.own_cosine} if encoder
                 else {"own_rel_rms": self.own_rel_rms})
        return {"basis": "the file's own decoded weights",
                "floor": {"weight_ratio": self.weight_ratio, **graph},
                "target": {"loss": metric, "loss_ratio": self.loss_ratio,
                           "loss_slack": LOSS_SLACK[metric]}}


def centred_rel_rms(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """RMS of (got - ref) over the RMS of ref, both centred per token."""
    num = den = 0.0
    for r, g in zip(ref, got):
        r = r.astype(np.float64) - r.mean(-1, keepdims=True)
        g = g.astype(np.float64) - g.mean(-1, keepdims=True)
        num += float(((g - r) ** 2).sum())
        den += float((r ** 2).sum())
    return float(np.sqrt(num / max(den, 1e-30)))


def judge_own(encoder: bool, fig: dict, weights: dict, own: dict, rows: list[dict],
              rel_rms: float | None = None, limits: OwnLimits = OwnLimits()) -> Verdict:
    """The verdict of a quantized file (module docstring). ``fig``: the file against the
    float model; ``weights``: its own weights (torch) against the float model; ``own``: the
    file against its own weights; ``rows``: :func:`weight_row` per stored tensor;
    ``rel_rms``: :func:`centred_rel_rms` of the file against its own weights (causal)."""
    summary = weight_summary(rows)
    broken = weight_failures(summary, limits.weight_ratio)
    if encoder:
        if own["cosine"] < limits.own_cosine:
            broken.append(f"cosine {own['cosine']:.5f} to its own weights run in torch "
                          f"< {limits.own_cosine:g} (floor)")
        loss, floor, metric = 1 - fig["cosine"], 1 - weights["cosine"], "1-cosine"
    else:
        if not rel_rms <= limits.own_rel_rms:
            broken.append(f"logits differ from its own weights run in torch by {rel_rms:.3g} "
                          f"of their RMS (> {limits.own_rel_rms:g}) (floor)")
        loss, floor, metric = fig["kl"], weights["kl"], "kl"
    slack = LOSS_SLACK[metric]
    short = []
    if loss > limits.loss_ratio * floor + slack:
        name = "KL" if metric == "kl" else "1 - cosine"
        short.append(f"{name} {loss:.4g} > {limits.loss_ratio:g}x its weights' own "
                     f"{floor:.4g} + {slack:g} (target)")
    figures = dict(fig)
    keys = ("cosine", "min_cosine") if encoder else ("kl", "kl_p999", "top1_agreement")
    figures.update({f"weights_{k}": weights[k] for k in keys if k in weights})
    figures.update({f"own_{k}": own[k] for k in keys if k in own})
    if rel_rms is not None:
        figures["own_rel_rms"] = rel_rms
    figures["weights"] = weights_figure(summary)
    status = "failed" if broken else ("below-target" if short else "passed")
    return Verdict(status, figures, broken + short, limits.to_dict(encoder))
