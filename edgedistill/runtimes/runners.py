"""One runner per runtime, each in its own child process with a timeout: llama.cpp
(llama-cpp-python), onnxruntime on CPU, and torch as the reference. A crash or a missing
runtime is reported with its reason; the other runtimes are still measured."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from edgedistill.formats import CPU_RUNTIME, RUNTIMES
from edgedistill.runtimes import cuda
from edgedistill.runtimes.child import RuntimeFailure, child
from edgedistill.runtimes.outputs import tokenizer_spec

def child_tokenizer(worker: str, folder: str) -> dict | None:
    """The tokenizer an encoder's bench child of ``worker`` is handed: onnxruntime's children
    get :func:`~edgedistill.runtimes.outputs.tokenizer_spec` and need not import
    transformers; the others (llama.cpp tokenizes itself, torch loads transformers anyway)
    none."""
    return tokenizer_spec(folder) if worker == "onnxruntime" else None


def available(runtime: str) -> bool:
    """Whether ``runtime``'s Python package is installed here."""
    return importlib.util.find_spec(RUNTIMES[runtime].package) is not None


def time_artifact(path: Path, fmt: str, *, threads: int, prompt: list[int] | None = None,
                  new_tokens: int = 64, repeats: int = 3, texts: list[str] | None = None,
                  seq_len: int = 128, tokenizer: Path | None = None, batch: int | None = None,
                  timeout: float = 900, runtime: str | None = None,
                  options: dict | None = None) -> dict:
    """Raw timings of one artifact: {"runs": [...]} (causal) or {"batch_s": [...]} (encoder),
    plus peak_rss_mb; an encoder's runs embed ``texts`` cut in batches of ``batch`` (default:
    one batch), one batch a run, in turn.
    ``runtime``: one of formats.RUNTIMES (default: the format's CPU
    runtime); ``options``: worker options (torch: mode, dtype). Raises RuntimeFailure with
    the reason when the runtime cannot run it."""
    if runtime not in GPU_RUNTIME_TASK:
        runtime = CPU_RUNTIME[fmt]
    name = runtime
    task = {"runtime": RUNTIMES[runtime].worker, "model": str(path), "threads": threads,
            "repeats": repeats}
    if runtime in GPU_RUNTIME_TASK:
        why = cuda.runtime_status().get(runtime)
        if why:
            raise RuntimeFailure(f"{runtime} cannot run here: {why}")
        task |= GPU_RUNTIME_TASK[runtime]
    if not available(name):
        raise RuntimeFailure(f"{name} is not installed (pip install {RUNTIMES[name].pip})")
    task |= options or {}
    if texts is not None:
        task |= {"kind": "encoder", "texts": texts, "seq_len": seq_len, "batch": batch,
                 "tokenizer": str(tokenizer or path.parent)}
        task["tokenizer_spec"] = child_tokenizer(task["runtime"], task["tokenizer"])
    else:
        task |= {"kind": "causal", "prompt": prompt, "new_tokens": new_tokens}
    return child("edgedistill.runtimes.bench_worker", task, timeout, name)


GPU_RUNTIME_TASK = {r.name: {"runtime": r.worker, **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in r.task}}
                    for r in RUNTIMES.values() if r.device == "gpu" and r.worker}
"""The worker task of each GPU runtime (from formats.RUNTIMES): which worker runs it, and how
(a dict, so that a test can stand the CPU in for CUDA)."""
