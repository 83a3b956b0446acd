"""GPU runtimes: which of them this machine can run, and why not.

Three CUDA runtimes are measured, each found at run time:

- ``torch-cuda``: the student's HF folder in fp16/bf16 on torch's CUDA build, decoded three
  ways, so that the report shows what launch overhead costs a small model:
  ``eager`` (dynamic cache), ``static`` (a preallocated StaticCache) and ``graphs``
  (StaticCache plus ``torch.compile(mode="reduce-overhead")``: the decode step is captured
  once as a CUDA graph and replayed);
- ``onnxruntime-cuda``: the ONNX files on onnxruntime's CUDA execution provider (the
  ``onnxruntime-gpu`` wheel);
- ``llama.cpp-cuda``: the GGUF files with every layer offloaded, when llama-cpp-python was
  built with ``CMAKE_ARGS=-DGGML_CUDA=on``.

:func:`runtime_status` says, for each, ``None`` (usable here) or the reason it is not, with
the fix; :func:`require` turns a reason into the one-line error a user gets (exit 2).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from edgedistill.errors import EdgeDistillError

GPU_RUNTIMES = ("torch-cuda", "onnxruntime-cuda", "llama.cpp-cuda")
TORCH_MODES = ("eager", "static", "graphs")
TORCH_MODE_LABEL = {"eager": "torch-cuda eager", "static": "torch-cuda static cache",
                    "graphs": "torch-cuda CUDA graphs"}


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def cuda_device() -> str | None:
    """The first CUDA device's name, or None where there is none (or torch cannot see it)."""
    if not _has("torch"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _driver_present() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists() or \
        os.name == "nt"


@functools.cache
def runtime_status() -> dict[str, str | None]:
    """{runtime: None if usable here, else why not and how to fix it}. Found once per process
    (installed packages and GPUs do not change under it); read it, do not change it."""
    status: dict[str, str | None] = {}
    torch_cuda = None
    if not _has("torch"):
        torch_cuda = "torch is not installed (pip install torch with CUDA)"
    else:
        import torch

        if torch.version.cuda is None:
            torch_cuda = (f"this torch ({torch.__version__}) is a CPU build; install a CUDA "
                          "build of torch (pip install torch --index-url "
                          "https://download.pytorch.org/whl/cu128)")
        elif not torch.cuda.is_available():
            torch_cuda = "torch has CUDA but sees no GPU (check nvidia-smi and the driver)"
    status["torch-cuda"] = torch_cuda

    if not _has("onnxruntime"):
        status["onnxruntime-cuda"] = "onnxruntime is not installed (pip install onnxruntime-gpu)"
    else:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            status["onnxruntime-cuda"] = (
                "this onnxruntime has no CUDA execution provider; replace it with the GPU "
                "build (pip uninstall onnxruntime && pip install onnxruntime-gpu)")
        elif not _driver_present():
            status["onnxruntime-cuda"] = "onnxruntime has CUDA but this machine has no GPU"
        else:
            status["onnxruntime-cuda"] = None

    if not _has("llama_cpp"):
        status["llama.cpp-cuda"] = "llama-cpp-python is not installed"
    else:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            status["llama.cpp-cuda"] = (
                "llama-cpp-python was built without a GPU backend; rebuild it with "
                "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-binary "
                "llama-cpp-python llama-cpp-python")
        elif not _driver_present():
            status["llama.cpp-cuda"] = "llama-cpp-python has CUDA but this machine has no GPU"
        else:
            status["llama.cpp-cuda"] = None
    return status


def require(runtime: str) -> None:
    """Raise EdgeDistillError (exit 2) unless ``runtime`` can run here."""
    if runtime not in GPU_RUNTIMES:
        raise EdgeDistillError(f"unknown GPU runtime {runtime!r}.",
                               f"use one of {', '.join(GPU_RUNTIMES)}")
    why = runtime_status()[runtime]
    if why:
        raise EdgeDistillError(f"{runtime} was requested but cannot run here: {why}.",
                               "install it, or drop it from --runtime")


@functools.cache
def gpu_bandwidth_gbps() -> float | None:
    """This GPU's device-memory bandwidth, measured once per process: median of 5 copies of
    512 MiB (read + write counted). None without CUDA."""
    if cuda_device() is None:
        return None
    import torch

    try:
        a = torch.empty(2**27, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)
        times = []
        for _ in range(6):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            b.copy_(a)
            t1.record()
            torch.cuda.synchronize()
            times.append(t0.elapsed_time(t1) / 1e3)
        del a, b
        torch.cuda.empty_cache()
    except Exception:  # a broken CUDA setup: no scaling basis, said so in the basis
        return None
    return 2 * 2**27 * 4 / sorted(times[1:])[2] / 1e9
