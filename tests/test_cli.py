import json
import subprocess
import sys

import pytest

from edgedistill import cli

from conftest import REAL_CONFIGS, TINY_CONFIGS, write_config


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


@pytest.mark.parametrize("args, words", [
    (["export", "--teacher", "t", "--steps", "0"], "--steps: must be at least 1, got 0"),
    (["export", "--student", "s", "--threads", "-1"], "--threads: must be at least 1"),
    (["export", "--teacher", "t", "--new-tokens", "0"], "--new-tokens: must be at least 1"),
    (["export", "--student", "s", "--context", "0"], "--context: must be at least 2"),
    (["export", "--teacher", "t", "--lr=-1e-4"], "--lr: must be a number above zero"),
    (["distill", "--seq-len", "1"], "--seq-len: must be at least 2"),
    (["distill", "--kd-weight", "2"], "--kd-weight: must be between 0 and 1"),
    (["distill", "--steps", "ten"], "--steps: expected a whole number, got 'ten'"),
    (["plan", "--speedup", "nan"], "--speedup: must be a number above zero"),
    (["calibrate", "--budget-s", "0"], "--budget-s: must be a number above zero"),
    (["bench", "runs/x", "--repeats", "0"], "--repeats: must be at least 1"),
    (["distill", "--teacher", "t", "--dropout", "1"], "--dropout: must be in [0, 1)"),
])
def test_numeric_options_out_of_range_are_usage_errors(args, words, capsys):
    """Before: --steps 0 or --threads -1 ran (and did nothing useful), --new-tokens 0 and
    --seq-len 0 crashed with ZeroDivisionError after minutes of work."""
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "Fix:" in err and len(err.strip().splitlines()) == 1, err


def test_an_out_folder_that_is_a_file_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    student = folder(tmp_path, "student")
    for out in (blocker, blocker / "sub"):
        code = cli.main(["export", "--student", str(student), "--formats", "onnx",
                         "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"{blocker} is a file" in err and "Fix:" in err, err
    assert blocker.read_text() == "not a folder"


def folder(tmp_path, name, tokenizer=True, weights="whole"):
    """A llama config folder with a small weight file (whole, cut short, or one of two index
    shards) and a tokenizer.json: enough for the checks made before any work."""
    import torch
    from safetensors.torch import save_file

    d = write_config(tmp_path / name, TINY_CONFIGS["llama"])
    if weights:
        f = d / ("model-00001-of-00002.safetensors" if weights == "shard" else
                 "model.safetensors")
        save_file({"w": torch.zeros(256)}, str(f))
        if weights == "cut":  # an interrupted download
            f.write_bytes(f.read_bytes()[:-100])
        if weights == "shard":
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
                "a": f.name, "b": "model-00002-of-00002.safetensors"}}))
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    return d


def test_model_folders_that_cannot_load_are_refused_before_any_work(tmp_path, capsys):
    """Before: a folder without a tokenizer or with a cut-short safetensors file crashed with
    an internal error (TypeError, SafetensorError)."""
    cases = [(folder(tmp_path, "no-tokenizer", tokenizer=False), "has no tokenizer"),
             (folder(tmp_path, "cut", weights="cut"), "model.safetensors: cannot read the weights"),
             (folder(tmp_path, "shard", weights="shard"), "lacks 1 weight shard(s)"),
             (folder(tmp_path, "empty", weights=None), "has no weights")]
    for d, words in cases:
        for argv in (["export", "--student", str(d), "--formats", "onnx"],
                     ["export", "--teacher", str(d)], ["distill", "--teacher", str(d)]):
            assert cli.main(argv + ["--out", str(tmp_path / "out")]) == 2, argv
            err = capsys.readouterr().err
            assert words in err and "Fix:" in err and len(err.strip().splitlines()) == 1, err


def test_data_that_is_not_text_is_refused(tmp_path, capsys):
    from edgedistill.data import load_texts
    from edgedistill.errors import EdgeDistillError

    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("def f(x):\n    return x\n" * 50, encoding="utf-16")
    with pytest.raises(EdgeDistillError, match="is not UTF-8 text"):
        load_texts(utf16)
    stray = tmp_path / "latin1.txt"  # one stray byte in plain text is tolerated
    stray.write_bytes(b"\xef\xbb\xbf" + b"caf\xe9 au lait\n" + b"plain text line\n" * 20)
    (text,) = load_texts(stray)
    assert text.startswith("caf\ufffd au lait")  # the BOM is dropped


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


