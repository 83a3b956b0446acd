"""Roofline cost model: memory, decode speed, prefill time and encoder batch time of a shape
deployed at a quantization on a device profile.

    decode token  = max(bytes read / (BW * bw_eff), FLOPs / (peak * c_eff))
                    + layers * layer_overhead + call_overhead
    prefill       = max(FLOPs / (peak * c_eff), weight bytes / (BW * bw_eff)) per call
                    + calls * (layers * layer_overhead + call_overhead)

The coefficients (bw_eff, c_eff, overheads) are a :class:`~edgedistill.profiles.CostModel`;
the profile carries defaults, and a calibration from measurements replaces them. Every figure
this module returns is a prediction and is labelled so. Pure Python.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgedistill.arch import ModelShape
from edgedistill.formats import QuantType, quant_type
from edgedistill.profiles import CostModel, DeviceProfile

RUNTIME_BUFFER_BYTES = 64 * 2**20
"""Fixed runtime overhead (code, graph, scratch) counted in every memory prediction."""


def matrix_bpw(q: QuantType, row: int, block: int = 32) -> float:
    """Bits per weight that ``q`` really stores for a matrix whose rows have ``row`` entries.
    llama.cpp falls back when a row (the matrix's input dimension) is not a multiple of the
    block: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (QuantType.fallback_bpw), and F16 when
    not even 32 divides it (llama-quant.cpp, llama_tensor_get_type)."""
    if q.fallback_bpw is not None and row % 256:
        return q.fallback_bpw if row % 32 == 0 else 16.0
    if q.format == "gguf" and not q.is_float and row % 32:
        return 16.0
    if q.format == "onnx" and q.name == "int4":
        return 4.0 + 36 / block if row % block == 0 else 32.0  # MatMulNBits skips the matrix
    return q.bits_per_weight


def fallback_matrices(s: ModelShape, q: QuantType, block: int = 32) -> tuple[int, float]:
    """(weights, bytes) of one layer's matrices that ``q`` cannot store in its own type
    because their rows (input dimension) are not multiples of its block: llama.cpp writes
    them in a wider type (Q4_K -> Q5_0, matrix_bpw), which its kernels also run at another
    speed (measured: h640 and h896 Q4_K_M prefills 14-18% slower than a fit that did not
    know). (0, 0.0) for float formats and shapes every block divides."""
    if q.is_float:
        return 0, 0.0
    h, f, qd, kv = s.hidden_size, s.intermediate_size, s.q_dim, s.kv_dim
    mats = [(h, h * qd + 2 * h * kv), (qd, qd * h)]  # q, k, v read h-rows; o reads q_dim
    mats += [(h, h * f), (f, f * h)] if s.is_encoder else [(h, 2 * h * f), (f, f * h)]
    n, bits = 0, 0.0
    for row, params in mats:
        bpw = matrix_bpw(q, row, block)
        if bpw != q.bits_per_weight:
            n, bits = n + params, bits + params * bpw
    return n, bits / 8


def row_alignment(shape: ModelShape) -> int:
    """Largest of 256/64/32 that divides every matrix row (hidden, FFN, q_dim)."""
    for m in (256, 64, 32):
        if all(d % m == 0 for d in (shape.hidden_size, shape.intermediate_size, shape.q_dim)):
            return m
    return 1


@dataclass(frozen=True)
class Prediction:
    """Predicted figures for one shape at one format:quant on one profile."""

    format: str
    quant: str
    weights_gb: float
    kv_cache_gb: float
    memory_gb: float
    """Weights + KV cache at the profile's context + runtime buffers."""
    decode_tokens_per_s: float | None
    """Causal LMs: one decode step per token at the end of the prompt. For GGUF this is
    llama.cpp's bare decode (llama_decode, as llama-bench's tg times it), not what a Python
    caller sees: that is ``generate_tokens_per_s``."""
    prefill_ms: float | None
    prefill_tokens_per_s: float | None
    encoder_batch_ms: float | None
    sentences_per_s: float | None
    flops_per_token: float
    decode_bytes_per_token: float
    fallback_note: str
    """Non-empty when rows force a quantization to fall back to a wider type."""
    label: str = "uncalibrated"
    """``uncalibrated`` (this roofline), ``calibrated`` or ``predicted`` (plan/predictor.py)."""
    basis: str = "roofline with the profile's default coefficients"
    extrapolated: bool = False
    """True when a calibrated (or scaled) figure is for a shape outside the calibration's
    measured design (parameters, layers or width beyond the shapes it timed)."""
    generate_tokens_per_s: float | None = None
    """GGUF: what a llama-cpp-python user sees, tokens/s of ``Llama.generate``'s loop (the
    decode step plus its sampler chain and Python, ``cost_model.generate_token_us`` a token
    until a calibration measures it); None for other formats."""

    def to_dict(self) -> dict:
        return asdict(self)


def _weight_bytes(s: ModelShape, q: QuantType, block: int) -> tuple[float, float, str]:
    """(bytes of all weights, bytes of the matrices one decode step streams, fallback note)."""
    h, f, qd = s.hidden_size, s.intermediate_size, s.q_dim
    bpw_h, bpw_f, bpw_q = (matrix_bpw(q, r, block) for r in (h, f, qd))
    bpw_v, bpw_emb, bpw_out = bpw_h, bpw_h, bpw_h
    # llama.cpp stores the output matrix in Q6_K whatever the quantized type (Q8_0 stays
    # Q8_0), and in Q8_0 when its rows are not multiples of 256 (llama-quant.cpp)
    if q.format == "gguf" and q.bits_per_weight < 16 and q.name != "q8_0" and not s.is_encoder:
        bpw_out = 8.5 if h % 256 else 6.5625
    # onnxruntime (quantize/onnx.py): MatMulNBits leaves the embedding table float; its 8-bit
    # blocks of 32 keep an fp32 scale each (9 bits a weight). int8 of an encoder is dynamic
    # int8 with the FFN down projections float; int4 keeps the output head, the value and the
    # FFN down projections at 8 bits.
    if q.format == "onnx" and q.name == "int8" and s.is_encoder:
        bpw_f = 32.0
    elif q.format == "onnx" and q.name == "int8":
        bpw_h = bpw_f = bpw_q = bpw_v = bpw_out = 9.0
        bpw_emb = 32.0
    elif q.format == "onnx" and q.name == "int4":
        bpw_f = bpw_v = bpw_out = 9.0
        bpw_emb = 32.0
    attn = (h * qd + h * s.kv_dim) * bpw_h + h * s.kv_dim * bpw_v + qd * h * bpw_q
    mlp = (2 * h * f * bpw_h + h * f * bpw_f) if not s.is_encoder else (h * f * bpw_h + f * h * bpw_f)
    layer_bits = s.num_layers * (attn + mlp + 32 * s.layer_vector_params())
    emb_bits = s.embedding_params() * bpw_emb
    head_bits = s.head_params() * bpw_out
    if s.tie_embeddings and not s.is_encoder:
        if bpw_emb == 32.0:
            bpw_out = 32.0  # the ONNX head multiplies by the float table's transpose
        emb_bits = s.embedding_params() * bpw_out  # the shared matrix is the output one
    total = (layer_bits + emb_bits + head_bits) / 8
    # One decode step reads every layer matrix, the output matrix, and one embedding row.
    out_bits = s.output_matrix_params() * bpw_out
    streamed = (layer_bits + out_bits + h * bpw_emb) / 8
    note = ""
    if q.format == "gguf" and (bpw_h, bpw_f, bpw_q) != (q.bits_per_weight,) * 3:
        bad = sorted({r for r, b in ((h, bpw_h), (f, bpw_f), (qd, bpw_q))
                      if b != q.bits_per_weight})
        note = (f"rows of {bad} are not multiples of the {q.name} block; "
                "llama.cpp stores those matrices in a wider type")
    return total, streamed, note


def attention_flops(s: ModelShape, tokens: int, context: int, causal: bool) -> float:
    """Scores (QK^T) and weighted sum (AV) for ``tokens`` queries over ``context`` keys:
    2 * 2 * q_dim per (query, key) pair, per layer."""
    pairs = tokens * context - (tokens * (tokens - 1) / 2 if causal else 0)
    return 4 * s.num_layers * s.q_dim * pairs


def layer_flops(s: ModelShape, tokens: int, context: int, causal: bool) -> float:
    """FLOPs of the transformer layers for ``tokens`` new tokens attending to ``context``."""
    return 2 * s.num_layers * s.layer_matrix_params() * tokens + attention_flops(
        s, tokens, context, causal)


def encoder_elementwise_bytes(s: ModelShape, seq: int, batch: int) -> float:
    """Activation traffic of an encoder batch's element-wise work (layer norms, GELU, residual
    adds, softmax): about 12 hidden-wide and 4 FFN-wide fp32 passes per token and layer, and 3
    passes over the attention scores."""
    tokens = batch * seq
    return s.num_layers * (tokens * (12 * s.hidden_size + 4 * s.intermediate_size)
                           + 3 * batch * s.num_heads * seq * seq) * 4


def encoder_compute_s(shape: ModelShape, q: QuantType, seq: int, batch: int, peak: float,
                      vec_peak: float, bw: float, streamed: float) -> float:
    """Seconds of one encoder batch, before fixed overheads.

    Matrix products run at the quantization's compute peak, except those that stay float: the
    attention scores (QK^T, AV) always, and the FFN down projections of ONNX int8 (see
    ``_weight_bytes``). Element-wise work moves activations through memory
    (``encoder_elementwise_bytes``)."""
    L, h, f = shape.num_layers, shape.hidden_size, shape.intermediate_size
    tokens = batch * seq
    scores = attention_flops(shape, seq, seq, causal=False) * batch
    elementwise = encoder_elementwise_bytes(shape, seq, batch)
    float_mm = 0.0
    if q.format == "onnx" and q.name == "int8":
        float_mm = 2 * L * h * f * tokens
        # dynamic quantization: each quantized product's input is scanned and quantized, and
        # its int32 output rescaled to float (q/k/v share an input): ~14 h + 2 f passes
        elementwise += L * tokens * (14 * h + 2 * f) * 4
        # onnxruntime's dynamic int8 (MatMulInteger) ran the MiniLM teacher only 1.7x faster
        # than fp32 here (148.6 vs 252.9 ms per batch of 32, 2 threads, `edgedistill export
        # --target laptop`), far from the VNNI peak: count its products at 1.7x the fp32 rate
        # until a calibration replaces it
        peak = min(peak, 1.7 * vec_peak)
    quant_mm = 2 * L * shape.layer_matrix_params() * tokens - float_mm
    if q.compute_dtype == "fp32":
        quant_mm, float_mm = 0.0, quant_mm + float_mm
    compute = quant_mm / peak + (float_mm + scores) / vec_peak
    return max(compute, streamed / bw) + elementwise / bw


def generate_overhead_s(c: CostModel, shape: ModelShape) -> float:
    """Seconds a token that llama-cpp-python's generate loop adds to llama.cpp's step."""
    return (c.generate_token_us + c.generate_vocab_us * shape.vocab_size / 1e3) * 1e-6


def predict(shape: ModelShape, profile: DeviceProfile, fmt: str, quant: str,
            coeffs: CostModel | None = None) -> Prediction:
    """Predict memory and latency of ``shape`` as ``fmt:quant`` on ``profile``."""
    q = quant_type(fmt, quant)
    c = coeffs or profile.cost_model
    block = profile.constraints.int4_block_size
    weights, streamed, note = _weight_bytes(shape, q, block)
    bw = profile.memory.bandwidth_gbps * 1e9 * c.bandwidth_efficiency
    peak = profile.peak_tflops(q.compute_dtype) * 1e12 * c.compute_efficiency
    vec_peak = profile.peak_tflops("fp32") * 1e12 * c.compute_efficiency
    layer_s = shape.num_layers * c.layer_overhead_us * 1e-6
    call_s = c.call_overhead_us * 1e-6
    lt = profile.latency_targets
    n_weights = shape.num_layers * shape.layer_matrix_params() + shape.output_matrix_params()

    def weights_pass(tokens: int, context: int, causal: bool, logits_tokens: int) -> float:
        flops = (layer_flops(shape, tokens, context, causal)
                 + 2 * shape.output_matrix_params() * logits_tokens)
        dequant = q.dequant_ops_per_weight * n_weights
        return max(flops / peak + dequant / vec_peak, streamed / bw)

    if shape.is_encoder:
        seq, batch = lt.encoder_seq_len, lt.encoder_batch
        act = batch * seq * (4 * shape.hidden_size + shape.intermediate_size) * 4
        scores = batch * shape.num_heads * seq * seq * 4
        memory = weights + act + scores + RUNTIME_BUFFER_BYTES
        flops = layer_flops(shape, seq, seq, causal=False) * batch
        t = encoder_compute_s(shape, q, seq, batch, peak, vec_peak, bw, streamed) + layer_s + call_s
        if q.format == "onnx":  # what onnxruntime spends beyond the products and the traffic
            t += batch * seq * (c.encoder_token_us
                                + shape.num_layers * c.encoder_layer_token_us) * 1e-6
        return Prediction(fmt, quant, weights / 1e9, 0.0, memory / 1e9, None, None, None,
                          t * 1e3, batch / t, flops / (batch * seq), streamed, note)

    ctx = profile.context_length
    kv_elem = shape.kv_cache_elements(ctx)
    kv_bytes = kv_elem * q.kv_bytes
    # Prefill scratch: activations and attention scores of one prompt chunk, plus its logits.
    chunk = profile.constraints.prefill_chunk or min(lt.prompt_tokens, 512)
    scratch = chunk * (4 * shape.hidden_size + 2 * shape.intermediate_size
                       + shape.vocab_size) * 4 + chunk * min(ctx, 4096) * shape.num_heads * 4
    memory = weights + kv_bytes + scratch + RUNTIME_BUFFER_BYTES

    # Decode one token at the end of a prompt: read all streamed weights and the KV cache.
    context = lt.prompt_tokens
    kv_read = shape.kv_cache_elements(context) * q.kv_bytes
    flops_tok = layer_flops(shape, 1, context, causal=True) + 2 * shape.output_matrix_params()
    t_mem = (streamed + kv_read) / bw
    t_cmp = flops_tok / peak + q.dequant_ops_per_weight * n_weights / vec_peak
    t_tok = max(t_mem, t_cmp) + layer_s + call_s

    # Prefill of the prompt, in fixed chunks on static-shape devices.
    p = lt.prompt_tokens
    if profile.constraints.static_shapes:
        step = profile.constraints.prefill_chunk
        calls = math.ceil(p / step)
        t_pre = sum(weights_pass(step, (i + 1) * step, True, 1) for i in range(calls))
    else:
        calls = 1
        t_pre = weights_pass(p, p, True, 1)
    t_pre += calls * (layer_s + call_s)
    gen = (1 / (t_tok + generate_overhead_s(c, shape)) if q.format == "gguf" else None)
    return Prediction(fmt, quant, weights / 1e9, kv_bytes / 1e9, memory / 1e9, 1 / t_tok,
                      t_pre * 1e3, p / t_pre, None, None, flops_tok, streamed + kv_read, note,
                      generate_tokens_per_s=gen)
