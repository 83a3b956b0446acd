"""Export formats, quantization types and runtimes, as data.

Bits per weight are those of the formats themselves (ggml block layouts, onnxruntime's
MatMulNBits), so the planner's memory figures follow from the file layout, not a guess.
Pure Python: imported by the planner.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantType:
    """One quantization a format can be written in."""

    format: str
    """File format: ``gguf`` or ``onnx``."""
    name: str
    """Name as the user writes it (``q4_k_m``, ``int8``, ``qdq_a16w8``)."""
    bits_per_weight: float
    """Average stored bits per weight of a 2-D weight matrix, scales included."""
    compute_dtype: str
    """Dtype whose peak compute bounds prefill (a key of a profile's ``compute_tflops``)."""
    kv_bytes: int
    """Bytes per element of the KV cache the runtime keeps at this quantization."""
    activation_bits: int
    """Bits of the activations (16/32 for float; 8 or 16 for static QDQ)."""
    dequant_ops_per_weight: float
    """Extra scalar operations per weight per decoded token to unpack it (0 for floats)."""
    static: bool = False
    """True for static (calibrated) QDQ, the only kind NPUs run."""
    weight_bits: int | None = None
    """Bits of each stored weight (None for floats): 8 or 4."""
    ggml_types: frozenset = frozenset()
    """GGUF: the ggml tensor types a file of this quantization holds (besides F32 norms);
    others mean llama.cpp fell back on rows its blocks do not divide."""
    importance: bool = False
    """GGUF: its quantizer can weigh columns by an importance matrix (llama.cpp's imatrix)."""
    fallback_bpw: float | None = None
    """GGUF k-quants: the bits per weight of a matrix whose rows are not divisible by 256,
    which llama.cpp stores in another type (Q5_0/Q5_1/Q8_0: measured, 5.5-8.5)."""

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None


# ggml block sizes (gguf-py GGML_QUANT_SIZES): Q8_0 34 B / 32, Q6_K 210 B / 256,
# Q5_K 176 B / 256, Q4_K 144 B / 256, Q4_0 18 B / 32. The _M mixes keep attn_v and half of
# ffn_down at Q6_K, which raises their average (llama.cpp quantize's table: 4.89 and 5.70 bpw
# on Llama-3-8B).
_K = frozenset
_GGUF = [
    QuantType("gguf", "f32", 32.0, "fp32", 2, 32, 0.0),
    QuantType("gguf", "f16", 16.0, "fp16", 2, 32, 0.0),
    QuantType("gguf", "bf16", 16.0, "bf16", 2, 32, 0.0),
    QuantType("gguf", "q8_0", 8.5, "int8", 2, 32, 1.0, weight_bits=8, ggml_types=_K({"Q8_0"})),
    QuantType("gguf", "q6_k", 6.5625, "int8", 2, 32, 2.0, weight_bits=6,
              ggml_types=_K({"Q6_K"}), importance=True, fallback_bpw=8.5),
    QuantType("gguf", "q5_k_m", 5.70, "int8", 2, 32, 2.0, weight_bits=5,
              ggml_types=_K({"Q5_K", "Q6_K"}), importance=True, fallback_bpw=6.0),
    QuantType("gguf", "q4_k_m", 4.89, "int8", 2, 32, 2.0, weight_bits=4,
              ggml_types=_K({"Q4_K", "Q6_K"}), importance=True, fallback_bpw=5.5),
    QuantType("gguf", "q4_0", 4.5, "int8", 2, 32, 1.5, weight_bits=4,
              ggml_types=_K({"Q4_0", "Q6_K"}), importance=True),
]
# onnxruntime: int8 of a causal LM is MatMulNBits 8-bit (an fp32 scale per block of 32), of an
# encoder dynamic int8 (a scale per channel); MatMulNBits int4 keeps an fp32 scale and a 4-bit
# zero point per block of 32 (the block size is a profile choice). See costmodel._weight_bytes.
# QDQ: per-channel int8/int4 weights with int8 or int16 activations (Qualcomm's 8a8w,
# 16a8w and 16a4w schemes for HTP).
_ONNX = [
    QuantType("onnx", "fp32", 32.0, "fp32", 4, 32, 0.0),
    QuantType("onnx", "fp16", 16.0, "fp16", 2, 16, 0.0),
    QuantType("onnx", "int8", 8.0, "int8", 4, 32, 1.0, weight_bits=8),
    QuantType("onnx", "int4", 4.0 + 36 / 32, "int8", 4, 32, 2.0, weight_bits=4),
    QuantType("onnx", "qdq_a8w8", 8.0, "int8", 1, 8, 0.0, static=True, weight_bits=8),
    QuantType("onnx", "qdq_a16w8", 8.0, "int16", 2, 16, 0.0, static=True, weight_bits=8),
    QuantType("onnx", "qdq_a16w4", 4.0, "int16", 2, 16, 1.0, static=True, weight_bits=4),
]

# The student's own HF folder (safetensors), as torch on CUDA runs it.
_HF = [
    QuantType("hf", "bf16", 16.0, "bf16", 2, 16, 0.0),
    QuantType("hf", "fp16", 16.0, "fp16", 2, 16, 0.0),
]

QUANT_TYPES: dict[tuple[str, str], QuantType] = {
    (q.format, q.name): q for q in _GGUF + _ONNX + _HF
}
FORMATS: tuple[str, ...] = ("gguf", "onnx", "hf")


@dataclass(frozen=True)
class Runtime:
    """One runtime a file can be deployed in and measured with."""

    name: str
    """As profiles, reports and ``--runtime`` name it."""
    format: str
    """The file format it loads: ``gguf``, ``onnx`` or ``hf`` (an HF folder)."""
    device: str
    """Where it runs: ``cpu``, ``gpu`` or ``npu``."""
    package: str
    """The Python module that must be importable for it to run here."""
    pip: str
    """How a user gets that module."""
    worker: str | None = None
    """The bench worker that times it (runtimes/bench_worker.py: llama.cpp, onnxruntime,
    torch); None: not timed on this machine (an NPU's, or a Metal GPU's)."""
    task: tuple = ()
    """Extra (key, value) pairs of the worker task (device, providers, offloaded layers)."""


# The order of a profile's `runtimes` is its preference; the first one's format is the
# deployment format the planner sizes for.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("llama.cpp", "gguf", "cpu", "llama_cpp", "llama-cpp-python", "llama.cpp"),
    Runtime("llama.cpp-cuda", "gguf", "gpu", "llama_cpp",
            "llama-cpp-python built with CMAKE_ARGS=-DGGML_CUDA=on", "llama.cpp",
            (("gpu_layers", -1),)),
    Runtime("llama.cpp-metal", "gguf", "gpu", "llama_cpp",
            "llama-cpp-python built with CMAKE_ARGS=-DGGML_METAL=on"),
    Runtime("onnxruntime-cpu", "onnx", "cpu", "onnxruntime", "onnxruntime", "onnxruntime"),
    Runtime("onnxruntime-cuda", "onnx", "gpu", "onnxruntime", "onnxruntime-gpu", "onnxruntime",
            (("providers", ("CUDAExecutionProvider", "CPUExecutionProvider")),)),
    Runtime("onnxruntime-qnn", "onnx", "npu", "onnxruntime_qnn", "onnxruntime-qnn"),
    Runtime("torch", "hf", "cpu", "torch", "torch", "torch"),
    Runtime("torch-cuda", "hf", "gpu", "torch", "a CUDA build of torch", "torch",
            (("device", "cuda"), ("dtype", "float16"), ("mode", "graphs"))),
)}

