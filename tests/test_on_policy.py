"""On-policy KD (issue 27, part 2): the student's own continuations, labels on its tokens only,
a seeded draw that a resume repeats, no CE on the student's tokens, and a run under accelerate
with 2 processes. Tiny models built here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgedistill.distill.config import DistillConfig, DataConfig, KDConfig
from edgedistill.distill.loop import on_policy_step
from edgedistill.distill.on_policy import prompt_lengths, student_batch
from edgedistill.errors import EdgeDistillError


def _model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_the_student_writes_the_batch_and_only_its_tokens_are_labelled(trained_llama):
    model, tok = _model(trained_llama)
    text = tok("def f(x):\n    return x + 1\n" * 6)["input_ids"]
    ids = torch.tensor([text[:32], text[5:37]])
    labels = ids.clone()
    labels[1, :10] = -100  # the second row: a prompt of 10 tokens (response data)
    assert prompt_lengths(ids, labels) == [16, 10] and prompt_lengths(ids, None) == [16, 16]
    before = torch.get_rng_state()
    out = student_batch(model, {"input_ids": ids, "labels": labels}, seed=7, eos={0}, pad=0)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own RNG is untouched
    again = student_batch(model, {"input_ids": ids, "labels": labels}, seed=7, eos={0}, pad=0)
    assert torch.equal(out["input_ids"], again["input_ids"])  # seeded: a resume draws the same
    other = student_batch(model, {"input_ids": ids, "labels": labels}, seed=8, eos={0}, pad=0)
    assert not torch.equal(out["input_ids"], other["input_ids"])
    for r, p in enumerate([16, 10]):
        assert torch.equal(out["input_ids"][r, :p], ids[r, :p])  # the prompt is kept
        assert (out["labels"][r, :p] == -100).all()
        lab = out["labels"][r, p:]
        written = lab[lab != -100]
        assert len(written) > 0 and torch.equal(written, out["input_ids"][r, p:p + len(written)])
    assert out["on_policy"].item()
    model.train()
    student_batch(model, {"input_ids": ids}, seed=1, eos={0}, pad=0)
    assert model.training  # left as it was found


def test_on_policy_steps_are_a_seeded_share():
    steps = [on_policy_step(s, 0.3, 0) for s in range(2000)]
    assert 0.25 < sum(steps) / 2000 < 0.35
    assert steps == [on_policy_step(s, 0.3, 0) for s in range(2000)]
    assert not any(on_policy_step(s, 0.0, 0) for s in range(100))
    assert all(on_policy_step(s, 1.0, 0) for s in range(100))


def test_on_policy_batches_take_no_ce(trained_llama):
    from edgedistill.distill.loop import DistillModule
    from edgedistill.distill.losses import kd_loss
    student, tok = _model(trained_llama)
    teacher, _ = _model(trained_llama)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ids = torch.tensor([tok("def g(a):\n    return a * 2\n" * 3)["input_ids"][:24]])
    labels = ids.clone()
    labels[:, :8] = -100
    mixed = KDConfig(kd_weight=0.3)
    module = DistillModule(student, False, mixed, None, 0.0, len(tok))
    t = teacher.model(input_ids=ids)
    t_out = {"last_hidden": t.last_hidden_state[:, :-1],
             "head": teacher.get_output_embeddings().weight}
    batch = {"input_ids": ids, "labels": labels}
    off = module(batch, t_out).item()
    on = module(batch | {"on_policy": torch.ones((), dtype=torch.bool)}, t_out).item()
    with torch.no_grad():
        s_l, t_l = student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1]
        pure = kd_loss(s_l, t_l, labels[:, 1:], KDConfig(kd_weight=1.0), len(tok)).item()
        mix = kd_loss(s_l, t_l, labels[:, 1:], mixed, len(tok)).item()
    assert on == pytest.approx(pure, rel=1e-4) and off == pytest.approx(mix, rel=1e-4)


def test_bad_on_policy_settings():
    with pytest.raises(EdgeDistillError, match=r"--on-policy must lie in \[0, 1\]"):
        KDConfig(on_policy=1.5)
    with pytest.raises(EdgeDistillError, match="--cache-topk .* on-policy"):
        DistillConfig(kd=KDConfig(on_policy=0.5), data=DataConfig(cache_topk=8))


@pytest.mark.slow
def test_on_policy_runs_under_accelerate_with_two_processes(trained_llama, tmp_path):
    from edgedistill.data import stdlib_source
    text = tmp_path / "code.txt"
    text.write_text(stdlib_source(40_000))
    args = ["distill", "--teacher", trained_llama, "--data", text, "--steps", "6",
            "--batch-size", "2", "--seq-len", "32", "--eval-every", "3", "--save-every", "0",
            "--speedup", "1", "--on-policy", "0.5", "--loss", "jsd", "--out", tmp_path / "two"]
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", "29563", "-m", "edgedistill"]
    r = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert doc["world_size"] == 2 and doc["on_policy"] == 0.5
    lines = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    log = [json.loads(x) for x in lines]
    flagged = [r["step"] for r in log if r.get("on_policy")]
    assert flagged == [s + 1 for s in range(6) if on_policy_step(s, 0.5, 0)] and flagged
    with pytest.raises(EdgeDistillError, match="sentence embedder writes none"):
        from conftest import tiny_sentence_bert
        from edgedistill.distill import distill
        distill(tiny_sentence_bert(tmp_path / "bert"), "laptop", None, tmp_path / "enc",
                DistillConfig(kd=KDConfig(on_policy=0.5)))
