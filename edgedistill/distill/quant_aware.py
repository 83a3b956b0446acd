"""Quant-aware distillation (QAD): the last part of the run trains the student through the
exact grid of the file it ships as (edgedistill/quantgrid.py).

From step ``start`` on, every matrix the file stores in a grid there is (:func:`targets`:
the layers' matrices, and the embedding and head where llama.cpp stores them in Q4_0 or
Q8_0) is rounded to its grid in the forward pass, with
the gradient passed straight through to the float weights the optimizer keeps. Scales are
recomputed from the weights at every step, as the format's quantizer computes them, so the
trained weights are exactly what the quantizer writes. At the end the weights are replaced
by their rounded values (:meth:`QuantAware.bake`): the saved student is the fake-quant model,
and the file made from it holds the same numbers (tests/test_quantgrid.py).

An output tensor llama.cpp stores in Q6_K (the head, or a tied embedding, of a Q4_0 file
whose hidden size divides by 256) is left to its quantizer: Q6_K has no grid here yet.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

from edgedistill import quantgrid
from edgedistill.errors import EdgeDistillError

CONFIG_KEY = "edgedistill_quant_aware"
"""The key of the student's config.json naming the grid it was trained on (``gguf:q4_0``)."""


def parse(spec: str) -> tuple[str, str]:
    """``FMT:QUANT`` -> (fmt, quant), checked against the grids there are."""
    fmt, sep, quant = str(spec).partition(":")
    if not sep:
        raise EdgeDistillError(f"--quant-aware takes FMT:QUANT, not {spec!r}.",
                               "write e.g. --quant-aware gguf:q4_0")
    quantgrid.grid(fmt, quant)
    return fmt, quant


def _layer_linears(student) -> list:
    """The linear layers inside the transformer blocks whose rows divide into the grid's
    blocks (the others llama.cpp stores in another type)."""
    import torch

    return [mod for name, mod in student.named_modules()
            if isinstance(mod, torch.nn.Linear) and (".layers." in name or ".layer." in name)
            and mod.weight.shape[-1] % quantgrid.BLOCK == 0]


def targets(student, quant: str) -> list[tuple]:
    """(module, grid quantization) for every matrix llama.cpp stores in a grid there is, in
    a file of ``quant`` (its llama_tensor_get_type rules): the layers' matrices in
    ``quant``; the token embedding in ``quant`` too when a separate output head exists; the
    output (the head, or the tied embedding) in Q8_0 in a Q8_0 file, and in a Q4_0 file when
    its rows do not divide into Q6_K's 256-blocks (llama.cpp's fallback), else Q6_K, which
    has no grid here."""
    out = [(m, quant) for m in _layer_linears(student)]
    emb = student.get_input_embeddings()
    head = student.get_output_embeddings() if hasattr(student, "lm_head") else None
    hidden = emb.weight.shape[-1]
    if hidden % quantgrid.BLOCK:
        return out
    output = "q8_0" if quant == "q8_0" or hidden % 256 else None
    if head is None or head.weight is emb.weight:  # the embedding is the output tensor
        out += [(m, output) for m in (emb, head) if m is not None and output]
    else:
        out.append((emb, quant))
        if output:
            out.append((head, output))
    return out


def _linear(self, x):
    import torch

    return torch.nn.functional.linear(
        x, quantgrid.fake_quant(self.weight, *self._edgedistill_grid), self.bias)


def _embedding(self, ids):
    import torch

    return torch.nn.functional.embedding(
        ids, quantgrid.fake_quant(self.weight, *self._edgedistill_grid), self.padding_idx,
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


@dataclass
class QuantAware:
    fmt: str
    quant: str
    start: int
    """The optimizer step from which the grid is on (0-based)."""
    steps: int
    """The run's total steps."""
    modules: list = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.fmt}:{self.quant}"

    def enable(self, student) -> int:
        """Route the matrices through their grids; returns how many. Idempotent."""
        import torch

        if not self.modules:
            for mod, quant in targets(student, self.quant):
                mod._edgedistill_grid = (self.fmt, quant)
                fwd = _embedding if isinstance(mod, torch.nn.Embedding) else _linear
                mod.forward = types.MethodType(fwd, mod)
                self.modules.append(mod)
        return len({id(m.weight) for m in self.modules})

    def bake(self, student) -> int:
        """Replace each matrix by its rounded value and restore the plain forward; mark the
        config. Returns the number of matrices."""
        import torch

        n = self.enable(student)
        with torch.no_grad():
            for mod in self.modules:
                mod.weight.copy_(quantgrid.grid(*mod._edgedistill_grid)(mod.weight))
                del mod.forward, mod._edgedistill_grid
        self.modules = []
        setattr(student.config, CONFIG_KEY, self.spec)
        return n

    def record(self, tensors: int) -> dict:
        return {"format": self.spec, "start_step": self.start, "steps": self.steps - self.start,
                "tensors": tensors, "scales": "recomputed from the weights at every step, "
                "as the format's quantizer does", "gradient": "straight-through"}


def phase(spec: str | None, share: float, steps: int) -> QuantAware | None:
    """The QAD phase of a run of ``steps`` steps: its last ``share`` (at least one step)."""
    if not spec:
        return None
    fmt, quant = parse(spec)
    start = min(steps - 1, max(0, round(steps * (1 - share))))
    return QuantAware(fmt, quant, start, steps)


def trained_grid(config: dict) -> str | None:
    """The ``FMT:QUANT`` a student's config.json says it was trained on, if any."""
    return config.get(CONFIG_KEY)
