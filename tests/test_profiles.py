import re
from pathlib import Path

import pytest
import yaml

from edgedistill.errors import ProfileError
from edgedistill.formats import RUNTIMES
from edgedistill.profiles import (PROFILE_DIR, list_profiles, load_profile, load_profile_file,
                                  profile_from_dict, profile_names)

REQUIRED = {"laptop", "consumer-gpu", "phone-npu"}


def test_every_shipped_profile_loads_and_is_consistent():
    names = profile_names()
    assert REQUIRED <= set(names)
    assert len(names) >= 6
    for p in list_profiles():
        assert p.kind in ("cpu", "gpu", "npu")
        assert p.memory.budget_gb > 0 and p.memory.bandwidth_gbps > 0
        assert p.primary_format in p.formats
        assert RUNTIMES[p.primary_runtime].device == p.kind, p.name
        assert p.latency_targets.decode_tokens_per_s > 0
        assert 0 < p.cost_model.bandwidth_efficiency <= 1


def test_phone_npu_is_static_and_qdq_only():
    p = load_profile("phone-npu")
    assert p.kind == "npu" and p.constraints.static_shapes
    assert p.constraints.prefill_chunk
    assert all(q.startswith("qdq_") for q in p.formats["onnx"])
    assert set(p.formats) == {"onnx"}


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_number_has_a_source_comment(path):
    """Each line whose value is a number carries a '# source' comment."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if re.search(r":\s*-?[0-9][0-9.]*\s*$", code) or re.search(r":\s*(true|false)\s*$", code):
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, \
                f"{path.name}:{i} has no source comment: {line.strip()}"


def _laptop_dict():
    return yaml.safe_load((PROFILE_DIR / "laptop.yaml").read_text())


def _write(tmp_path, data) -> Path:
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_user_yaml_via_path(tmp_path):
    d = _laptop_dict()
    d["name"] = "my-box"
    d["memory"]["budget_gb"] = 2.5
    prof = load_profile(str(_write(tmp_path, d)))
    assert prof.name == "my-box" and prof.memory.budget_gb == 2.5
    assert prof.source.endswith("mine.yaml")


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d.update(colour="blue"), "colour", "not a known key"),
    (lambda d: d["memory"].update(bandwith_gbps=3), "memory.bandwith_gbps", "not a known key"),
    (lambda d: d.pop("threads"), "threads", "is missing"),
    (lambda d: d["memory"].pop("budget_gb"), "memory.budget_gb", "is missing"),
    (lambda d: d.update(threads="eight"), "threads", "must be a whole number"),
    (lambda d: d.update(threads=8.5), "threads", "must be a whole number"),
    (lambda d: d["memory"].update(bandwidth_gbps="fast"), "memory.bandwidth_gbps", "must be a number"),
    (lambda d: d["constraints"].update(static_shapes="yes"), "constraints.static_shapes", "true/false"),
    (lambda d: d.update(kind="tpu"), "kind", "must be one of"),
    (lambda d: d.update(runtimes=["tensorrt"]), "runtimes[0]", "unknown runtime"),
    (lambda d: d["formats"].update(gguf=["q3_xxs"]), "formats.gguf", "unknown quantization"),
    (lambda d: d["memory"].update(budget_gb=-1), "memory.budget_gb", "positive"),
    (lambda d: d.update(runtimes="llama.cpp"), "runtimes", "list"),
    (lambda d: d["encoder_formats"].update(gguf=["f32"]), "encoder_formats.gguf",
     "does not allow"),
])
def test_strict_validation_names_file_field_and_fix(tmp_path, mutate, field, words):
    d = _laptop_dict()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(ProfileError) as e:
        load_profile_file(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{field}'" in msg and words in msg
    assert e.value.hint and e.value.exit_code == 2


def test_encoders_get_the_profiles_encoder_formats_unless_asked_for_more():
    from edgedistill.export import ExportConfig, resolve_formats

    prof = load_profile("laptop")
    enc = resolve_formats(prof, ExportConfig(), encoder=True)
    assert enc == prof.encoder_formats and enc != prof.formats
    assert resolve_formats(prof, ExportConfig()) == prof.formats  # causal LMs: all of them
    asked = resolve_formats(prof, ExportConfig(quants=("q4_k_m", "int8")), encoder=True)
    assert asked == {"gguf": ["q4_k_m"], "onnx": ["int8"]}
    d = _laptop_dict()
    d["encoder_formats"] = {"onnx": ["int8"]}  # a format it leaves out, asked for by name
    mine = profile_from_dict(d, "mine.yaml")
    assert resolve_formats(mine, ExportConfig(), encoder=True) == {"onnx": ["int8"]}
    assert resolve_formats(mine, ExportConfig(formats=("gguf",)), encoder=True) == \
        {"gguf": prof.formats["gguf"]}


def test_static_shapes_need_a_prefill_chunk():
    d = yaml.safe_load((PROFILE_DIR / "phone-npu.yaml").read_text())
    d["constraints"].pop("prefill_chunk")
    with pytest.raises(ProfileError, match="prefill_chunk"):
        profile_from_dict(d, "npu.yaml")


def test_malformed_yaml_and_unknown_target(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmemory: [1, 2\n")
    with pytest.raises(ProfileError, match=r"bad.yaml: malformed YAML at line"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="unknown target 'nosuch'") as e:
        load_profile("nosuch")
    assert "laptop" in e.value.hint and "local" in e.value.hint
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "absent.yaml"))


def test_extra_profile_dir(tmp_path, monkeypatch):
    d = _laptop_dict()
    d["name"] = "edge-box"
    (tmp_path / "edge-box.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("EDGEDISTILL_PROFILES", str(tmp_path))
    assert "edge-box" in profile_names()
    assert load_profile("edge-box").name == "edge-box"
