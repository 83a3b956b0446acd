"""Parameter counts and student configs against the real HF implementations."""
import dataclasses

import pytest

from edgedistill.arch import ENCODER_FAMILIES, config_for_shape, shape_from_config
from edgedistill.errors import TeacherError

from conftest import REAL_CONFIGS, TINY_CONFIGS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _build(cfg: dict):
    config = transformers.AutoConfig.for_model(**cfg)
    if cfg["model_type"] in ENCODER_FAMILIES:
        return transformers.AutoModel.from_config(config)  # with the pooler
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_param_count_matches_torch(name):
    cfg = TINY_CONFIGS[name]
    model = _build(cfg)
    expected = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert shape_from_config(cfg).total_params() == expected


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_student_config_builds_the_planned_shape(name):
    cfg = TINY_CONFIGS[name]
    t = shape_from_config(cfg)
    heads = max(1, t.num_heads // 2)
    s = dataclasses.replace(t, num_layers=1, num_heads=heads, hidden_size=heads * t.head_dim,
                            num_kv_heads=heads if t.is_encoder else max(1, t.num_kv_heads // 2),
                            intermediate_size=t.intermediate_size // 2)
    student_cfg = config_for_shape(cfg, s)
    model = _build(student_cfg)
    assert sum(p.numel() for p in model.parameters()) == s.total_params()
    assert shape_from_config(student_cfg) == s
    assert student_cfg["vocab_size"] == cfg["vocab_size"]


def test_qwen2_student_cuts_depth_dependent_fields():
    cfg = dict(REAL_CONFIGS["qwen2-0.5b"], layer_types=["full_attention"] * 24)
    s = dataclasses.replace(shape_from_config(cfg), num_layers=6)
    out = config_for_shape(cfg, s)
    assert out["max_window_layers"] == 6 and len(out["layer_types"]) == 6
    assert transformers.AutoConfig.for_model(**out).num_hidden_layers == 6


def test_minilm_shape():
    from edgedistill.teacher import load_teacher

    t = load_teacher(None)
    assert t.shape.family == "bert" and t.shape.num_layers == 6 and t.shape.hidden_size == 384
    assert abs(t.shape.total_params() - 22.7e6) < 0.1e6  # 22.7M, as published


def test_unsupported_and_incomplete_configs():
    with pytest.raises(TeacherError, match="unsupported architecture model_type='gpt2'") as e:
        shape_from_config({"model_type": "gpt2"})
    assert "llama" in e.value.hint
    with pytest.raises(TeacherError, match="no 'hidden_size'"):
        shape_from_config({"model_type": "llama"})
