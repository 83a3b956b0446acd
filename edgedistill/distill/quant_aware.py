"""Quant-aware distillation (QAD): the last part of the run trains the student through the
exact grids of the file it ships as (edgedistill/quantgrid.py).

Which matrix a GGUF file stores in which ggml type is llama.cpp's choice (its
``llama_tensor_get_type``: Q4_K_M keeps some attention value and FFN down projections and the
output in Q6_K; rows that do not divide into a type's blocks fall back on another). So
before training, the student's shape is written as an F32 GGUF and quantized by llama.cpp
itself (:func:`ggml_types`): the types it picks are the ones trained.

From step ``start`` on, every matrix stored in a type with a grid is rounded to that grid in
the forward pass, the gradient passed straight through to the float weights the optimizer
keeps. Scales are recomputed from the weights at every step, as the quantizer computes them.
At the end the weights are replaced by their rounded values (:meth:`QuantAware.bake`): the
saved student is the fake-quant model, and since weights on these grids are a fixed point of
llama.cpp's quantizer, the file made from it holds the same numbers (tests/test_quantgrid.py).
Matrices in a type with no grid (Q5_1 or IQ4_NL fallbacks, say) are left to the quantizer.

The NPUs' static QDQ files (``onnx:qdq_a8w8``, ``onnx:qdq_a16w8``) store every matrix in
symmetric 8 bits per output channel, and the embedding tables at the activations' width with
one scale and zero point (quantize/qdq.py); weights on those grids are a fixed point of
onnxruntime's quantizer too.
``onnx:qdq_a16w4`` stores its matrices in symmetric 4 bits per output channel, with the
scales of quantgrid.s4c, which the exporter writes itself.
With 8-bit activations, each linear layer's input and output are also rounded to 8 bits per
tensor, over the running min/max of the phase's batches, as the exporter's MinMax
calibration ranges them. The file rounds every other intermediate tensor as well (the
normalisations' steps, the attention's): those are not simulated.

ONNX int4 files (onnxruntime's MatMulNBits) store blocks of 32 along each row: 4 bits with a
zero point, 8 bits for the output head, the value and the FFN down projections
(formats.ONNX_INT4_AT_8_BITS), the embedding tables in 4-bit blocks; again a fixed point of
onnxruntime's quantizer.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import types as pytypes
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill import quantgrid
from edgedistill.arch import shape_from_config
from edgedistill.convert.gguf import export_gguf, gguf_name
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import ONNX_INT4_AT_8_BITS, RUNTIMES, quant_type
from edgedistill.runtimes.child import RuntimeFailure, llama_worker

CONFIG_KEY = "edgedistill_quant_aware"
"""The key of the student's config.json naming the file it was trained for (``gguf:q4_0``)."""


def parse(spec: str) -> tuple[str, str]:
    """``FMT:QUANT`` -> (fmt, quant), checked against the grids there are."""
    fmt, sep, quant = str(spec).partition(":")
    if not sep:
        raise EdgeDistillError(f"--quant-aware takes FMT:QUANT, not {spec!r}.",
                               "write e.g. --quant-aware gguf:q4_k_m")
    quantgrid.file_types(fmt, quant)
    return fmt, quant


def check_deployed(spec: str, prof) -> None:
    """EdgeDistillError when the device profile ``prof`` does not deploy the file
    ``spec`` names (a student trained for a file the device never runs)."""
    fmt, quant = parse(spec)
    if quant not in prof.formats.get(fmt, []):
        have = ", ".join(f"{f}:{q}" for f, qs in prof.formats.items() for q in qs) or "none"
        raise EdgeDistillError(f"--quant-aware {spec}: the {prof.name} profile does not deploy "
                               f"that file (it deploys {have}).",
                               "pick one of its files, or another --target")


def lossy(fmt: str, quant: str) -> bool:
    """Whether a file loses measurably to its quantization: 4-bit weights, or static 8-bit
    activations (8-bit weight-only and dynamic int8 files lose little)."""
    qt = quant_type(fmt, quant)
    return qt.weight_bits == 4 or (qt.static and qt.activation_bits == 8)


def default_for(prof, encoder: bool, quants: tuple = ()) -> tuple[str | None, str]:
    """The whole chain's default: (``FMT:QUANT`` or None, why). The profile's deployment
    format is its first runtime's; the file is the first of its quantizations (of
    ``quants``, when the user named some) that loses measurably (:func:`lossy`) and has a
    grid here. Off for sentence encoders (their deployment, dynamic int8 ONNX, is nearly
    lossless) and where no deployed file loses measurably or has a grid."""
    if encoder:
        return None, "sentence encoders are deployed in near-lossless 8-bit files"
    fmt = RUNTIMES[prof.runtimes[0]].format if prof.runtimes else None
    deployed = [q for q in prof.formats.get(fmt) or [] if not quants or q in quants]
    if not deployed:
        return None, f"the {prof.name} profile deploys no {fmt} file" + (
            " of those asked for" if quants else "")
    for q in deployed:
        if lossy(fmt, q):
            try:
                quantgrid.file_types(fmt, q)
            except EdgeDistillError:
                continue
            why = "4-bit weights" if quant_type(fmt, q).weight_bits == 4 else \
                "static 8-bit activations"
            return f"{fmt}:{q}", f"the {prof.name} profile deploys {fmt}:{q}: {why} lose " \
                                 "measurably"
    spec = f"{fmt}:{deployed[0]}"
    if any(lossy(fmt, q) for q in deployed):
        return None, "its deployed files that lose measurably have no training grid yet"
    return None, f"its deployment file {spec} loses little to quantization"


