"""Distillation end to end on tiny models: CLI and API, resume after a kill, data-parallel
on 2 CPU processes (gloo), the top-K cache, teacher-generated data, encoders, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgedistill.distill import DataConfig, DistillConfig, KDConfig, TrainConfig, distill
from edgedistill.errors import EdgeDistillError
from edgedistill.plan import PlanConfig

from conftest import (kill_after_checkpoint, tiny_distilbert, tiny_roberta, tiny_sentence_bert,
                      tiny_xlm_roberta)

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
SMALL = ["--steps", "8", "--batch-size", "2", "--seq-len", "32", "--eval-every", "4",
         "--save-every", "2", "--speedup", "1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from edgedistill.data import stdlib_source
    p = tmp_path_factory.mktemp("data") / "code.txt"
    p.write_text(stdlib_source(60_000))
    return p


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run / "student" / "model.safetensors"))


def _cli(*args, env=ENV, launcher=(sys.executable, "-m", "edgedistill")):
    return subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_api_distill_improves_on_the_initial_student(trained_llama, text_file, tmp_path):
    res = distill(trained_llama, "laptop", text_file, tmp_path / "run",
                  DistillConfig(train=TrainConfig(steps=30, batch_size=4, lr=2e-3, eval_every=1,
                                                  save_every=0),
                                data=DataConfig(seq_len=32)),
                  plan_config=PlanConfig(speedup=1.0))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(res.student_dir)
    assert AutoTokenizer.from_pretrained(res.student_dir).get_vocab() == \
        AutoTokenizer.from_pretrained(trained_llama).get_vocab()
    assert model.num_parameters() < AutoModelForCausalLM.from_pretrained(
        trained_llama).num_parameters()
    log = [json.loads(line) for line in (res.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 30 and log[-1]["val_kl"] < log[0]["val_kl"]
    doc = json.loads((res.run_dir / "distill.json").read_text())
    assert doc["validation"]["loss"] > 0 and doc["teacher_val_loss"] > 0
    assert (res.run_dir / "plan.json").is_file()
    # every row has the training clock; tokens/s leaves out validating (every step here)
    assert all(0 < a["seconds"] <= b["seconds"] for a, b in zip(log, log[1:]))
    assert 0 < doc["aside_seconds"] < doc["seconds"]
    assert doc["tokens_per_s"] == pytest.approx(doc["tokens"] / (doc["seconds"]
                                                                 - doc["aside_seconds"]))


def test_activation_checkpointing_trains_the_same_student(trained_llama, text_file, tmp_path):
    runs = {}
    for ckpt in (False, True):
        runs[ckpt] = distill(trained_llama, "laptop", text_file, tmp_path / str(ckpt),
                             DistillConfig(train=TrainConfig(
                                 steps=3, batch_size=2, eval_every=0, save_every=0,
                                 mixed_precision="no", activation_checkpointing=ckpt),
                                 data=DataConfig(seq_len=32)),
                             plan_config=PlanConfig(speedup=1.0), log=lambda m: None)
    a, b = _weights(tmp_path / "False"), _weights(tmp_path / "True")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from safetensors.torch import load_file
    init = load_file(str(tmp_path / "True" / "student_init" / "model.safetensors"))
    assert any(not torch.equal(b[k], init[k]) for k in b)  # it trained


@pytest.mark.parametrize("recipe", [[], ["--on-policy", "0.5"]], ids=["off-policy", "on-policy"])
def test_resume_after_kill_continues_exactly(trained_llama, text_file, tmp_path, recipe):
    args = ["distill", "--teacher", trained_llama, "--data", text_file, *SMALL,
            "--steps", "16", *recipe]
    straight = _cli(*args, "--out", tmp_path / "a")
    assert straight.returncode == 0, straight.stderr[-3000:]
    kill_after_checkpoint(args, tmp_path / "b", 6, ENV)
    resumed = _cli(*args, "--out", tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_on_gloo_match_one_process(trained_llama, text_file, tmp_path, sharding):
    fsdp = ["--fsdp"] if sharding == "fsdp" else []
    args = ["distill", "--teacher", trained_llama, "--data", text_file, *SMALL,
            "--save-every", "4" if fsdp else "0"]
    one = _cli(*args, "--batch-size", "4", "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(29561 + len(fsdp)),
                "-m", "edgedistill")
    two = _cli(*args, *fsdp, "--batch-size", "2", "--out", tmp_path / "two",
               launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    doc = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert doc["world_size"] == 2 and ("sharded" in doc) == bool(fsdp)
    if fsdp:  # each process holds about half of the student
        import re
        held, total = (int(x.replace(",", "")) for x in re.search(
            r"process 0 holds ([\d,]+) of ([\d,]+)", two.stderr).groups())
        assert 0.4 < held / total < 0.6
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    # the same training up to float reassociation: DDP averages two half-batch gradients where
    # one process takes the mean of the whole batch (FSDP reduce-scatters them). Adam divides
    # by sqrt(v), so rows of the embedding whose gradients are nearly zero amplify that
    # rounding: 1.3e-5 measured on an Intel Xeon (2 threads). Unsynchronised or unsharded
    # training differs by ~lr a step.
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    if fsdp:  # a sharded run resumes from its gathered checkpoint: the same student
        import shutil
        shutil.rmtree(tmp_path / "two" / "student")
        (tmp_path / "two" / "checkpoints" / "latest").write_text("step-0000004")
        again = _cli(*args, *fsdp, "--batch-size", "2", "--out", tmp_path / "two", "--resume",
                     launcher=launcher)
        assert again.returncode == 0 and "resumed from step 4" in again.stderr, \
            again.stderr[-3000:]
        c = _weights(tmp_path / "two")
        assert all(torch.allclose(b[k], c[k], atol=1e-6) for k in b)
        bad = _cli(*args, "--fsdp", "--quant-aware", "gguf:q4_0", "--out", tmp_path / "q")
        assert bad.returncode == 2 and "--fsdp shards the student" in bad.stderr


def test_topk_cache_and_generated_data(trained_llama, text_file, tmp_path):
    r = _cli("distill", "--teacher", trained_llama, "--data", text_file, *SMALL,
             "--cache-topk", "8", "--generate", "4", "--out", tmp_path / "c", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["cache_bytes_per_token"] == 8 * 6 and doc["generated_sequences"] == 4
    assert "bytes per token" in r.stderr
    assert (tmp_path / "c" / "cache" / "top8" / "values.npy").is_file()
    bad = _cli("distill", "--teacher", trained_llama, "--data", text_file, *SMALL,
               "--cache-topk", "8", "--loss", "rkl", "--out", tmp_path / "d")
    assert bad.returncode == 2 and "forward KL only" in bad.stderr


def test_a_validation_just_before_the_last_one_is_left_out(trained_llama, text_file,
                                                          tmp_path):
    """--eval-every 8 over 9 steps: step 8's validation would measure almost the model step
    9's does (the 45-minute real-teacher run validated at 348 and 350 of 350)."""
    res = distill(trained_llama, "laptop", text_file, tmp_path / "run",
                  DistillConfig(train=TrainConfig(steps=9, batch_size=2, save_every=0,
                                                  eval_every=8),
                                data=DataConfig(seq_len=32)),
                  plan_config=PlanConfig(speedup=1))
    log = [json.loads(x) for x in (res.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [9]


def test_losses_and_random_init_run(trained_llama, text_file, tmp_path):
    for loss in ("rkl", "jsd"):
        res = distill(trained_llama, "laptop", text_file, tmp_path / loss,
                      DistillConfig(kd=KDConfig(loss=loss, temperature=2.0, kd_weight=0.5),
                                    train=TrainConfig(steps=2, batch_size=2, save_every=0,
                                                      eval_every=2),
                                    data=DataConfig(seq_len=32), init="random"),
                      plan_config=PlanConfig(speedup=1))
        assert res.metrics["validation"]["loss"] > 0


@pytest.mark.parametrize("make", [tiny_sentence_bert, tiny_xlm_roberta, tiny_roberta,
                                  tiny_distilbert])
def test_encoder_distillation_keeps_the_embedding_space(make, tmp_path):
    teacher = make(tmp_path / "teacher")
    sentences = tmp_path / "s.txt"
    from edgedistill.data import stdlib_sentences
    sentences.write_text("\n".join(stdlib_sentences()[:400]))
    res = distill(teacher, "laptop", sentences, tmp_path / "run",
                  DistillConfig(train=TrainConfig(steps=3, batch_size=8, save_every=0,
                                                  eval_every=3),
                                data=DataConfig(seq_len=32)),
                  plan_config=PlanConfig(speedup=1.2))
    from edgedistill.arch import canonical
    cfg = canonical(json.loads((res.student_dir / "config.json").read_text()))
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] <= 2
    assert (res.student_dir / "modules.json").is_file()
    assert -1 <= res.metrics["validation"]["cosine"] <= 1
    # the hidden-state loss on the last layer's token states alone (student last, teacher last)
    t_layers = canonical(json.loads((teacher / "config.json").read_text()))["num_hidden_layers"]
    assert json.loads((tmp_path / "run" / "distill.json").read_text())["hidden_layers"] == [
        [cfg["num_hidden_layers"], t_layers]]


def test_bad_inputs(trained_llama, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    r = _cli("distill", "--teacher", trained_llama, "--data", empty, "--out", tmp_path / "e")
    assert r.returncode == 2 and "holds no text" in r.stderr and "Traceback" not in r.stderr
    r = _cli("distill", "--teacher", trained_llama, "--loss", "mse", "--out", tmp_path / "e")
    assert r.returncode == 2 and "unknown --loss" in r.stderr
    r = _cli("distill", "--teacher", trained_llama, "--resume", "--out", tmp_path / "none")
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    other = tiny_sentence_bert(tmp_path / "other")  # a WordPiece tokenizer, not the teacher's
    with pytest.raises(EdgeDistillError, match="tokenizers of teacher .* differ"):
        distill(trained_llama, "laptop", text_file, tmp_path / "x",
                DistillConfig(student=str(other)))


def test_teacher_dtype_auto_follows_the_hardware():
    from edgedistill.distill.config import auto_teacher_dtype
    assert auto_teacher_dtype("cpu", ["avx2", "avx512_bf16"])[0] == "bf16"
    assert auto_teacher_dtype("cpu", ["amx_bf16"])[0] == "bf16"
    assert auto_teacher_dtype("cpu", ["avx2", "fma"]) == (
        "fp32", "this CPU has no native bf16 instructions")
    assert auto_teacher_dtype("cuda:0", [], cuda_bf16=True)[0] == "bf16"
    assert auto_teacher_dtype("cuda:0", [], cuda_bf16=False)[0] == "fp16"
    with pytest.raises(EdgeDistillError, match="unknown --teacher-dtype 'int8'"):
        DistillConfig(teacher_dtype="int8")


@pytest.mark.slow
def test_a_bf16_teacher_distils_and_is_recorded(trained_llama, text_file, tmp_path):
    res = distill(trained_llama, "laptop", text_file, tmp_path / "run",
                  DistillConfig(train=TrainConfig(steps=3, batch_size=2, save_every=0,
                                                  eval_every=3),
                                data=DataConfig(seq_len=32), teacher_dtype="bf16"),
                  plan_config=PlanConfig(speedup=1))
    assert res.metrics["teacher_dtype"] == "bf16"
    assert 0 < res.metrics["validation"]["kl"] < 10 and res.metrics["teacher_val_loss"] > 0