@pytest.mark.parametrize("argv, words", [
    # three bad inputs that used to crash or run: each is now caught by its config
    (["distill", "--student", "NEOX", "--steps", "1"], "--student NEOX: unsupported"),
    (["plan", "--speedup", "0.5"], "--speedup 0.5 asks for a student slower than the teacher"),
    (["calibrate", "--target", "phone-npu"], "profile 'phone-npu' runs on onnxruntime-qnn"),
    (["distill", "--loss", "kl"], "unknown --loss 'kl'"),
    (["distill", "--init", "zeros"], "unknown --init 'zeros'"),
    (["export", "--teacher", "t", "--loss", "mse"], "unknown --loss 'mse'"),
    (["export", "--student", "s", "--steps", "5"], "--steps only apply to the whole chain"),
    (["export", "--student", "s", "--verify-plan", "3"],
     "--verify-plan only apply to the whole chain"),
    (["export", "--teacher", "t", "--verify-plan", "1"], "--verify-plan 1: ranking needs"),
    (["distill", "--final-share", "1"], "--final-share must lie in [0, 1)"),
    (["distill", "--quant-aware", "gguf:q5_k_m"], "no fake-quant grid for gguf:q5_k_m"),
    (["distill", "--quant-aware", "q4_0"], "--quant-aware takes FMT:QUANT"),
    (["distill", "--quant-aware", "gguf:q4_0", "--quant-aware-share", "0"],
     "--quant-aware-share must lie in (0, 1]"),
    (["export", "--teacher", "t", "--quant-aware", "gguf:q4_0", "--no-quant-aware"],
     "--quant-aware gguf:q4_0 and --no-quant-aware contradict"),
    (["export", "--student", "s", "--no-quant-aware"],
     "--no-quant-aware only apply to the whole chain"),
    (["export", "--teacher", "t", "--compare-ptq", "--no-quant-aware"],
     "--compare-ptq compares quant-aware distillation with plain"),
    (["export", "--student", "s", "--compare-ptq"], "--compare-ptq only apply to the whole"),
])
def test_configs_catch_bad_inputs_before_any_work(argv, words, tmp_path, capsys):
    neox = write_config(tmp_path / "neox", {"model_type": "gpt_neox", "hidden_size": 64,
                                            "num_attention_heads": 4, "num_hidden_layers": 2,
                                            "vocab_size": 300})
    argv = [str(neox) if a == "NEOX" else a for a in argv]
    words = words.replace("NEOX", str(neox))
    assert cli.main(argv + ["--out", str(tmp_path / "out")] if argv[0] == "distill"
                    else argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Fix:" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing written


def _parse(argv):
    parser = cli.build_parser()
    return parser.parse_args(argv)


def test_the_cli_and_the_api_resolve_the_same_config():
    """`edgedistill export --teacher T` (no other flags) builds exactly RunConfig(), and the
    distill verb exactly DistillConfig(): defaults live in the configs only."""
    from edgedistill.cli.distill_cmd import distill_config
    from edgedistill.cli.export_cmd import run_config
    from edgedistill.distill import DistillConfig, TrainConfig
    from edgedistill.pipeline import RunConfig

    assert run_config(_parse(["export", "--teacher", "t"])) == RunConfig()
    assert run_config(_parse(["export", "--teacher", "t", "--data", "d.txt"])).with_data(
        "d.txt") == RunConfig().with_data("d.txt")
    assert distill_config(_parse(["distill"])) == DistillConfig()
    flags = ["export", "--teacher", "t", "--steps", "40", "--loss", "jsd", "--temperature", "2",
             "--kd-weight", "0.5", "--hidden-weight", "1", "--init", "random",
             "--max-params", "5M", "--grad-accum", "2", "--speedup", "3", "--no-baselines"]
    rc = run_config(_parse(flags))
    assert (rc.distill.kd.loss, rc.distill.kd.temperature, rc.distill.kd.kd_weight) == \
        ("jsd", 2.0, 0.5)
    assert (rc.distill.train.steps, rc.distill.train.grad_accum, rc.distill.train.hidden_weight,
            rc.distill.init) == (40, 2, 1.0, "random")
    assert (rc.plan.max_params, rc.plan.speedup, rc.baselines) == (5_000_000, 3.0, False)
    # the per-kind defaults, the same for both: encoders 800 x 32 with the hidden-state loss
    # at 30, causal LMs 300 x 8 without it, validation every quarter and a checkpoint every
    # eighth of the steps; a given weight (0 included: off) is kept
    assert TrainConfig().resolved(encoder=True) == TrainConfig(
        steps=800, batch_size=32, lr=5e-4, hidden_weight=30.0, eval_every=200, save_every=100)
    assert TrainConfig().resolved(encoder=False) == TrainConfig(
        steps=300, batch_size=8, lr=5e-4, hidden_weight=0.0, eval_every=75, save_every=37)
    # a QAT checkpoint starts where it should end: a low rate unless one is given
    assert TrainConfig().resolved(False, qat_checkpoint=True).lr == 5e-5
    assert TrainConfig(lr=1e-4).resolved(False, qat_checkpoint=True).lr == 1e-4
    assert TrainConfig(hidden_weight=0).resolved(encoder=True).hidden_weight == 0
    assert TrainConfig(steps=10, eval_every=0).resolved(False).eval_every == 0  # 0 = never
    rc = run_config(_parse(["export", "--teacher", "t", "--similarity-weight", "2",
                            "--mixed-precision", "no"]))
    assert (rc.distill.train.similarity_weight, rc.distill.train.mixed_precision) == (2.0, "no")
    from edgedistill.errors import EdgeDistillError
    with pytest.raises(EdgeDistillError, match="--mixed-precision"):
        TrainConfig(mixed_precision="fp8")
    # dropout: 0 unless given; "config" keeps the model config's; 1 or more is refused
    assert TrainConfig().dropout == 0.0
    for flag, want in (("0.1", 0.1), ("config", "config")):
        assert run_config(_parse(["export", "--teacher", "t", "--dropout", flag])
                          ).distill.train.dropout == want
    with pytest.raises(EdgeDistillError, match="--dropout"):
        TrainConfig(dropout=1.5)