def ggml_types(model_dir: str | Path, quant: str, threads: int = 2) -> dict[str, str]:
    """{GGUF tensor name: ggml type} of the ``quant`` file llama.cpp makes of a model of
    ``model_dir``'s shape (its weights do not change the choice)."""
    from gguf import GGUFReader

    tmp = Path(tempfile.mkdtemp(prefix="edgedistill-qad-"))
    try:
        f32 = export_gguf(model_dir, tmp / "model.f32.gguf", "f32")
        out = tmp / f"model.{quant}.gguf"
        try:
            llama_worker({"op": "quantize", "src": str(f32), "dst": str(out), "quant": quant,
                          "threads": threads, "importance": None})
        except RuntimeFailure as e:
            raise EdgeDistillError(f"llama.cpp could not quantize the student to {quant}: "
                                   f"{e}.", "check that the float GGUF export works "
                                   "(edgedistill export --quant f16)") from None
        return {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def targets(student, family: str, types: dict[str, str]) -> list[tuple]:
    """(module, ggml type) for every linear or embedding module whose weight the file stores
    in a type with a grid. A tied head shares the embedding's tensor (``token_embd``)."""
    import torch

    out = []
    for name, mod in student.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        try:
            gname = gguf_name(f"{name}.weight", family)
        except EdgeDistillError:
            continue
        kind = types.get(gname) if gname else None
        if kind is None and gname == "output.weight":
            kind = types.get("token_embd.weight")  # tied: one tensor in the file
        if kind in quantgrid.GGML_GRIDS and mod.weight.dim() == 2:
            out.append((mod, kind))
    return out


def onnx_node(module_name: str) -> str:
    """The ONNX node name torch's exporter gives a linear module's MatMul
    (``model.layers.0.mlp.down_proj`` -> ``/model/layers.0/mlp/down_proj/MatMul``)."""
    path = "".join(("." if p.isdigit() else "/") + p for p in module_name.split("."))
    return f"{path}/MatMul"


def onnx_targets(student, quant: str) -> list[tuple]:
    """(module, weight type) for an ONNX file. Static QDQ: every linear layer's matrix in
    ``S8C`` (8 bits per channel; ``S4C``, 4 bits, for a16w4), every embedding table at the
    activations' width (``U8`` or ``U16``). int4: 4-bit
    blocks (``MNB4``), 8-bit ones (``MNB8``) for the output head and the layers
    formats.ONNX_INT4_AT_8_BITS names; the tables in 4-bit blocks, a tied head with them;
    matrices whose rows do not divide into blocks of 32 are left to the quantizer."""
    import torch

    mods = [(name, mod) for name, mod in student.named_modules()
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) and mod.weight.dim() == 2]
    if quant != "int4":
        qt = quant_type("onnx", quant)
        table = "U8" if qt.activation_bits == 8 else "U16"
        matrix = "S4C" if qt.weight_bits == 4 else "S8C"
        return [(mod, matrix if isinstance(mod, torch.nn.Linear) else table) for _, mod in mods]
    get_head = getattr(student, "get_output_embeddings", None)
    head = get_head() if get_head else None
    tables = {id(m.weight) for _, m in mods if isinstance(m, torch.nn.Embedding)}
    out = []
    for name, mod in mods:
        if mod.weight.shape[1] % quantgrid.BLOCK:
            continue
        wide = isinstance(mod, torch.nn.Linear) and id(mod.weight) not in tables and (
            mod is head or re.search(ONNX_INT4_AT_8_BITS, onnx_node(name)))
        out.append((mod, "MNB8" if wide else "MNB4"))
    return out


def _act(self, key: str, x):
    """``x`` rounded to 8 bits per tensor over the running range of this module's ``key``
    (input or output), widened by each training batch; left as it is where training has
    not ranged it yet."""
    ranges = self._edgedistill_ranges
    if self.training:
        d = x.detach()
        lo, hi = ranges.get(key, (0.0, 0.0))
        ranges[key] = (min(lo, float(d.min())), max(hi, float(d.max())))
    return quantgrid.fake_quant_act(x, *ranges[key], 8) if key in ranges else x


def head(mod, hidden):
    """(hidden, weight) of the output head ``mod`` for a loss that applies the head itself
    (distill/loop.py's chunked KD): through the head's grid, and its input's 8-bit rounding,
    while the phase is on; as they are otherwise."""
    if not hasattr(mod, "_edgedistill_grid"):
        return hidden, mod.weight
    if getattr(mod, "_edgedistill_ranges", None) is not None:
        hidden = _act(mod, "in", hidden)
    return hidden, quantgrid.fake_quant(mod.weight, mod._edgedistill_grid)


