import json
import subprocess
import sys

import pytest

from edgedistill import cli

from conftest import REAL_CONFIGS, write_config


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgedistill", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_profiles_json_and_table():
    r = run("profiles", "--json")
    assert r.returncode == 0, r.stderr
    names = {p["name"] for p in json.loads(r.stdout)["profiles"]}
    assert {"laptop", "consumer-gpu", "phone-npu"} <= names
    r = run("profiles")
    assert r.returncode == 0 and "phone-npu" in r.stdout and "static" in r.stdout


def test_plan_json_contract(tmp_path):
    folder = write_config(tmp_path / "tl", REAL_CONFIGS["tinyllama-1.1b"])
    r = run("plan", "--teacher", str(folder), "--target", "laptop", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    t, s = doc["teacher"], doc["student"]
    assert s["params"] < t["params"]
    for key in ("memory_gb", "decode_tokens_per_s", "prefill_ms"):
        assert s["predicted"][key] > 0 and t["predicted"][key] > 0
    assert s["predicted"]["label"] == "uncalibrated"
    assert s["predicted"]["memory_gb"] <= 4.0
    assert s["config"]["model_type"] == "llama" and t["config"]["num_hidden_layers"] == 22
    assert s["config"]["num_hidden_layers"] == s["shape"]["num_layers"]
    assert doc["candidates"] and doc["explanation"]


def test_plan_human_output_for_default_teacher():
    r = run("plan", "--target", "laptop")
    assert r.returncode == 0, r.stderr
    assert "all-MiniLM-L6-v2" in r.stdout and "Chosen:" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["plan", "--target", "nosuch"], "unknown target"),
    (["plan", "--teacher", "/nonexistent/folder"], "does not exist"),
    (["plan", "--max-params", "lots"], "not a number"),
    (["plan", "--wat"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line_and_no_traceback(args, words):
    r = run(*args)
    assert r.returncode == 2
    assert words in r.stderr and "Fix:" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_inputs_from_the_issue(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [x\n")
    (tmp_path / "noconf").mkdir()
    gpt2 = write_config(tmp_path / "gpt2", {"model_type": "gpt2", "n_embd": 64})
    for args in (["--target", str(tmp_path / "bad.yaml")],
                 ["--teacher", str(tmp_path / "noconf")],
                 ["--teacher", str(gpt2)]):
        r = run("plan", *args, "--json")
        assert r.returncode == 2, args
        assert json.loads(r.stdout)["error"] in ("ProfileError", "TeacherError")
        assert "Traceback" not in r.stderr


def test_internal_error_exit_1_traceback_only_in_debug(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("kaput")
    monkeypatch.setattr(cli.plan_cmd, "plan", boom)
    assert cli.main(["plan"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err
    monkeypatch.setenv("EDGEDISTILL_DEBUG", "1")
    assert cli.main(["plan"]) == 1
    assert "Traceback" in capsys.readouterr().err
