"""Child process that runs llama.cpp (llama-cpp-python) for verification and benchmarks.

Usage: ``python -m edgedistill.runtimes.llama_worker TASK.json``. The task names an op
(``quantize``, ``logits``, ``tokenize``, ``embed``); results go to ``result.json`` in the
task's workdir, with arrays as .npy files beside it. Runs apart from the caller so that a crash of the native code
is reported by the parent instead of killing it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edgedistill.formats import IMPORTANCE_TYPES


def main(spec_path: str) -> int:
    task = json.loads(Path(spec_path).read_text())
    work = Path(task["workdir"])
    from llama_cpp import Llama

    op = task["op"]
    result: dict = {}
    if op == "quantize":
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{task['quant'].upper()}")
        params.nthread = task["threads"]
        rc = llama_cpp.llama_model_quantize(task["src"].encode(), task["dst"].encode(),
                                            ctypes.byref(params))
        if rc != 0:
            print(f"llama_model_quantize returned {rc}", file=sys.stderr)
            return 1
        if task.get("importance"):

            result["importance_tensors"] = apply_importance(task["dst"], task["src"],
                                                            task["importance"])
    elif op == "tokenize":
        llm = Llama(task["model"], vocab_only=True, verbose=False)
        result["ids"] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
                         for t in task["texts"]]
    elif op == "logits":
        kv = {"type_k": 0, "type_v": 0} if task.get("kv_f32") else {}  # GGML_TYPE_F32
        llm = Llama(task["model"], n_ctx=task["n_ctx"], n_batch=task["n_ctx"],
                    n_threads=task["threads"], n_threads_batch=task["threads"],
                    logits_all=True, verbose=False, **kv)
        for i, ids in enumerate(task["seqs"]):
            llm.reset()
            llm.eval(ids)
            np.save(work / f"logits_{i}.npy", np.array(llm.scores[: len(ids)], dtype=np.float32))
            result[f"logits_{i}"] = f"logits_{i}.npy"
    elif op == "embed":
        n_ctx = min(task.get("n_ctx", 512), trained_context(task["model"]) or 512)
        llm = Llama(task["model"], embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                    n_threads=task["threads"], n_threads_batch=task["threads"], verbose=False)
        vecs = [llm.embed(t, normalize=task["normalize"]) for t in task["texts"]]
        np.save(work / "embeddings.npy", np.array(vecs, dtype=np.float32))
        result["embeddings"] = "embeddings.npy"
    else:
        print(f"unknown op {op!r}", file=sys.stderr)
        return 2
    (work / "result.json").write_text(json.dumps(result))
    return 0


def trained_context(path: str) -> int | None:
    """The GGUF's ``{arch}.context_length``: an encoder's position table has that many rows,
    and llama.cpp aborts on a position beyond it."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields.get("general.architecture")
    if arch is None:
        return None
    key = fields.get(f"{bytes(arch.parts[-1]).decode()}.context_length")
    return int(key.parts[-1][0]) if key is not None else None


def _ggml_quantize_chunk():
    import ctypes

    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return fn


def apply_importance(dst: str | Path, src: str | Path, importance: str | Path) -> int:
    """Quantize again, in place in ``dst``, every tensor of an :data:`IMPORTANCE_TYPES` type
    that ``importance`` covers, from its float data in ``src``, with ggml's quantizer weighing
    each column by its importance. Returns the number of tensors rewritten. Native code: call
    it in a child process (the llama worker does)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    quantize_chunk = _ggml_quantize_chunk()
    matrix = dict(np.load(importance))
    out = GGUFReader(str(dst), "r+")
    names = {t.name for t in out.tensors}
    if "output.weight" in matrix and "output.weight" not in names:
        matrix.setdefault("token_embd.weight", matrix["output.weight"])  # tied LM head
    source = {t.name: t for t in GGUFReader(str(src)).tensors}
    done = 0
    for t in out.tensors:
        imp = matrix.get(t.name)
        if imp is None or t.tensor_type.name not in IMPORTANCE_TYPES or t.name not in source:
            continue
        n_per_row = int(t.shape[0])
        if imp.shape != (n_per_row,):
            continue
        s = source[t.name]
        w = np.ascontiguousarray(dequantize(s.data, s.tensor_type), dtype=np.float32)
        rows = w.size // n_per_row
        raw = t.data.reshape(-1).view(np.uint8)
        buf = np.empty(raw.nbytes, dtype=np.uint8)
        imp = np.ascontiguousarray(np.maximum(imp, 0), dtype=np.float32)
        size = quantize_chunk(int(t.tensor_type), w.ctypes.data, buf.ctypes.data, 0, rows,
                              n_per_row, imp.ctypes.data)
        if size != raw.nbytes:
            raise RuntimeError(f"ggml wrote {size} bytes for {t.name}, the file holds "
                               f"{raw.nbytes}")
        raw[:] = buf
        done += 1
    out.data.flush()
    del out
    return done


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