def _linear(self, x):
    import torch

    act = getattr(self, "_edgedistill_ranges", None) is not None
    y = torch.nn.functional.linear(_act(self, "in", x) if act else x,
                                   quantgrid.fake_quant(self.weight, self._edgedistill_grid),
                                   self.bias)
    return _act(self, "out", y) if act else y


def _embedding(self, ids):
    import torch

    return torch.nn.functional.embedding(
        ids, quantgrid.fake_quant(self.weight, self._edgedistill_grid), self.padding_idx,
        self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


@dataclass
class QuantAware:
    fmt: str
    quant: str
    start: int
    """The optimizer step from which the grids are on (0-based)."""
    steps: int
    """The run's total steps."""
    types: dict = field(default_factory=dict)
    """GGUF: {tensor name: ggml type} of the file (:func:`ggml_types`)."""
    family: str = "llama"
    modules: list = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.fmt}:{self.quant}"

    @property
    def rounds_activations(self) -> bool:
        """Whether the file has static 8-bit activations (rounded in training too)."""
        qt = quant_type(self.fmt, self.quant)
        return qt.static and qt.activation_bits == 8

    def enable(self, student) -> int:
        """Route the matrices through their grids; returns how many tensors. Idempotent."""
        import torch

        if not self.modules:
            for mod, kind in (onnx_targets(student, self.quant) if self.fmt == "onnx" else
                              targets(student, self.family, self.types)):
                mod._edgedistill_grid = kind
                linear = isinstance(mod, torch.nn.Linear)
                if self.rounds_activations and linear:
                    mod._edgedistill_ranges = {}
                mod.forward = pytypes.MethodType(_linear if linear else _embedding, mod)
                self.modules.append(mod)
        return len({id(m.weight) for m in self.modules})

    def bake(self, student) -> dict:
        """Replace each matrix by its rounded value and restore the plain forward; mark the
        config. Returns {ggml type: tensors}."""
        import torch

        self.enable(student)
        kinds = Counter()
        seen = set()
        with torch.no_grad():
            for mod in self.modules:
                kind = mod._edgedistill_grid
                if id(mod.weight) not in seen:
                    seen.add(id(mod.weight))
                    kinds[kind] += 1
                    mod.weight.copy_(quantgrid.GRIDS[kind](mod.weight))
                del mod.forward, mod._edgedistill_grid
                mod.__dict__.pop("_edgedistill_ranges", None)
        self.modules = []
        setattr(student.config, CONFIG_KEY, self.spec)
        return dict(sorted(kinds.items()))

    @property
    def file_types(self) -> dict[str, int]:
        """{ggml type: matrices} of the file (F32 norms left out)."""
        return dict(sorted(Counter(t for t in self.types.values() if t != "F32").items()))

    def record(self, kinds: dict) -> dict:
        return {"format": self.spec, "start_step": self.start,
                "steps": self.steps - self.start, "tensors": sum(kinds.values()),
                "trained_types": kinds, "file_types": self.file_types or kinds,
                "scales": "recomputed from the weights at every step, as the format's "
                          "quantizer does", "gradient": "straight-through",
                **({"activations": "8 bits per tensor at each linear layer's input and output, "
                                   "over the running min/max of the phase's batches"}
                   if self.rounds_activations else {})}


def phase(spec: str | None, share: float, steps: int, model_dir: str | Path | None = None,
          threads: int | None = None) -> QuantAware | None:
    """The QAD phase of a run of ``steps`` steps: its last ``share`` (at least one step);
    with ``model_dir`` (the student's folder), a GGUF file's ggml types are found."""
    if not spec:
        return None
    fmt, quant = parse(spec)
    start = min(steps - 1, max(0, round(steps * (1 - share))))
    qa = QuantAware(fmt, quant, start, steps)
    if model_dir is not None and fmt == "gguf":
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        qa.family = shape_from_config(cfg, str(model_dir)).family
        qa.types = ggml_types(model_dir, quant, threads or min(4, os.cpu_count() or 1))
    return qa


def file_note(trained: str, spec: str, figures: dict) -> str:
    """What a file of a student trained quant-aware for ``trained`` says: whether it is the
    file trained for, and how many of its quantized matrices hold exactly the trained
    weights (``figures``: its verdict's, with the ``weights`` summary of verify/own.py)."""
    if trained != spec:
        return f"the model was trained quant-aware for {trained}, not for this file"
    w = figures.get("weights") or {}
    if not w:
        return f"trained quant-aware for {trained}"
    exact, quantized = w.get("exact", 0), w.get("quantized", 0)
    return (f"trained quant-aware for {trained}: {exact} of its {quantized} quantized "
            "matrices hold exactly the trained weights"
            + (" (the others were not trained on their file's grid: a type with no grid, or a "
               "tied table the file also stores at another width)"
               if exact < quantized else ""))


def trained_for(config: dict) -> str | None:
    """The ``FMT:QUANT`` a student's config.json says it was trained for, if any."""
    return config.get(CONFIG_KEY)
