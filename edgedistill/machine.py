"""Measure this machine, for ``--target local``.

Cores, RAM and CPU flags come from the OS; memory bandwidth from a copy benchmark run with as
many threads as the runtime will use (one thread reads about half of what two do on our
machines, so a single-threaded copy would under-state the roofline by 2x). Peak compute is
measured with a numpy GEMM where numpy is installed, else estimated from the SIMD flags.
Pure Python plus ctypes: ``ctypes.memmove`` releases the GIL, so threads really run in parallel.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    physical_cores: int
    logical_cpus: int
    ram_total_gb: float
    ram_available_gb: float
    flags: tuple[str, ...]
    llc_bytes: int
    """Last-level cache size (0 when unknown)."""


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _physical_cores() -> int:
    pairs = set()
    try:
        base = "/sys/devices/system/cpu"
        for d in os.listdir(base):
            if d.startswith("cpu") and d[3:].isdigit():
                topo = f"{base}/{d}/topology"
                with open(f"{topo}/physical_package_id") as a, open(f"{topo}/core_id") as b:
                    pairs.add((a.read().strip(), b.read().strip()))
    except OSError:
        pass
    return len(pairs) or (os.cpu_count() or 1)


def _meminfo_gb(key: str) -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 0.0


def _llc_bytes() -> int:
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = [d for d in os.listdir(base) if d.startswith("index")]
    except OSError:
        return 0
    for d in entries:
        try:
            with open(f"{base}/{d}/size") as f:
                s = f.read().strip()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(s[-1], 1)
            best = max(best, int(s.rstrip("KMG")) * mult)
        except (OSError, ValueError, IndexError):
            continue
    return best


def machine_info() -> MachineInfo:
    """What the OS says about this machine."""
    info = _cpuinfo()
    flags = tuple(sorted((info.get("flags") or info.get("Features") or "").split()))
    return MachineInfo(
        cpu_model=cpu_model(),
        physical_cores=_physical_cores(),
        logical_cpus=os.cpu_count() or 1,
        ram_total_gb=round(_meminfo_gb("MemTotal"), 2),
        ram_available_gb=round(_meminfo_gb("MemAvailable"), 2),
        flags=flags,
        llc_bytes=_llc_bytes(),
    )


def measure_bandwidth(threads: int, mib_per_thread: int = 128, repeats: int = 5) -> float:
    """Sustained copy bandwidth in GB/s with ``threads`` threads (STREAM convention: bytes
    read + bytes written, per second). Returns the median of ``repeats`` timed rounds."""
    n = mib_per_thread * 1024 * 1024
    bufs = []
    for _ in range(threads):
        src, dst = (ctypes.c_char * n)(), (ctypes.c_char * n)()
        ctypes.memset(src, 1, n)  # touch every page so the timed copy does not page-fault
        ctypes.memset(dst, 0, n)
        # Every source page distinct: a VM that merges identical pages (KSM) would otherwise
        # serve the whole copy from one cached page (518 GB/s measured here once, 43 real).
        for off in range(0, n, 4096):
            ctypes.memmove(ctypes.addressof(src) + off, off.to_bytes(8, "little"), 8)
        bufs.append((src, dst))
    barrier = threading.Barrier(threads + 1)
    times: list[list[float]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        src, dst = bufs[i]
        for _ in range(repeats + 1):  # one warm-up round
            barrier.wait()
            t0 = time.perf_counter()
            ctypes.memmove(dst, src, n)
            times[i].append(time.perf_counter() - t0)
            barrier.wait()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    rounds = []
    for _ in range(repeats + 1):
        barrier.wait()
        t0 = time.perf_counter()
        barrier.wait()
        rounds.append(time.perf_counter() - t0)
    for t in pool:
        t.join()
    # Each round ends when the slowest thread finishes: total bytes / wall time of the round.
    wall = statistics.median(rounds[1:])
    return 2 * n * threads / wall / 1e9


def measure_gemm_tflops(threads: int) -> float | None:
    """fp32 GEMM throughput with numpy (its BLAS uses ``threads`` threads if told so through
    the usual variables before import); None when numpy is missing."""
    try:
        import numpy as np
    except ImportError:
        return None
    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(runs) / 1e12


def estimate_peak_tflops(info: MachineInfo, threads: int) -> dict[str, float]:
    """Peak compute from SIMD flags, assuming 2 FMA units and ~3 GHz (used when not measured)."""
    f = set(info.flags)
    if "avx512f" in f:
        fp32_per_cycle = 64
    elif "avx2" in f and "fma" in f:
        fp32_per_cycle = 32
    elif "asimd" in f or "neon" in f:
        fp32_per_cycle = 16
    else:
        fp32_per_cycle = 8
    fp32 = fp32_per_cycle * 3.0e9 * threads / 1e12
    out = {"fp32": round(fp32, 3)}
    if "avx512_bf16" in f:
        out["bf16"] = round(2 * fp32, 3)
    vnni = {"avx512_vnni", "avx_vnni", "asimddp"} & f
    out["int8"] = round((4 if vnni else 2) * fp32, 3)
    return out
