"""GGUF quantization with llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize),
run in a child process, and a report of the tensor types really written: k-quants fall back
silently to other types on rows that are not multiples of 256.

Importance matrix (what ``llama-imatrix`` + ``llama-quantize --imatrix`` do by hand): the mean
square of each input column of every matmul weight, measured in torch on calibration text.
llama.cpp picks the type of every tensor as usual; then each tensor of a type whose quantizer
can weigh columns by importance is quantized again from the float file with ggml's own
quantizer (``ggml_quantize_chunk``) and that matrix, in place. Q8_0 has no use for it.
The export keeps the weighted file only when it beats the plain one on calibration text
(export/gguf_checks.py).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from edgedistill.convert.gguf import gguf_name
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import quant_names, quant_type
from edgedistill.runtimes.child import RuntimeFailure, llama_worker

QUANTS = tuple(quant_names("gguf", floats=False))
"""llama.cpp quantizations this module writes (formats.QUANT_TYPES)."""
IMPORTANCE_QUANTS = frozenset(q for q in QUANTS if quant_type("gguf", q).importance)
"""Quantizations whose files hold types an importance matrix can weigh (q8_0's cannot)."""


def tensor_types(path: str | Path) -> dict[str, int]:
    """{ggml type name: number of tensors} as stored in the GGUF file."""
    from gguf import GGUFReader

    return _type_counts(GGUFReader(str(path)))


def _type_counts(reader) -> dict[str, int]:
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))


def quantize_gguf(src: str | Path, quant: str, dst: str | Path, threads: int = 2,
                  importance: str | Path | None = None) -> tuple[Path, int]:
    """Quantize the float GGUF ``src`` to ``quant`` at ``dst`` (atomically). ``importance``:
    an .npz of {GGUF tensor name: importance vector} (:func:`importance_matrix`); the tensors
    it covers are quantized with it. Returns (``dst``, number of tensors it weighted)."""

    if quant not in QUANTS:
        raise EdgeDistillError(f"unknown GGUF quantization {quant!r}.",
                               f"use one of {', '.join(QUANTS)}")
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        res = llama_worker({"op": "quantize", "src": str(src), "dst": str(tmp), "quant": quant,
                            "threads": threads,
                            "importance": str(importance) if importance else None})
        tmp.replace(dst)
    except RuntimeFailure as e:
        raise EdgeDistillError(f"llama.cpp could not quantize {src.name} to {quant}: {e}.",
                               "check the float GGUF loads (edgedistill export --quant f16)")
    finally:
        tmp.unlink(missing_ok=True)
    return dst, res.get("importance_tensors", 0)


def importance_matrix(model_dir: str | Path, family: str, items: list, tok=None,
                      encoder: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """({GGUF tensor name: mean square of each input column}, tokens seen) for every linear
    layer of the HF model, run in torch on ``items``: token-id sequences for a causal LM,
    sentences (tokenized with ``tok``, one at a time: no padding) for an encoder."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if encoder else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, list] = {}

    def hook(name):
        def record(_mod, inputs, _out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            acc = sums.setdefault(name, [torch.zeros(x.shape[-1], dtype=torch.float64), 0])
            acc[0] += (x * x).sum(0)
            acc[1] += x.shape[0]
        return record

    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        try:
            gname = gguf_name(name + ".weight", family)
        except EdgeDistillError:  # heads llama.cpp does not run (pooler, classifiers)
            gname = None
        if gname:
            handles.append(mod.register_forward_hook(hook(gname)))
    tokens = 0
    with torch.no_grad():
        for item in items:
            enc = (tok(item, truncation=True, max_length=128, return_tensors="pt") if encoder
                   else {"input_ids": torch.tensor([list(item)])})
            model(**enc)
            tokens += enc["input_ids"].shape[1]
    for h in handles:
        h.remove()
    return {k: (v[0] / max(v[1], 1)).float().numpy() for k, v in sums.items()}, tokens


def decode_gguf(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write ``src`` again at ``dst`` (atomically) with every tensor decoded to F32 by gguf-py's
    dequantizers, the metadata copied and the file type set to F32. llama.cpp then runs the
    file's own weights with F32 arithmetic: the loss of the weights alone, without the
    activation rounding its quantized and F16 matmuls add (benchmarks/format_floors.py).
    Returns ``src``'s tensor types."""
    import gguf
    from gguf.quants import dequantize

    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(str(src))
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), reader.fields["general.architecture"].contents())
    try:
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue  # the writer adds these itself
            if field.name == "general.file_type":
                writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the fastest axis first
            arr = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
            writer.add_tensor(t.name, np.ascontiguousarray(arr, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return _type_counts(reader)
