"""Device profiles: what a target device offers and what a deployment on it must meet.

Profiles are data: ``hardware_profiles/*.yaml``. This module loads them into frozen
dataclasses and validates them strictly: an unknown key, a missing field or a wrong type is a
:class:`ProfileError` that names the file, the field and the fix. ``local`` is built by
measuring this machine (:func:`local_profile`, with :mod:`edgedistill.machine`'s figures).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from edgedistill.errors import MachineError, ProfileError
from edgedistill.formats import QUANT_TYPES, RUNTIMES, quant_names
from edgedistill.machine import (estimate_peak_tflops, machine_info, measure_bandwidth,
                                 measure_gemm_tflops)

PROFILE_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
"""Shipped profiles. ``EDGEDISTILL_PROFILES`` (a folder) is searched first."""

COMPUTE_DTYPES = ("fp32", "fp16", "bf16", "int16", "int8", "int4")


@dataclass(frozen=True)
class Memory:
    budget_gb: float
    """Memory the deployed model may use: weights + KV cache + runtime buffers (GB, 1e9 B)."""
    bandwidth_gbps: float
    """Sustained memory bandwidth the runtime can read at, all its threads together (GB/s)."""


@dataclass(frozen=True)
class LatencyTargets:
    decode_tokens_per_s: float
    """Causal LMs: minimum generation speed, tokens per second."""
    prompt_tokens: int
    """Causal LMs: prompt length at which ``prefill_ms`` is judged."""
    prefill_ms: float
    """Causal LMs: maximum time to process a prompt of ``prompt_tokens`` (ms)."""
    encoder_seq_len: int
    """Encoders: sequence length of one batch."""
    encoder_batch: int
    """Encoders: sentences per batch."""
    encoder_batch_ms: float
    """Encoders: maximum time for one batch (ms)."""


@dataclass(frozen=True)
class QualityTargets:
    """What a file must keep of the teacher to be worth shipping: the report recommends the
    fastest file that meets these (optional in a profile; these defaults otherwise)."""

    cosine_to_teacher: float = 0.90
    """Encoders: mean cosine of the file's sentence embeddings to the teacher's (torch) on
    held-out text, at least."""
    neighbour_overlap: float = 0.60
    """Encoders: share of each sentence's 10 nearest neighbours the file keeps, at least."""
    top1_agreement: float = 0.60
    """Causal LMs: share of next tokens where the file's argmax is the teacher's, at least."""
    perplexity_ratio: float = 1.50
    """Causal LMs: the file's held-out perplexity over the teacher's (torch), at most."""


@dataclass(frozen=True)
class Constraints:
    static_shapes: bool
    """The runtime needs fixed shapes (NPUs): fixed prompt chunk and KV-cache size."""
    dim_multiple: int
    """Preferred multiple for hidden and FFN sizes (256 suits k-quants; NPUs like 64)."""
    prefill_chunk: Optional[int] = None
    """With static shapes: tokens per prefill graph call (e.g. 128)."""
    int4_block_size: int = 32
    """Block size of int4 weight-only quantization (MatMulNBits / Q4 groups)."""
    htp_arch: Optional[int] = None
    """NPUs: Hexagon HTP architecture the graphs are compiled for (75 = v75, 8 Gen 3)."""
    soc_model: Optional[int] = None
    """NPUs: QNN SoC model id (57 = SM8650, Snapdragon 8 Gen 3); QNN sizes VTCM from it."""


