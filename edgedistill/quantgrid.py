"""Fake-quantization grids: the exact numeric grids of the files a device runs, in torch.

A format fact, like formats.py: distill/ trains on these grids without importing quantize/.

    w_q = fake_quant(w, "gguf", "q4_0")    # forward: w rounded exactly as the file stores it;
                                           # backward: straight through (d w_q / d w = 1)

Each grid reproduces its format's reference quantizer bit for bit, scales recomputed from the
weights as the quantizer does (not learned):

- GGUF ``q8_0``: blocks of 32 along a row; d = max|x| / 127 (stored fp16); q = round(x / d).
- GGUF ``q4_0``: blocks of 32; d = m / -8 where m is the block's value of largest magnitude
  (stored fp16); q = min(15, trunc(x / d + 8.5)); x' = (q - 8) d.

Weights on such a grid are a fixed point of the quantizer: quantizing them again (llama.cpp's
``llama_model_quantize`` from an F32 file, without an importance matrix) gives the same blocks,
so the file holds exactly the trained weights (tests/test_quantgrid.py decodes the file and
compares bit for bit).
"""
from __future__ import annotations

from edgedistill.errors import EdgeDistillError

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


GRIDS = {("gguf", "q8_0"): q8_0, ("gguf", "q4_0"): q4_0}
"""(format, quantization) -> its exact grid."""


def grid(fmt: str, quant: str):
    """The grid function of ``fmt:quant``; EdgeDistillError naming the ones there are."""
    try:
        return GRIDS[(fmt, quant)]
    except KeyError:
        have = ", ".join(f"{f}:{q}" for f, q in GRIDS)
        raise EdgeDistillError(f"no fake-quant grid for {fmt}:{quant} yet.",
                               f"quant-aware training supports {have}") from None


def fake_quant(w, fmt: str, quant: str):
    """``w`` on the grid in the forward pass, the identity in the backward one (a
    straight-through estimator)."""
    q = grid(fmt, quant)(w.detach()).to(w.dtype)
    return w + (q - w).detach()
