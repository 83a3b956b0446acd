"""Hub ids (ORG/NAME[@REVISION]) wherever a folder works, from a Hugging Face cache laid out by
the test (models--ORG--NAME/snapshots/REV, refs/main), offline: no network is used."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.errors import TeacherError
from edgedistill.teacher import load_teacher

REV = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def hub_cache(trained_llama, tmp_path_factory):
    """A hub cache holding REPO at revision REV (refs/main points at it), as huggingface_hub
    lays one out; plus a repo that has only its config cached."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    snap = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / REV
    shutil.copytree(trained_llama, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(REV)
    return cache


def _env(cache: Path) -> dict:
    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")


def _cli(cache: Path, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgedistill", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(cache))


def test_a_hub_id_resolves_from_the_cache_offline(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan_only = load_teacher(REPO)  # planning: the config alone
    assert plan_only.path is None and plan_only.shape.family == "llama"
    t = load_teacher(REPO, weights=True)
    assert t.path.name == REV and (t.path / "model.safetensors").is_file()
    assert load_teacher(f"{REPO}@{REV}", weights=True).path == t.path
    with pytest.raises(TeacherError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE"):
        load_teacher("nobody/nothing", weights=True)
    with pytest.raises(TeacherError, match="not in the Hugging Face cache") as e:
        load_teacher(f"{REPO}@v9.9", weights=True)  # a revision the cache does not hold
    assert "huggingface-cli download" in e.value.hint
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher("./no/such/folder")


@pytest.mark.slow
def test_plan_distill_and_the_whole_chain_take_a_hub_id(hub_cache, tmp_path):
    r = _cli(hub_cache, "plan", "--teacher", REPO, "--target", "laptop", "--speedup", "1",
             "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["student"]["shape"]["family"] == "llama"

    r = _cli(hub_cache, "distill", "--teacher", REPO, "--out", str(tmp_path / "d"), "--steps",
             "2", "--batch-size", "2", "--seq-len", "32", "--speedup", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "d" / "student" / "model.safetensors").is_file()

    out = tmp_path / "run"
    r = _cli(hub_cache, "export", "--teacher", f"{REPO}@{REV}", "--out", str(out), "--steps",
             "2", "--batch-size", "2", "--seq-len", "32", "--quant", "q8_0", "--new-tokens",
             "4", "--repeats", "1", "--speedup", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "report.json").read_text())
    teacher_rows = [a for a in doc["artifacts"] if a["role"] == "teacher"]
    assert teacher_rows and all(REV in a["model_dir"] for a in teacher_rows)

    r = _cli(hub_cache, "plan", "--teacher", "nobody/nothing")
    assert r.returncode == 2 and "HF_HUB_OFFLINE is set" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