@dataclass(frozen=True)
class CostModel:
    """Coefficients of the roofline cost model (see plan/costmodel.py); calibration replaces them."""

    bandwidth_efficiency: float
    """Fraction of ``memory.bandwidth_gbps`` that decode actually streams weights at."""
    compute_efficiency: float
    """Fraction of peak compute that prefill and encoders actually reach."""
    layer_overhead_us: float
    """Fixed cost per layer per forward call (kernel launches, graph walking), microseconds."""
    call_overhead_us: float
    """Fixed cost per forward call (sampling, graph set-up), microseconds."""
    generate_token_us: float = 0.0
    """GGUF through llama-cpp-python: time per token of ``Llama.generate``'s loop beyond
    llama.cpp's decode step (its sampler chain and Python), microseconds; the prediction's
    ``generate_tokens_per_s``. A calibration measures it on its machine."""
    generate_vocab_us: float = 0.0
    """The same, per 1,000 vocabulary entries: the sampler chain and the logits copy walk the
    whole vocabulary every token (benchmarks/generate_loop.py)."""
    encoder_token_us: float = 0.0
    """ONNX sentence encoders: time per token of a batch that the matrix and bandwidth terms
    miss (tokenizing, the embedding stage, graph set-up), microseconds."""
    encoder_layer_token_us: float = 0.0
    """ONNX sentence encoders: the same per token and layer (onnxruntime's unfused attention:
    reshapes, transposes, mask and softmax ops, a thread-pool round each), microseconds.
    Without these two the model predicted the demo's 3-layer MiniLM student 2.57x faster than
    its teacher, where it measured 2.28x (benchmarks/encoder_shapes.py)."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    """Short name, used with ``--target``."""
    description: str
    """One line: which device this is."""
    kind: Literal["cpu", "gpu", "npu"]
    """Where the model runs."""
    device: str
    """The reference hardware the numbers describe."""
    threads: int
    """Threads the runtime uses (CPU) or host threads (GPU/NPU)."""
    context_length: int
    """Context the deployment must hold (KV cache sized for it)."""
    memory: Memory
    compute_tflops: dict[str, float]
    """Peak dense compute per dtype, TFLOP/s (TOPS for integers); keys from COMPUTE_DTYPES."""
    runtimes: list[str]
    """Runtimes in order of preference; the first one's format is the deployment format."""
    formats: dict[str, list[str]]
    """Allowed export formats and their quantizations; the first listed is the default."""
    latency_targets: LatencyTargets
    constraints: Constraints
    cost_model: CostModel
    quality_targets: QualityTargets = QualityTargets()
    """What the recommended file must keep of the teacher (report.json ``recommendation``)."""
    encoder_formats: Optional[dict[str, list[str]]] = None
    """What sentence encoders are exported to by default, when it is less than ``formats`` (a
    subset of it); None: ``formats``. An explicit ``--quant`` may still ask for any of
    ``formats``."""
    qai_hub_device: Optional[str] = None
    """NPU profiles: the Qualcomm AI Hub device that stands for this profile's phone
    (``bench --qai-hub`` profiles the graphs on it unless ``--device`` names another)."""
    source: str = field(default="", compare=False)
    """Where the profile came from (a file path, or ``measured``)."""
    measured: bool = False
    """True when the numbers were measured on this machine (``--target local``)."""
    host: Optional[dict] = field(default=None, compare=False)
    """For ``local``: what was read off the machine (CPU model, cores, RAM, flags, LLC)."""

    # -- derived -----------------------------------------------------------------------------
    @property
    def primary_runtime(self) -> str:
        return self.runtimes[0]

    @property
    def primary_format(self) -> str:
        return RUNTIMES[self.runtimes[0]].format

    @property
    def primary_quant(self) -> str:
        return self.formats[self.primary_format][0]

    def formats_for(self, encoder: bool) -> dict[str, list[str]]:
        """The formats and quantizations written by default for this kind of model."""
        return (self.encoder_formats or self.formats) if encoder else self.formats

    def peak_tflops(self, dtype: str) -> float:
        """Peak compute for ``dtype``; falls back to the nearest wider type the profile lists."""
        order = {
            "int4": ["int4", "int8", "fp16", "fp32"],
            "int8": ["int8", "fp16", "bf16", "fp32"],
            "int16": ["int16", "fp16", "int8", "fp32"],
            "fp16": ["fp16", "bf16", "fp32"],
            "bf16": ["bf16", "fp16", "fp32"],
            "fp32": ["fp32", "fp16", "bf16"],
        }[dtype]
        for d in order:
            if d in self.compute_tflops:
                # int16 on integer engines runs at about half the int8 rate.
                if dtype == "int16" and d == "int8":
                    return self.compute_tflops[d] / 2
                return self.compute_tflops[d]
        return max(self.compute_tflops.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------
# strict loading
# ------------------------------------------------------------------------------------------

_EXAMPLES = {
    float: "a number such as 12.5",
    int: "a whole number such as 8",
    bool: "true or false",
    str: "a quoted string",
}


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if origin in (list,):
        return f"a list of {_type_name(typing.get_args(t)[0])}"
    if origin in (dict,):
        k, v = typing.get_args(t)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    if dataclasses.is_dataclass(t):
        return "a mapping"
    return {float: "a number", int: "a whole number", bool: "true/false", str: "a string"}.get(
        t, str(t)
    )


class _Loader:
    """Builds a dataclass from parsed YAML, failing on the first error with file + field."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, where: str, message: str, hint: str) -> None:
        raise ProfileError(f"{self.file}: field '{where}' {message}.", hint)

    def build(self, cls: Any, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            self.fail(where or "<top>", f"must be a mapping, got {type(data).__name__}",
                      f"write '{where or 'the profile'}' as 'key: value' lines")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        settable = {n for n in fields if n not in ("source", "measured", "host")}
        for key in data:
            if key not in settable:
                known = ", ".join(sorted(settable))
                self.fail(f"{where}{key}", "is not a known key",
                          f"remove it or correct its spelling; known keys here: {known}")
        kwargs = {}
        for name in settable:
            f = fields[name]
            has_default = (f.default is not dataclasses.MISSING
                           or f.default_factory is not dataclasses.MISSING)
            if name not in data:
                if has_default:
                    continue
                self.fail(f"{where}{name}", "is missing",
                          f"add '{name}:' ({_type_name(hints[name])}) to the profile")
            kwargs[name] = self.value(hints[name], data[name], f"{where}{name}")
        return cls(**kwargs)

    def value(self, t: Any, v: Any, where: str) -> Any:
        origin = typing.get_origin(t)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            return None if v is None else self.value(args[0], v, where)
        if dataclasses.is_dataclass(t):
            return self.build(t, v, where + ".")
        if origin is Literal:
            if v not in typing.get_args(t):
                self.fail(where, f"must be one of {_type_name(t)}, got {v!r}",
                          f"set it to one of {_type_name(t)}")
            return v
        if origin is list:
            if not isinstance(v, list) or not v:
                self.fail(where, f"must be a non-empty list, got {type(v).__name__}",
                          "write it as [a, b] or as '- a' lines")
            (item,) = typing.get_args(t)
            return [self.value(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
        if origin is dict:
            if not isinstance(v, dict) or not v:
                self.fail(where, f"must be a non-empty mapping, got {type(v).__name__}",
                          "write it as 'key: value' lines")
            kt, vt = typing.get_args(t)
            return {self.value(kt, k, where): self.value(vt, x, f"{where}.{k}")
                    for k, x in v.items()}
        ok = {
            float: isinstance(v, (int, float)) and not isinstance(v, bool),
            int: isinstance(v, int) and not isinstance(v, bool),
            bool: isinstance(v, bool),
            str: isinstance(v, str),
        }[t]
        if not ok:
            self.fail(where, f"must be {_type_name(t)}, got {v!r} ({type(v).__name__})",
                      f"write {_EXAMPLES[t]}")
        if t in (float, int) and v <= 0:
            self.fail(where, f"must be positive, got {v!r}", "write a value above zero")
        return float(v) if t is float else v


def _check_semantics(p: DeviceProfile, ld: _Loader) -> None:
    for i, r in enumerate(p.runtimes):
        if r not in RUNTIMES:
            ld.fail(f"runtimes[{i}]", f"names an unknown runtime {r!r}",
                    f"use one of {', '.join(RUNTIMES)}")
    for d in p.compute_tflops:
        if d not in COMPUTE_DTYPES:
            ld.fail(f"compute_tflops.{d}", "is not a known dtype",
                    f"use keys from {', '.join(COMPUTE_DTYPES)}")
    for fmt, quants in p.formats.items():
        if fmt not in {f for f, _ in QUANT_TYPES}:
            ld.fail(f"formats.{fmt}", "is not a known format", "use gguf, onnx or hf")
        for q in quants:
            if (fmt, q) not in QUANT_TYPES:
                ld.fail(f"formats.{fmt}", f"lists unknown quantization {q!r}",
                        f"use one of {', '.join(quant_names(fmt))}")
    for fmt, quants in (p.encoder_formats or {}).items():
        extra = [q for q in quants if q not in p.formats.get(fmt, [])]
        if extra:
            ld.fail(f"encoder_formats.{fmt}", f"lists {extra}, which formats.{fmt} does not "
                    "allow", f"list only some of formats.{fmt}, or add them there")
    fmt = p.primary_format
    if fmt not in p.formats:
        ld.fail("formats", f"has no entry for {fmt!r}, the format of runtime {p.runtimes[0]!r}",
                f"add 'formats.{fmt}: [...]' or put another runtime first")
    if p.constraints.static_shapes:
        if not p.constraints.prefill_chunk:
            ld.fail("constraints.prefill_chunk", "is missing (static_shapes is true)",
                    "set the fixed prefill length, e.g. 'prefill_chunk: 128'")
        dynamic = [q for q in p.formats.get("onnx", []) if not QUANT_TYPES[("onnx", q)].static]
        if dynamic:
            ld.fail("formats.onnx", f"lists dynamic quantizations {dynamic} on a "
                    "static-shape device", "use only qdq_* quantizations for NPUs")
    for key in ("cosine_to_teacher", "neighbour_overlap", "top1_agreement"):
        if getattr(p.quality_targets, key) > 1:
            ld.fail(f"quality_targets.{key}", "must be a fraction in (0, 1]", "write e.g. 0.9")
    if p.quality_targets.perplexity_ratio < 1:
        ld.fail("quality_targets.perplexity_ratio", "must be at least 1 (the teacher's own)",
                "write e.g. 1.5")
    for key in ("bandwidth_efficiency", "compute_efficiency"):
        if getattr(p.cost_model, key) > 1:
            ld.fail(f"cost_model.{key}", "must be a fraction in (0, 1]", "write e.g. 0.7")
    for key in ("encoder_token_us", "encoder_layer_token_us"):
        if getattr(p.cost_model, key) < 0:
            ld.fail(f"cost_model.{key}", "must be 0 or more", "write 0 to leave it out")


def profile_from_dict(data: Any, source: str = "<dict>") -> DeviceProfile:
    """Validate a parsed profile and return it. Raises ProfileError naming ``source``."""
    ld = _Loader(source)
    prof = ld.build(DeviceProfile, data, "")
    prof = dataclasses.replace(prof, source=source)
    _check_semantics(prof, ld)
    return prof


def load_profile_file(path: str | os.PathLike) -> DeviceProfile:
    """Load and validate one YAML profile file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist.",
                           "check the path, or run 'edgedistill profiles' for shipped names")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ProfileError(f"{path}: malformed YAML{at}: {problem}.",
                           "fix the YAML syntax (indentation, ':' after each key)") from None
    return profile_from_dict(data, str(path))


