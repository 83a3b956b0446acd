"""GGUF quantization with llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize),
run in a child process, and a report of the tensor types really written: k-quants fall back
silently to other types on rows that are not multiples of 256."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ..errors import EdgeDistillError

QUANTS = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def tensor_types(path: str | Path) -> dict[str, int]:
    """{ggml type name: number of tensors} as stored in the GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))


def weight_types(path: str | Path) -> dict[str, str]:
    """{tensor name: ggml type name} for the 2-D weights."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors
            if len(t.shape) >= 2}


def quantize_gguf(src: str | Path, quant: str, dst: str | Path, threads: int = 2) -> Path:
    """Quantize the float GGUF ``src`` to ``quant`` at ``dst`` (atomically)."""
    from ..export.runtimes import RuntimeFailure, llama_worker

    if quant not in QUANTS:
        raise EdgeDistillError(f"unknown GGUF quantization {quant!r}.",
                               f"use one of {', '.join(QUANTS)}")
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        llama_worker({"op": "quantize", "src": str(src), "dst": str(tmp), "quant": quant,
                      "threads": threads})
        tmp.replace(dst)
    except RuntimeFailure as e:
        raise EdgeDistillError(f"llama.cpp could not quantize {src.name} to {quant}: {e}.",
                               "check the float GGUF loads (edgedistill export --quant f16)")
    finally:
        tmp.unlink(missing_ok=True)
    return dst
