"""Fake-quantization grids: the exact numeric grids of the files a device runs, in torch.

A format fact, like formats.py: distill/ trains on these grids without importing quantize/.

    w_q = fake_quant(w, "Q4_K")    # forward: w rounded exactly as the file stores it;
                                   # backward: straight through (d w_q / d w = 1)

One grid per ggml tensor type, scales recomputed from the weights as the quantizer computes
them (not learned):

- ``Q8_0``: blocks of 32 along a row; d = max|x| / 127 (stored fp16); q = round(x / d).
- ``Q4_0``: blocks of 32; d = m / -8 where m is the block's value of largest magnitude
  (stored fp16); q = min(15, trunc(x / d + 8.5)); x' = (q - 8) d.
- ``Q5_0``: the same with 5 bits (d = m / -16, q up to 31, x' = (q - 16) d): llama.cpp's
  fallback for Q4_K on rows that do not divide into 256-blocks.
- ``Q4_K``: super-blocks of 256 with fp16 d and dmin, sub-blocks of 32 with 6-bit scales and
  mins; x' = d sc q - dmin m.
- ``Q6_K``: super-blocks of 256 with fp16 d, sub-blocks of 16 with int8 scales; x' = d sc
  (q - 32).

And for the NPUs' static QDQ files (onnxruntime's QDQ quantizer, as quantize/qdq.py calls it):

- ``U8`` / ``U16``: one scale and zero point per tensor, unsigned 8 or 16 bits (the embedding
  tables, which take the activations' width): the range widened to hold 0,
  s = (max - min) / (2^b - 1), z = round(-min / s), x' = (q - z) s;
- ``S8C`` (qdq_a8w8's and qdq_a16w8's matrices): symmetric signed 8 bits per output channel,
  s = max|x| / 127 snapped to 16 significant bits, q in [-127, 127], zero point 0 (a fixed point
  of onnxruntime's symmetric int8 range, which is [-127, 127]);
- ``S4C`` (qdq_a16w4's matrices): symmetric signed 4 bits per output channel, s = max|x| / 7
  snapped to 20 significant bits, q in [-7, 7], zero point 0 (scales the exporter writes);
- activations (``fake_quant_act``): the same, per tensor, over a running min/max (the
  exporter's MinMax calibration).

And for onnxruntime's MatMulNBits files (``onnx:int4``, quantize/onnx.py), blocks of 32 along
a row (the MatMul's K axis), fp32 scales:

- ``MNB4``: 4 bits with a zero point per block: the block's range widened to hold 0,
  s = (max - min) / 15, z = round(-min / s); also the embedding tables (GatherBlockQuantized);
- ``MNB8``: 8 bits, symmetric: s = m / -128, m the block's value of largest magnitude.

Q8_0, Q4_0 and Q5_0 are ggml's reference quantizers, bit for bit. The k-quant grids are the ones
ggml's quantizer finds again: each sub-block keeps an element at each end of its range, so
the quantizer's first guess fits it exactly. Weights on any of these grids are a fixed point
of llama.cpp's quantizer (``llama_model_quantize`` from an F32 file, without an importance
matrix), so the file holds exactly the trained weights (tests/test_quantgrid.py decodes each
file and compares bit for bit).
"""
from __future__ import annotations

from edgedistill.errors import EdgeDistillError
from edgedistill.formats import QUANT_TYPES

BLOCK = 32


def _blocks(w, size: int = BLOCK):
    """``w`` (rows, cols) as (rows, cols / size, size) float32; cols must divide by size."""
    import torch

    if w.dim() != 2 or w.shape[-1] % size:
        raise ValueError(f"a GGUF block grid needs a matrix whose rows divide by {size}, "
                         f"not {tuple(w.shape)}")
    return w.to(torch.float32).reshape(w.shape[0], -1, size)


def _div(x, d):
    """x / d, and 0 where d is 0 (an all-zero block)."""
    import torch

    nonzero = d != 0
    return torch.where(nonzero, x / torch.where(nonzero, d, torch.ones_like(d)), 0.0)


def _fp16(x):
    import torch

    return x.to(torch.float16).to(torch.float32)


def q8_0(w):
    """``w`` rounded to GGUF Q8_0 exactly (ggml's quantize_row_q8_0_ref)."""
    import torch

    x = _blocks(w)
    d = x.abs().amax(-1, keepdim=True) / 127
    v = x * _div(torch.ones_like(d), d)
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # C roundf: half away from zero
    return (q * _fp16(d)).reshape(w.shape)