def _search_dirs() -> list[Path]:
    extra = os.environ.get("EDGEDISTILL_PROFILES")
    return ([Path(extra)] if extra else []) + [PROFILE_DIR]


def profile_names() -> list[str]:
    """Names of the shipped profiles (plus ``local``, which is measured)."""
    names: set[str] = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def load_profile(target: str) -> DeviceProfile:
    """Resolve ``--target``: a shipped name, ``local``, or a path to a YAML file."""
    if target == "local":
        return local_profile()
    if target.endswith((".yaml", ".yml")) or os.sep in target:
        return load_profile_file(target)
    for d in _search_dirs():
        p = d / f"{target}.yaml"
        if p.is_file():
            return load_profile_file(p)
    names = ", ".join(profile_names() + ["local"])
    raise ProfileError(f"unknown target {target!r}.",
                       f"use one of: {names}; or pass a YAML file with --target path/to/file.yaml")


def resolve_profile(target: str | DeviceProfile) -> DeviceProfile:
    """``target`` as a DeviceProfile: a profile passes through (resolved once by the caller,
    e.g. the whole chain), a name, ``local`` or a YAML path is loaded."""
    return target if isinstance(target, DeviceProfile) else load_profile(target)


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, loaded and validated."""
    return [load_profile(n) for n in profile_names()]


_SIMD_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
               "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
               "asimddp", "sve", "i8mm"}


def local_profile(threads: int | None = None, quick: bool = False):
    """A DeviceProfile of this machine, measured now. Latency targets and formats are the
    laptop profile's (a CPU deployment); memory, bandwidth and compute are this machine's."""
    info = machine_info()
    threads = threads or info.physical_cores
    # Buffers well beyond the last-level cache, or the copy measures the cache.
    mib = max(64 if quick else 128, 4 * info.llc_bytes // threads // 2**20)
    try:
        bw = measure_bandwidth(threads, mib_per_thread=mib, repeats=3 if quick else 5)
    except (MemoryError, OSError) as e:
        raise MachineError(f"could not measure memory bandwidth: {e}.",
                           "free some memory, or pass a profile YAML with --target") from None
    compute = estimate_peak_tflops(info, threads)
    gemm = None if quick else measure_gemm_tflops(threads)
    if gemm:
        ratio = gemm / compute["fp32"]
        compute = {k: round(v * ratio, 3) for k, v in compute.items()}
    base = load_profile("laptop")
    return dataclasses.replace(
        base,
        name="local",
        description=f"This machine, measured: {info.cpu_model}, {threads} threads",
        device=info.cpu_model,
        threads=threads,
        # Leave half of what is free now to the OS and the user's other programs.
        memory=Memory(budget_gb=round(0.5 * info.ram_available_gb, 2),
                      bandwidth_gbps=round(bw, 1)),
        compute_tflops=compute,
        source=("measured: copy bandwidth with %d threads; compute %s" %
                (threads, "numpy fp32 GEMM scaled by SIMD flags" if gemm else
                 "estimated from SIMD flags")),
        measured=True,
        host=dataclasses.asdict(info) | {"flags": [f for f in info.flags if f in _SIMD_FLAGS]},
    )
