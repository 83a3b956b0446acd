"""Child-process isolation: every runtime that can crash (llama.cpp, onnxruntime-qnn) or that
must be timed alone runs as ``python -m <worker> TASK.json`` in a process of its own, so a
segfault becomes an error message (RuntimeFailure), not a dead pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


class RuntimeFailure(RuntimeError):
    """The runtime could not run the artifact (crash, load error, timeout)."""


def llama_worker(task: dict, timeout: float = 600) -> dict:
    """Run one task in :mod:`edgedistill.runtimes.llama_worker` (see :func:`child`)."""
    return child("edgedistill.runtimes.llama_worker", task, timeout, "llama.cpp")


def uses_gpu(task: dict) -> bool:
    """Whether a worker task asks for a GPU: torch on a CUDA device, llama.cpp with layers
    offloaded, or onnxruntime with the CUDA provider."""
    return (str(task.get("device", "cpu")).startswith("cuda") or bool(task.get("gpu_layers"))
            or "CUDAExecutionProvider" in (task.get("providers") or ()))


def child_env(task: dict) -> dict:
    """The child's environment. A task that asks for no GPU sees none (CUDA_VISIBLE_DEVICES
    empty): a CUDA build of llama.cpp otherwise sends large batches (a prompt, a
    verification's logits) to the GPU even with no layers offloaded, so a "CPU" figure would
    be part GPU."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not uses_gpu(task):
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def child(module: str, task: dict, timeout: float = 600, what: str = "the runtime") -> dict:
    """Run ``python -m module TASK.json`` in a child process; raise RuntimeFailure when it
    crashes, fails or times out. Arrays come back as .npy files in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="edgedistill-llama-") as tmp:
        task = dict(task, workdir=tmp)
        spec = Path(tmp) / "task.json"
        spec.write_text(json.dumps(task))
        env = child_env(task)
        try:
            r = subprocess.run([sys.executable, "-m", module, str(spec)], capture_output=True,
                               text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{what} did not finish within {timeout:.0f} s") from None
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
            how = (f"killed by signal {-r.returncode}" if r.returncode < 0
                   else f"exit status {r.returncode}")
            raise RuntimeFailure(f"{what} failed ({how}): {tail}")
        import numpy as np

        result = json.loads((Path(tmp) / "result.json").read_text())
        for key, name in list(result.items()):
            if isinstance(name, str) and name.endswith(".npy"):
                result[key] = np.load(Path(tmp) / name, allow_pickle=False)
        return result