def q4_0(w):
    """``w`` rounded to GGUF Q4_0 exactly (ggml's quantize_row_q4_0_ref)."""
    import torch

    x = _blocks(w)
    first = x.abs().argmax(-1, keepdim=True)  # the first of equal magnitudes, as ggml keeps
    m = x.gather(-1, first)
    d = m / -8
    q = torch.clamp(torch.trunc(x * _div(torch.ones_like(d), d) + 8.5), max=15)
    return ((q - 8) * _fp16(d)).reshape(w.shape)


def q5_0(w):
    """``w`` rounded to GGUF Q5_0 exactly (ggml's quantize_row_q5_0_ref): Q4_0 with 5 bits,
    d = m / -16, q = min(31, trunc(x / d + 16.5)). llama.cpp stores a Q4_K_M file's matrices
    whose rows do not divide into 256-blocks (a 384-wide student's) in Q5_0."""
    import torch

    x = _blocks(w)
    first = x.abs().argmax(-1, keepdim=True)
    d = x.gather(-1, first) / -16
    q = torch.clamp(torch.trunc(x * _div(torch.ones_like(d), d) + 16.5), max=31)
    return ((q - 16) * _fp16(d)).reshape(w.shape)


def _round(x):
    """ggml's nearest_int: round half to even."""
    import torch

    return torch.round(x)


def _force(q, x, value, where):
    """Set q to ``value`` at the element of largest x (value 15) or smallest x (value 0)
    of each sub-block (last axis) where ``where`` holds."""
    import torch

    idx = (x.argmax(-1, keepdim=True) if value else x.argmin(-1, keepdim=True))
    cur = q.gather(-1, idx)
    return q.scatter(-1, idx, torch.where(where, torch.full_like(cur, value), cur))


def q4_k(w):
    """``w`` rounded to a GGUF Q4_K grid: super-blocks of 256 (fp16 d and dmin), eight
    sub-blocks of 32 with 6-bit scale and min, 4-bit values: x' = d sc q - dmin m. Each
    sub-block's smallest element is put at q = 0 (when its minimum is below 0) and its
    largest at q = 15, and the super-block's largest scale and min are 63, so that
    llama.cpp's quantizer, given these values, finds exactly this grid again."""
    import torch

    x = _blocks(w, 256).reshape(w.shape[0], -1, 8, 32)
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    s = (x.amax(-1, keepdim=True) - lo) / 15
    m = -lo
    d = _fp16(s.amax(-2, keepdim=True) / 63)
    dmin = _fp16(m.amax(-2, keepdim=True) / 63)
    sc = torch.clamp(_round(_div(s, d)), max=63)
    mm = torch.clamp(_round(_div(m, dmin)), max=63)
    ds, dm = d * sc, dmin * mm
    q = torch.clamp(_round(_div(x + dm, ds)), 0, 15)
    q = _force(q, x, 0, (mm > 0) & (ds > 0))
    q = _force(q, x, 15, ds > 0)
    return (ds * q - dm).reshape(w.shape)


def q6_k(w):
    """``w`` rounded to a GGUF Q6_K grid: super-blocks of 256 (fp16 d), sixteen
    sub-blocks of 16 with an int8 scale, 6-bit values: x' = d sc (q - 32). As in ggml's
    quantizer each sub-block's element of largest magnitude sets its scale at q = -32 (its
    sign included), and the super-block's largest scale at sc = -128; that element is kept
    at -32, so that llama.cpp's quantizer finds exactly this grid again."""
    import torch

    x = _blocks(w, 256).reshape(w.shape[0], -1, 16, 16)
    first = x.abs().argmax(-1, keepdim=True)
    s = x.gather(-1, first) / -32                                  # (rows, sb, 16, 1)
    big = s.abs().argmax(-2, keepdim=True)
    d = _fp16(s.gather(-2, big) / -128)                            # (rows, sb, 1, 1)
    ds = d * torch.clamp(_round(_div(s, d)), -128, 127)
    q = torch.clamp(_round(_div(x, ds)), -32, 31)
    q = q.scatter(-1, first, torch.where(ds != 0, torch.full_like(s, -32), q.gather(-1, first)))
    return (ds * q).reshape(w.shape)


