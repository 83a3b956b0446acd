import dataclasses
import subprocess
import sys

import pytest

from edgedistill.errors import PlanError, TeacherError
from edgedistill.plan import DEFAULT_SPEEDUP, PlanConfig, enumerate_candidates, plan
from edgedistill.profiles import load_profile
from edgedistill.teacher import load_teacher


def test_plan_is_pure_python():
    code = ("import sys, edgedistill.plan, edgedistill.cli; "
            "bad = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "qwen2-0.5b", "mistral-7b"])
def test_laptop_student_is_smaller_and_fits(teacher_dir, name):
    pl = plan(str(teacher_dir(name)), "laptop")
    t, s = pl.teacher.shape, pl.student.shape
    assert s.family == t.family and s.vocab_size == t.vocab_size and s.head_dim == t.head_dim
    assert s.total_params() < t.total_params()
    p = pl.student.prediction
    assert p.memory_gb <= load_profile("laptop").memory.budget_gb
    assert p.decode_tokens_per_s >= pl.requirements["decode_tokens_per_s"]
    assert p.prefill_ms <= pl.requirements["prefill_ms"]
    assert s.hidden_size % s.num_heads == 0 and s.num_heads % s.num_kv_heads == 0
    assert p.label == "uncalibrated"


def test_phone_npu_student_differs_and_respects_npu_constraints(teacher_dir):
    folder = str(teacher_dir("tinyllama-1.1b"))
    laptop, npu = plan(folder, "laptop"), plan(folder, "phone-npu")
    s = npu.student.shape
    assert s != laptop.student.shape
    assert s.total_params() < npu.teacher.shape.total_params()
    assert npu.format == "onnx" and npu.quant.startswith("qdq_")
    for d in (s.hidden_size, s.intermediate_size, s.q_dim):
        assert d % 64 == 0
    assert npu.student.prediction.memory_gb <= 3.0
    assert any("Static shapes" in line for line in npu.explanation)


def test_large_teacher_is_shrunk_to_fit_the_phone(teacher_dir):
    pl = plan(str(teacher_dir("mistral-7b")), "phone-npu")
    assert not pl.teacher_meets_targets
    assert any("memory" in f for f in pl.teacher_failures)
    assert pl.student.prediction.memory_gb <= 3.0
    assert pl.student.shape.total_params() < 0.5 * pl.teacher.shape.total_params()


def test_small_teacher_meets_targets_and_gets_the_default_speedup(teacher_dir):
    pl = plan(str(teacher_dir("qwen2-0.5b")), "consumer-gpu")
    assert pl.teacher_meets_targets
    assert "already meets" in pl.explanation[0]
    want = DEFAULT_SPEEDUP * pl.teacher_prediction.decode_tokens_per_s
    assert pl.student.prediction.decode_tokens_per_s >= want


def test_speedup_and_max_params_bound_the_choice(teacher_dir):
    folder = str(teacher_dir("tinyllama-1.1b"))
    fast = plan(folder, "laptop", PlanConfig(speedup=4))
    base = plan(folder, "laptop")
    assert fast.student.shape.total_params() < base.student.shape.total_params()
    capped = plan(folder, "laptop", PlanConfig(max_params=200_000_000))
    assert capped.student.shape.total_params() <= 200_000_000


def test_nothing_fits_says_which_constraint_and_by_how_much(teacher_dir):
    with pytest.raises(PlanError) as e:
        plan(str(teacher_dir("mistral-7b")), "laptop", PlanConfig(speedup=1000))
    msg = str(e.value)
    assert "even the smallest candidate" in msg and "decode" in msg and "x faster" in msg
    with pytest.raises(PlanError, match="below the smallest candidate"):
        plan(str(teacher_dir("tinyllama-1.1b")), "laptop", PlanConfig(max_params=1000))
    with pytest.raises(PlanError, match="not allowed by profile"):
        plan(str(teacher_dir("tinyllama-1.1b")), "laptop", PlanConfig(deploy="gguf:q2_k"))


def test_candidates_prefer_k_quant_rows(teacher_dir):
    t = load_teacher(teacher_dir("tinyllama-1.1b"))
    shapes = enumerate_candidates(t.shape, load_profile("laptop"))
    widths = {s.hidden_size for s in shapes}
    assert all(w % 256 == 0 for w in widths)
    assert all(s.intermediate_size % 256 == 0 for s in shapes)
    assert all(s.total_params() < t.shape.total_params() for s in shapes)


def test_default_teacher_is_the_bundled_minilm():
    pl = plan(None, "laptop")
    assert pl.teacher.shape.family == "bert" and pl.student.shape.family == "bert"
    assert pl.format == "onnx"  # sentence embedders deploy through onnxruntime
    assert pl.student.prediction.encoder_batch_ms <= pl.requirements["encoder_batch_ms"]
    assert pl.student.shape.total_params() < pl.teacher.shape.total_params()


def test_multilingual_e5_plans_an_xlm_roberta_student(teacher_dir):
    """xlm-roberta keeps its positions' offset (padding id + 1) and single token type; its
    250k-piece embedding table, not its layers, holds most of its parameters."""
    pl = plan(str(teacher_dir("multilingual-e5-small")), "laptop")
    t, s = pl.teacher.shape, pl.student.shape
    assert t.total_params() == 117_654_144 and t.max_tokens == 512
    assert s.family == "xlm-roberta" and s.num_layers < t.num_layers and s.max_tokens == 512
    cfg = pl.student_config
    assert (cfg["pad_token_id"], cfg["type_vocab_size"], cfg["max_position_embeddings"]) == \
        (1, 1, 514)
    assert pl.student.prediction.encoder_batch_ms <= pl.requirements["encoder_batch_ms"]


def test_all_distilroberta_plans_a_roberta_student(teacher_dir):
    """roberta: xlm-roberta's positions (from the padding id + 1), a 50k byte-level BPE
    vocabulary; the published 82.1M parameters (distilroberta-base with its pooler). Its
    width (768) puts the laptop's product target (200 ms a batch) out of reach of any
    student that keeps the teacher's embedding space: the plan says so and plans for the
    speedup over the teacher alone, where it used to refuse."""
    pl = plan(str(teacher_dir("all-distilroberta-v1")), "laptop")
    t, s = pl.teacher.shape, pl.student.shape
    assert t.total_params() == 82_118_400 and t.max_tokens == 512
    assert s.family == "roberta" and s.total_params() < t.total_params()
    assert pl.student_config["max_position_embeddings"] == 514
    req = pl.requirements["encoder_batch_ms"]
    assert req == pytest.approx(pl.teacher_prediction.encoder_batch_ms / 2) and req > 200
    assert pl.student.prediction.encoder_batch_ms <= req
    text = " ".join(pl.explanation)
    assert "reaches laptop's own targets" in text and "2x speedup over the teacher alone" in text
    assert "speed set by 2x the teacher" in text
    with pytest.raises(PlanError, match="even the smallest candidate"):  # 10x: out of reach
        plan(str(teacher_dir("all-distilroberta-v1")), "laptop", PlanConfig(speedup=10))


def test_multi_qa_distilbert_plans_a_distilbert_student(teacher_dir):
    """distilbert: sizes under its own config keys, no token types, no pooler: the published
    66,362,880 parameters; the student's config keeps DistilBERT's keys."""
    pl = plan(str(teacher_dir("multi-qa-distilbert-cos-v1")), "laptop")
    t, s = pl.teacher.shape, pl.student.shape
    assert t.total_params() == 66_362_880 and (t.num_layers, t.hidden_size) == (6, 768)
    assert s.family == "distilbert" and s.num_layers < t.num_layers
    cfg = pl.student_config
    assert cfg["n_layers"] == s.num_layers and cfg["dim"] == 768 and "hidden_size" not in cfg


def test_default_speedup_relaxes_with_a_note_when_out_of_reach():
    import dataclasses

    npu = load_profile("phone-npu")  # a device whose fixed per-call cost dominates the teacher
    slow_calls = dataclasses.replace(
        npu, cost_model=dataclasses.replace(npu.cost_model, call_overhead_us=5e6),
        latency_targets=dataclasses.replace(npu.latency_targets, encoder_batch_ms=1e5))
    pl = plan(None, slow_calls)
    assert any("out of reach" in line for line in pl.explanation)
    with pytest.raises(PlanError):
        plan(None, slow_calls, PlanConfig(speedup=2.0))


def test_teacher_errors(tmp_path):
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.bin").write_text("x")
    with pytest.raises(TeacherError, match=r"has no config.json \(it holds: weights.bin\)"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(TeacherError, match="not valid JSON"):
        load_teacher(tmp_path / "broken")


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(TeacherError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE"):
        load_teacher("some-org/some-model")


def test_hub_id_from_local_cache(tmp_path, monkeypatch):
    rev = "abc123" * 6 + "abcd"
    snap = tmp_path / "models--acme--tiny" / "snapshots" / rev
    snap.mkdir(parents=True)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text(rev)
    from conftest import REAL_CONFIGS, write_config
    write_config(snap, REAL_CONFIGS["tinyllama-1.1b"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = load_teacher("acme/tiny")
    assert t.shape.family == "llama" and t.path is None


def test_measured_speeds_correct_the_predictions_around_them(teacher_dir):
    """plan --verify's timings (PlanConfig.measured): a timed shape is judged on its own
    figures, the others on the predictor's corrected by the timed shapes around them (the
    ratio interpolated in the log of the predicted figure, flat beyond the ends), and only
    for the deployment they were timed in."""
    import math

    from edgedistill.plan import measurement, with_measurements
    from edgedistill.plan.predictor import predictor_for
    from edgedistill.profiles import local_profile

    shapes = sorted(enumerate_candidates(load_teacher(str(teacher_dir("tinyllama-1.1b"))).shape,
                                         local_profile(2)), key=lambda s: s.total_params())
    base = predictor_for(local_profile(2))
    small, mid, big = shapes[0], shapes[len(shapes) // 2], shapes[-1]
    speed = {s: base(s, "gguf", "q4_k_m").decode_tokens_per_s for s in (small, mid, big)}
    assert speed[small] > speed[mid] > speed[big]
    rec = [measurement(small, "gguf", "q4_k_m", {"decode_tokens_per_s": speed[small] * 0.5}),
           measurement(big, "gguf", "q4_k_m", {"decode_tokens_per_s": speed[big] * 1.0})]
    fixed = with_measurements(base, rec, "gguf", "q4_k_m")
    p = fixed(small, "gguf", "q4_k_m")
    assert p.label == "measured" and p.decode_tokens_per_s == pytest.approx(speed[small] * 0.5)
    assert not p.extrapolated
    m = fixed(mid, "gguf", "q4_k_m")
    assert "corrected by measurement" in m.label
    # between the two timed shapes: between their ratios, by where its prediction lies
    w = math.log(speed[mid] / speed[big]) / math.log(speed[small] / speed[big])
    assert m.decode_tokens_per_s == pytest.approx(speed[mid] * 0.5 ** w)
    assert 0.5 < m.decode_tokens_per_s / speed[mid] < 1.0
    # prefill was not measured: left as predicted
    assert m.prefill_ms == pytest.approx(base(mid, "gguf", "q4_k_m").prefill_ms)
    # another quantization is another file: untouched
    assert fixed(mid, "gguf", "q8_0") == base(mid, "gguf", "q8_0")


def test_a_plan_on_measured_speeds_moves_off_a_choice_that_measured_too_slow(teacher_dir):
    from edgedistill.plan import measurement

    from edgedistill.profiles import resolve_profile

    folder = str(teacher_dir("tinyllama-1.1b"))
    cfg = PlanConfig(speedup=2.0, deploy="gguf:q4_k_m")
    local = resolve_profile("local")  # measured once: each resolution measures the machine anew
    first = plan(folder, local, cfg)
    s, t = first.student, first.teacher
    # the teacher measured as predicted, the choice 10% slower than it must be
    need = first.requirements["decode_tokens_per_s"]
    rec = (measurement(t.shape, "gguf", "q4_k_m",
                       {"decode_tokens_per_s": first.teacher_prediction.decode_tokens_per_s}),
           measurement(s.shape, "gguf", "q4_k_m", {"decode_tokens_per_s": need * 0.9}))
    again = plan(folder, local, dataclasses.replace(cfg, measured=rec, top=400))
    assert again.student.shape != s.shape
    assert again.student.shape.non_embedding_params() < s.shape.non_embedding_params()
    assert again.requirements["decode_tokens_per_s"] == pytest.approx(need)
    assert again.student.prediction.decode_tokens_per_s >= need
    old = next(c for c in again.table if c.shape == s.shape)  # turned down, on its timing
    assert old.prediction.label == "measured" and any("decode" in f for f in old.failures)
    assert any("plan --verify" in line for line in again.explanation)
    # speeds measured here say nothing about another device's
    with pytest.raises(PlanError, match="measured on this machine"):
        plan(folder, "laptop", dataclasses.replace(cfg, measured=rec))
