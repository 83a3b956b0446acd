"""What torch.compile buys the main job's distillation on this CPU.

    .venv/bin/python benchmarks/distill_compile.py [--run-dir runs/demo-bench] [--steps 60]

Takes a finished demo run's initial student (``student_init``: the planned 3-layer MiniLM
built from the teacher) and trains it as distillation does, the student's half of a step:
forward under bf16 autocast (on CPUs with native bf16, as ``--mixed-precision auto``), mean
pooling, a cosine loss against fixed targets, backward, AdamW. The teacher's forward is the
same with or without compiling the student and is left out. Batches are those distillation
draws: the default sentences, length-grouped in 32s, in a seeded random order, so their
lengths vary from step to step as they do in the run.

Two arms, each in a fresh copy of the student, in one process: eager, and
``torch.compile(dynamic=True)``. Reported: the first step's seconds (compilation), the median
of the later steps, and what 800 steps (the demo's) would take each way. Writes
benchmarks/results/distill_compile.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from edgedistill.data import default_sentences
from edgedistill.distill.recipes import length_groups
from edgedistill.distill.config import auto_teacher_dtype
from edgedistill.machine import machine_info

ROOT = Path(__file__).resolve().parent


def batches(tok, n: int, seed: int = 0) -> list[dict]:
    sents = list(default_sentences())
    ids = tok(sents, truncation=True, max_length=256)["input_ids"]
    groups = length_groups([len(x) for x in ids], 32)
    random.Random(seed).shuffle(groups)
    return [tok([sents[i] for i in g], padding=True, truncation=True, max_length=256,
                return_tensors="pt") for g in groups[:n]]


def arm(student_dir: Path, data: list[dict], compiled: bool, bf16: bool) -> list[float]:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(student_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    fwd = torch.compile(model, dynamic=True) if compiled else model
    target = torch.nn.functional.normalize(torch.randn(32, model.config.hidden_size), dim=-1)
    times = []
    for b in data:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = fwd(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        emb = (h * m).sum(1) / m.sum(1)
        loss = (1 - torch.nn.functional.cosine_similarity(
            emb.float(), target[:len(emb)], dim=-1)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/demo-bench")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "results" / "distill_compile.json"))
    a = ap.parse_args()
    student = Path(a.run_dir) / "student_init"
    if not (student / "config.json").is_file():
        raise SystemExit(f"error: no {student}; run benchmarks/demo_minilm.py (or make demo "
                         "with --out that folder) first")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tok = AutoTokenizer.from_pretrained(student)
    data = batches(tok, a.steps)
    bf16 = auto_teacher_dtype("cpu", machine_info().flags)[0] == "bf16"
    out = {"benchmark": "distill_compile", "date": time.strftime("%Y-%m-%d"),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": bf16,
           "steps": a.steps, "arms": {}}
    for name, compiled in (("eager", False), ("compile", True)):
        t = arm(student, data, compiled, bf16)
        later = statistics.median(t[1:])
        out["arms"][name] = {"first_step_s": t[0], "median_step_s": later,
                             "total_s": sum(t), "800_steps_s": t[0] + 799 * later}
        print(name, json.dumps(out["arms"][name]), flush=True)
    e, c = out["arms"]["eager"], out["arms"]["compile"]
    out["step_speedup"] = e["median_step_s"] / c["median_step_s"]
    out["800_steps_ratio"] = e["800_steps_s"] / c["800_steps_s"]
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("step_speedup", "800_steps_ratio")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
