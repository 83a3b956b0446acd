"""Child process that runs llama.cpp (llama-cpp-python) for verification and benchmarks.

Usage: ``python -m edgedistill.export.llama_worker TASK.json``. The task names an op
(``quantize``, ``logits``, ``tokenize``, ``embed``); results go to ``result.json`` in the task's workdir, with
arrays as .npy files beside it. Runs apart from the caller so that a crash of the native code
is reported by the parent instead of killing it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


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
            from edgedistill.quantize.gguf import apply_importance

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
        llm = Llama(task["model"], embedding=True, n_ctx=task.get("n_ctx", 512),
                    n_batch=task.get("n_ctx", 512), n_ubatch=task.get("n_ctx", 512),
                    n_threads=task["threads"], n_threads_batch=task["threads"], verbose=False)
        vecs = [llm.embed(t, normalize=task["normalize"]) for t in task["texts"]]
        np.save(work / "embeddings.npy", np.array(vecs, dtype=np.float32))
        result["embeddings"] = "embeddings.npy"
    else:
        print(f"unknown op {op!r}", file=sys.stderr)
        return 2
    (work / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
