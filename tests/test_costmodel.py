import dataclasses

from edgedistill.arch import shape_from_config
from edgedistill.formats import quant_type
from edgedistill.plan.costmodel import matrix_bpw, predict, row_alignment
from edgedistill.profiles import load_profile

from conftest import REAL_CONFIGS

LLAMA = shape_from_config(REAL_CONFIGS["tinyllama-1.1b"])
LAPTOP = load_profile("laptop")


def test_f16_weights_are_two_bytes_per_param():
    p = predict(LLAMA, LAPTOP, "gguf", "f16")
    assert abs(p.weights_gb * 1e9 - 2 * LLAMA.total_params()) / (2 * LLAMA.total_params()) < 0.01


def test_kv_cache_size():
    p = predict(LLAMA, LAPTOP, "gguf", "f16")
    # 22 layers x (K+V) x 4 kv heads x 64 x 4096 ctx x 2 bytes
    assert abs(p.kv_cache_gb * 1e9 - 22 * 2 * 256 * 4096 * 2) < 1


def test_fewer_bits_decode_faster_and_use_less_memory():
    speeds = [predict(LLAMA, LAPTOP, "gguf", q) for q in ("f16", "q8_0", "q4_k_m")]
    assert speeds[0].memory_gb > speeds[1].memory_gb > speeds[2].memory_gb
    assert speeds[0].decode_tokens_per_s < speeds[1].decode_tokens_per_s < speeds[2].decode_tokens_per_s


def test_smaller_models_are_faster_and_more_bandwidth_is_faster():
    small = dataclasses.replace(LLAMA, num_layers=6)
    a, b = predict(LLAMA, LAPTOP, "gguf", "q4_k_m"), predict(small, LAPTOP, "gguf", "q4_k_m")
    assert b.decode_tokens_per_s > a.decode_tokens_per_s and b.prefill_ms < a.prefill_ms
    fast = dataclasses.replace(LAPTOP, memory=dataclasses.replace(LAPTOP.memory, bandwidth_gbps=120))
    assert predict(LLAMA, fast, "gguf", "q4_k_m").decode_tokens_per_s > a.decode_tokens_per_s


def test_k_quant_fallback_on_unaligned_rows():
    q = quant_type("gguf", "q4_k_m")
    assert matrix_bpw(q, 2048) == q.bits_per_weight
    assert matrix_bpw(q, 384) == 5.5  # Q4_K -> Q5_0 when rows are not multiples of 256
    assert matrix_bpw(q, 100) == 16.0
    odd = dataclasses.replace(LLAMA, hidden_size=1920, num_heads=30, num_kv_heads=5)
    assert row_alignment(odd) == 128 or row_alignment(odd) == 64
    p = predict(odd, LAPTOP, "gguf", "q4_k_m")
    assert "not multiples" in p.fallback_note


def test_static_shape_prefill_runs_in_chunks():
    npu = load_profile("phone-npu")
    p = predict(LLAMA, npu, "onnx", "qdq_a16w8")
    assert p.prefill_ms > 0 and p.decode_tokens_per_s > 0 and p.label == "uncalibrated"


def test_onnx_encoder_overheads_add_per_token_and_per_token_layer_time():
    """The laptop's ONNX encoder terms (fitted by benchmarks/encoder_shapes.py) add
    batch x seq x (token_us + layers x layer_token_us) to an ONNX encoder's batch, nothing to a
    GGUF one, and so shrink the speedup a shallower student is predicted, as measured."""
    cfg = {"model_type": "bert", "hidden_size": 384, "intermediate_size": 1536,
           "num_hidden_layers": 6, "num_attention_heads": 12, "vocab_size": 30522,
           "max_position_embeddings": 512, "type_vocab_size": 2}
    teacher = shape_from_config(cfg)
    student = shape_from_config(dict(cfg, num_hidden_layers=3, intermediate_size=1024))
    c = LAPTOP.cost_model
    assert c.encoder_token_us > 0 and c.encoder_layer_token_us > 0
    bare = dataclasses.replace(LAPTOP, cost_model=dataclasses.replace(
        c, encoder_token_us=0.0, encoder_layer_token_us=0.0))
    lt = LAPTOP.latency_targets
    tokens = lt.encoder_batch * lt.encoder_seq_len
    for shape in (teacher, student):
        extra = (predict(shape, LAPTOP, "onnx", "int8").encoder_batch_ms
                 - predict(shape, bare, "onnx", "int8").encoder_batch_ms)
        want = tokens * (c.encoder_token_us + shape.num_layers * c.encoder_layer_token_us) / 1e3
        assert abs(extra - want) < 1e-6 * want
        assert (predict(shape, LAPTOP, "gguf", "q8_0").encoder_batch_ms
                == predict(shape, bare, "gguf", "q8_0").encoder_batch_ms)

    def speedup(p):
        return (predict(teacher, p, "onnx", "int8").encoder_batch_ms
                / predict(student, p, "onnx", "int8").encoder_batch_ms)
    assert speedup(LAPTOP) < speedup(bare)