CPU_RUNTIME = {"gguf": "llama.cpp", "onnx": "onnxruntime-cpu", "hf": "torch"}
"""Each format's runtime on this machine's CPU: what bench measures a file in by default."""


def quant_type(fmt: str, name: str) -> QuantType:
    """Look up a quantization; raises KeyError with the valid names listed."""
    try:
        return QUANT_TYPES[(fmt, name)]
    except KeyError:
        valid = ", ".join(n for f, n in QUANT_TYPES if f == fmt) or "none"
        raise KeyError(f"unknown {fmt} quantization {name!r}; valid: {valid}") from None


def quant_names(fmt: str, *, floats: bool = True, static: bool | None = None) -> list[str]:
    """The quantizations of ``fmt`` in table order; ``floats=False``: quantized ones only;
    ``static``: only static QDQ (True) or only the others (False)."""
    return [q.name for q in QUANT_TYPES.values() if q.format == fmt
            and (floats or not q.is_float) and (static is None or q.static == static)]


SENTENCE_EMBEDDING = "sentence_embedding"

ONNX_INT4_AT_8_BITS = (r"down_proj|/v_proj/|/mlp/c_proj/|/layer\.\d+/output/dense/|"
                       r"/attention/self/value/")
"""An ONNX int4 file keeps the MatMuls whose node name matches this (and the output head) at
8 bits (quantize/onnx.py: sensitive_nodes); torch module ``a.b.c`` is node ``/a/b/c/MatMul``."""


# ggml types whose quantizer weighs the error of each column by an importance vector
IMPORTANCE_TYPES = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                              "Q6_K"})
