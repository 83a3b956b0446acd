"""Progressive distillation (issue 27, part 3): the chain the planner picks, the steps split
over it, each stage pruned from the one before, a kill and a resume, and the report's chain.
Tiny models built here."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from edgedistill.arch import shape_from_config
from edgedistill.distill.config import DistillConfig
from edgedistill.distill.progressive import split_steps
from edgedistill.errors import EdgeDistillError, PlanError
from edgedistill.plan import (MAX_STAGE_DROP, PlanConfig, enumerate_candidates, plan,
                              progressive_chain)
from edgedistill.profiles import load_profile

DIMS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")


@pytest.mark.parametrize("name,target,speedup", [("tinyllama-1.1b", "laptop", 4.0),
                                                 ("qwen2-0.5b", "laptop", 2.5),
                                                 ("tinyllama-1.1b", "phone-npu", 2.0)])
def test_the_chain_shrinks_one_way_and_ends_at_the_planned_student(teacher_dir, name, target,
                                                                   speedup):
    pl = plan(str(teacher_dir(name)), target, PlanConfig(speedup=speedup))
    t, s, prof = pl.teacher.shape, pl.student.shape, load_profile(target)
    for stages in (0, 2, 3):
        chain = progressive_chain(t, s, prof, stages)
        assert chain[-1] == s and (stages == 0 or len(chain) <= stages)
        prev = t
        for c in chain:  # each one can be cut from the one before, and contains the student
            assert all(getattr(s, d) <= getattr(c, d) <= getattr(prev, d) for d in DIMS)
            assert c.total_params() < prev.total_params()
            prev = c
    auto = progressive_chain(t, s, prof, 0)
    want = math.ceil(math.log(s.total_params() / t.total_params())
                     / math.log(1 - MAX_STAGE_DROP))
    assert len(auto) <= max(1, want) and (len(auto) > 1) == (
        s.total_params() < (1 - MAX_STAGE_DROP) * t.total_params())


def test_chain_errors(teacher_dir):
    t = shape_from_config(json.loads((teacher_dir("llama") / "config.json").read_text()))
    with pytest.raises(PlanError, match="needs a student smaller than the teacher"):
        progressive_chain(t, t, load_profile("laptop"), 2)
    with pytest.raises(EdgeDistillError, match="a progressive chain plans its own students"):
        DistillConfig(stages=2, student=str(teacher_dir("llama")))
    with pytest.raises(EdgeDistillError, match="--progressive-teacher"):
        DistillConfig(stages=2, progressive_teacher="best")


def test_steps_are_split_over_the_stages():
    assert split_steps(10, 3) == [3, 3, 4] and split_steps(2, 3) == [1, 1, 1]
    assert sum(split_steps(300, 4)) == 300
    # --final-share: the last stage gets its share, the others split the rest evenly
    assert split_steps(600, 5, 0.6) == [60, 60, 60, 60, 360]
    assert split_steps(600, 1, 0.6) == [600] and split_steps(3, 3, 0.9) == [1, 1, 1]
    for bad, flag in ((dict(final_share=1.0), "--final-share"),
                      (dict(max_stage_drop=0.0), "--max-stage-drop")):
        with pytest.raises(EdgeDistillError, match=flag):
            DistillConfig(stages=0, **bad)


def test_max_stage_drop_sets_how_many_stages(teacher_dir):
    t = shape_from_config(json.loads((teacher_dir("llama") / "config.json").read_text()))
    prof = load_profile("laptop")
    small = min(enumerate_candidates(t, prof), key=lambda c: c.total_params())
    n = {cap: len(progressive_chain(t, small, prof, 0, cap)) for cap in (0.2, 1 / 3, 0.67)}
    assert n[0.2] >= n[1 / 3] >= n[0.67] and n[0.2] > n[0.67]


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(run / "student" / "model.safetensors"))


@pytest.mark.slow
def test_a_two_stage_chain_resumes_after_a_kill_and_the_report_lists_it(tmp_path):
    from edgedistill.data import stdlib_source
    from edgedistill.toy import make_causal_lm
    teacher = make_causal_lm(tmp_path / "t", hidden=128, layers=4, heads=4, kv_heads=2,
                             ffn=384, vocab=320, steps=40, seq_len=64, batch=8, chars=60_000,
                             lr=1e-2)
    text = tmp_path / "code.txt"
    text.write_text(stdlib_source(40_000))
    args = [sys.executable, "-m", "edgedistill", "distill", "--teacher", str(teacher), "--data",
            str(text), "--steps", "16", "--batch-size", "2", "--seq-len", "32",
            "--save-every", "2", "--eval-every", "4", "--speedup", "1", "--max-params", "250k",
            "--stages", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    straight = subprocess.run(args + ["--out", str(tmp_path / "a")], capture_output=True,
                              text=True, timeout=600, env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    doc = json.loads((tmp_path / "a" / "distill.json").read_text())
    st = doc["stages"]
    assert [s["stage"] for s in st] == [1, 2] and [s["steps"] for s in st] == [8, 8]
    assert st[0]["params"] > st[1]["params"] and st[1]["pruned_from"].endswith("stages/1/student")
    assert st[1]["teacher"].endswith("stages/1/student")  # distilled by the stage before
    assert doc["steps"] == 16 and doc["teacher_val_loss"] == st[0]["teacher_val_loss"]
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    assert [r["stage"] for r in log] == [1] * 8 + [2] * 8
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(tmp_path / "a" / "student").num_hidden_layers >= 1
    # killed in the second stage, then resumed: the same student as the straight run
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "b")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "b" / "stages" / "2" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.is_file()
                                          and latest.read_text().strip() >= "step-0000004"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.is_file() and not (tmp_path / "b" / "student").exists()
    resumed = subprocess.run(args + ["--out", str(tmp_path / "b"), "--resume"],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 1 done, kept" in resumed.stderr and "(resuming)" in resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the report's training section lists the chain
    from edgedistill.report import build_report
    (tmp_path / "a" / "bench.json").write_text("[]")
    rep = build_report(tmp_path / "a")
    assert [s["stage"] for s in rep["training"]["stages"]] == [1, 2]
