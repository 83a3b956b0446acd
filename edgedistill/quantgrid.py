"""Fake-quantization grids: the exact numeric grids of the files a device runs, in torch.

A format fact, like formats.py: distill/ trains on these grids without importing quantize/.

    w_q = fake_quant(w, "Q4_K")    # forward: w rounded exactly as the file stores it;
                                   # backward: straight through (d w_q / d w = 1)

One grid per ggml tensor type, scales recomputed from the weights as the quantizer computes
them (not learned):

- ``Q8_0``: blocks of 32 along a row; d = max|x| / 127 (stored fp16); q = round(x / d).
- ``Q4_0``: blocks of 32; d = m / -8 where m is the block's value of largest magnitude
  (stored fp16); q = min(15, trunc(x / d + 8.5)); x' = (q - 8) d.
- ``Q4_K``: super-blocks of 256 with fp16 d and dmin, sub-blocks of 32 with 6-bit scales and
  mins; x' = d sc q - dmin m.
- ``Q6_K``: super-blocks of 256 with fp16 d, sub-blocks of 16 with int8 scales; x' = d sc
  (q - 32).

Q8_0 and Q4_0 are ggml's reference quantizers, bit for bit. The k-quant grids are the ones
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


def _blocks(w):
    """``w`` (rows, cols) as (rows, cols / 32, 32) float32; cols must divide by 32."""
    import torch

    if w.dim() != 2 or w.shape[-1] % BLOCK:
        raise ValueError(f"a GGUF block grid needs a matrix whose rows divide by {BLOCK}, "
                         f"not {tuple(w.shape)}")
    return w.to(torch.float32).reshape(w.shape[0], -1, BLOCK)


def _fp16(x):
    import torch

    return x.to(torch.float16).to(torch.float32)


def q8_0(w):
    """``w`` rounded to GGUF Q8_0 exactly (ggml's quantize_row_q8_0_ref)."""
    import torch

    x = _blocks(w)
    d = x.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = x * inv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # C roundf: half away from zero
    return (q * _fp16(d)).reshape(w.shape)


def q4_0(w):
    """``w`` rounded to GGUF Q4_0 exactly (ggml's quantize_row_q4_0_ref)."""
    import torch

    x = _blocks(w)
    first = x.abs().argmax(-1, keepdim=True)  # the first of equal magnitudes, as ggml keeps
    m = x.gather(-1, first)
    d = m / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.clamp(torch.trunc(x * inv + 8.5), max=15)
    return ((q - 8) * _fp16(d)).reshape(w.shape)


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

    if w.dim() != 2 or w.shape[-1] % 256:
        raise ValueError(f"a k-quant grid needs a matrix whose rows divide by 256, not "
                         f"{tuple(w.shape)}")
    x = w.to(torch.float32).reshape(w.shape[0], -1, 8, 32)
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    s = (x.amax(-1, keepdim=True) - lo) / 15
    m = -lo
    d = _fp16(s.amax(-2, keepdim=True) / 63)
    dmin = _fp16(m.amax(-2, keepdim=True) / 63)
    zero = torch.zeros_like(s)
    sc = torch.where(d > 0, torch.clamp(_round(s / torch.where(d > 0, d, 1)), max=63), zero)
    mm = torch.where(dmin > 0, torch.clamp(_round(m / torch.where(dmin > 0, dmin, 1)), max=63),
                     zero)
    ds, dm = d * sc, dmin * mm
    q = torch.where(ds > 0, torch.clamp(_round((x + dm) / torch.where(ds > 0, ds, 1)), 0, 15),
                    torch.zeros_like(x))
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

    if w.dim() != 2 or w.shape[-1] % 256:
        raise ValueError(f"a k-quant grid needs a matrix whose rows divide by 256, not "
                         f"{tuple(w.shape)}")
    x = w.to(torch.float32).reshape(w.shape[0], -1, 16, 16)
    first = x.abs().argmax(-1, keepdim=True)
    s = x.gather(-1, first) / -32                                  # (rows, sb, 16, 1)
    big = s.abs().argmax(-2, keepdim=True)
    d = _fp16(s.gather(-2, big) / -128)                            # (rows, sb, 1, 1)
    sc = torch.where(d != 0, torch.clamp(_round(s / torch.where(d != 0, d, 1)), -128, 127),
                     torch.zeros_like(s))
    ds = d * sc
    q = torch.where(ds != 0, torch.clamp(_round(x / torch.where(ds != 0, ds, 1)), -32, 31),
                    torch.zeros_like(x))
    q = q.scatter(-1, first, torch.where(ds != 0, torch.full_like(s, -32), q.gather(-1, first)))
    return (ds * q).reshape(w.shape)


GGML_GRIDS = {"Q4_0": q4_0, "Q8_0": q8_0, "Q4_K": q4_k, "Q6_K": q6_k}
"""ggml tensor type -> its exact grid."""


def file_types(fmt: str, quant: str) -> frozenset:
    """The ggml types a ``fmt:quant`` file stores its matrices in, each with a grid here;
    EdgeDistillError naming the files there are grids for otherwise."""
    ok = sorted(f"{f}:{q}" for (f, q), t in QUANT_TYPES.items()
                if t.ggml_types and t.ggml_types <= GGML_GRIDS.keys())
    t = QUANT_TYPES.get((fmt, quant))
    if t is None or not t.ggml_types or not t.ggml_types <= GGML_GRIDS.keys():
        raise EdgeDistillError(f"no fake-quant grid for {fmt}:{quant} yet.",
                               f"quant-aware training supports {', '.join(ok)}")
    return t.ggml_types


def fake_quant(w, ggml_type: str):
    """``w`` on the grid of ``ggml_type`` in the forward pass, the identity in the backward
    one (a straight-through estimator)."""
    q = GGML_GRIDS[ggml_type](w.detach()).to(w.dtype)
    return w + (q - w).detach()