GGML_GRIDS = {"Q4_0": q4_0, "Q5_0": q5_0, "Q8_0": q8_0, "Q4_K": q4_k, "Q6_K": q6_k}
"""ggml tensor type -> its exact grid."""


def _snap(s, bits: int):
    """``s`` rounded to ``bits`` significant bits."""
    import torch

    m, e = torch.frexp(s)
    return torch.ldexp(torch.round(m * 2.0 ** bits) / 2.0 ** bits, e)


def affine(w, bits: int):
    """``w`` rounded to a per-tensor unsigned ``bits``-bit grid, as onnxruntime's QDQ
    quantizer stores a weight (quant_utils.compute_scale_zp: the range widened to hold 0,
    s = (max - min) / (2^bits - 1), z = round(-min / s); q = round(x / s) + z, clipped).
    The scale keeps 24 - bits significant bits, so every (q - z) s is exact in float32, and
    the tensor's smallest element is put at q = 0 (when below 0) and its largest at the top
    (when above 0): given these values the quantizer finds exactly this scale, zero point
    and q again, and the file holds exactly the trained weights. The snap moves the two ends
    by at most 2^(bits - 24) of the range (0.2% at 16 bits)."""
    import torch

    top = 2 ** bits - 1
    x = w.to(torch.float32)
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    if hi - lo < 1e-4:  # the QNN config's MinimumRealRange
        hi = lo + 1e-4
    s = _snap((hi - lo) / top, 24 - bits)
    z = torch.clamp(torch.round(-lo / s), 0, top)
    q = torch.clamp(torch.round(x / s) + z, 0, top).reshape(-1)
    if z > 0:
        q[x.reshape(-1).argmin()] = 0
    if z < top:
        q[x.reshape(-1).argmax()] = top
    return ((q - z) * s).reshape(w.shape)


def s4c_scales(w):
    """The per-row scales of :func:`s4c`: the row's largest magnitude / 7, snapped to 20
    significant bits (so every q s, |q| <= 7, is exact in float32); 1e-4 / 14 for a row of
    zeros (the QNN config's MinimumRealRange over [-7, 7])."""
    import torch

    a = w.to(torch.float32).abs().amax(-1, keepdim=True)
    return _snap(torch.where(a > 0, a, torch.full_like(a, 0.5e-4)) / 7, 20)


def s4c(w):
    """``w`` rounded to symmetric signed 4 bits per row (the output channel of a torch
    ``Linear``), as qdq_a16w4 files store a matrix for the HTP's int4 MatMul: q = round(x / s)
    in [-7, 7] with s = :func:`s4c_scales`, zero point 0; the row's largest magnitude at
    q = +-7. A student trained on it gets these scales written by the exporter itself
    (quantize/qdq.py, ``trained_grid``): onnxruntime's own
    symmetric int4 range, [-8, 7] with s = max|x| / 7.5, has no fixed point (its extreme
    element always falls between two steps), so no trained grid could survive it."""
    import torch

    x = w.to(torch.float32)
    s = s4c_scales(x)
    q = torch.clamp(torch.round(x / s), -7, 7)
    top = x.abs().argmax(-1, keepdim=True)
    q = q.scatter(-1, top, torch.where(x.gather(-1, top) < 0, -7.0, 7.0)
                  * (x.gather(-1, top) != 0))
    return (q * s).reshape(w.shape)


def s8c(w):
    """``w`` rounded to symmetric signed 8 bits per row (the output channel of a torch
    ``Linear``), as qdq_a8w8 and qdq_a16w8 files store a matrix: q = round(x / s) in
    [-127, 127], s = the row's largest magnitude / 127 snapped to 16 significant bits, zero
    point 0, that element at q = +-127. onnxruntime's symmetric int8 range is [-127, 127]
    (quant_utils.ONNX_INT_TYPE_SYMMETRIC_RANGE), so its scale for these values is s again,
    exactly: the file holds the trained weights without scales of our own."""
    import torch

    x = w.to(torch.float32)
    a = x.abs().amax(-1, keepdim=True)
    s = _snap(torch.where(a > 0, a, torch.full_like(a, 1e-4)) / 127, 16)
    q = torch.clamp(torch.round(x / s), -127, 127)
    top = x.abs().argmax(-1, keepdim=True)
    q = q.scatter(-1, top, torch.where(x.gather(-1, top) < 0, -127.0, 127.0)
                  * (x.gather(-1, top) != 0))
    return (q * s).reshape(w.shape)


QDQ_GRIDS = {"U8": lambda w: affine(w, 8), "U16": lambda w: affine(w, 16), "S4C": s4c,
             "S8C": s8c}
"""Static QDQ weight type -> its exact grid."""


def mnb4(w):
    """``w`` rounded to MatMulNBits 4-bit blocks of 32 with zero points, as onnxruntime's
    quantizer computes them; the scale snapped to 20 significant bits and each block's
    ends on the grid's ends (as :func:`affine` per tensor), so that the quantizer finds
    exactly this grid again."""
    import torch

    x = _blocks(w)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    s = _snap((hi - lo) / 15, 20)
    z = torch.clamp(torch.round(_div(-lo, s)), 0, 15)
    q = torch.clamp(torch.round(_div(x, s)) + z, 0, 15)
    q = _force(q, x, 0, (z > 0) & (s > 0))
    q = _force(q, x, 15, (z < 15) & (s > 0))
    return ((q - z) * s).reshape(w.shape)


def mnb8(w):
    """``w`` rounded to MatMulNBits 8-bit symmetric blocks of 32, as onnxruntime's quantizer
    computes them (s = m / -128, m the block's value of largest magnitude, the first of
    equal ones; q = round(x / s) in [-128, 127]); the scale snapped to 16 significant bits
    and m kept at q = -128, so that the quantizer finds exactly this grid again."""
    import torch

    x = _blocks(w)
    first = x.abs().argmax(-1, keepdim=True)
    s = _snap(x.gather(-1, first) / -128, 16)
    q = torch.clamp(torch.round(_div(x, s)), -128, 127)
    q = q.scatter(-1, first, torch.where(s != 0, torch.full_like(s, -128), q.gather(-1, first)))
    return (q * s).reshape(w.shape)


NBITS_GRIDS = {"MNB4": mnb4, "MNB8": mnb8}
"""MatMulNBits weight type -> its exact grid."""

GRIDS = GGML_GRIDS | QDQ_GRIDS | NBITS_GRIDS

ONNX_TYPES = {"qdq_a8w8": frozenset({"S8C", "U8"}), "qdq_a16w8": frozenset({"S8C", "U16"}),
              "qdq_a16w4": frozenset({"S4C", "U16"}), "int4": frozenset({"MNB4", "MNB8"})}
"""ONNX quantization -> the weight types its files store, all with a grid here (QDQ: 8-bit
matrices per channel, or 4-bit ones for a16w4, the embedding tables at the activations'
width; int4: 4-bit blocks, 8-bit ones for the output head, value and FFN down
projections)."""


def fake_quant_act(x, lo, hi, bits: int = 8):
    """Activations ``x`` rounded per tensor as a static QDQ file does, with the range [lo, hi]
    its calibration found (an asymmetric unsigned grid holding 0); straight through
    backwards."""
    import torch

    top = 2 ** bits - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    s = max(hi - lo, 1e-4) / top
    z = round(-lo / s)
    q = torch.clamp(torch.round(x.detach() / s) + z, 0, top)
    return x + ((q - z) * s - x.detach()).to(x.dtype)


def file_types(fmt: str, quant: str) -> frozenset:
    """The weight types (ggml, or QDQ) a ``fmt:quant`` file stores its matrices in, each with
    a grid here; EdgeDistillError naming the files there are grids for otherwise."""
    def types(f, q) -> frozenset:
        t = QUANT_TYPES.get((f, q))
        return (ONNX_TYPES.get(q, frozenset()) if f == "onnx" else
                t.ggml_types if t is not None and t.ggml_types <= GGML_GRIDS.keys() else
                frozenset())

    if not types(fmt, quant):
        ok = sorted(f"{f}:{q}" for (f, q) in QUANT_TYPES if types(f, q))
        raise EdgeDistillError(f"no fake-quant grid for {fmt}:{quant} yet.",
                               f"quant-aware training supports {', '.join(ok)}")
    return types(fmt, quant)


def fake_quant(w, kind: str):
    """``w`` on the grid of ``kind`` (a ggml tensor type, or a QDQ weight type) in the forward
    pass, the identity in the backward one (a straight-through estimator)."""
    q = GRIDS[kind](w.detach()).to(w.dtype)
    return w + (q - w).detach()
