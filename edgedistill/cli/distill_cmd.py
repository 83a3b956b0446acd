"""``edgedistill distill``: train the planned student on the teacher's soft targets."""
from __future__ import annotations

import argparse

from pathlib import Path

from edgedistill.cli.options import (add_distill_options, add_plan_options, distill_config,
                                     plan_config)
from edgedistill.cli.types import count


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="distil a teacher into the planned student",
                       description="Plan a student for the target, initialise it from the "
                       "teacher, and train it on the teacher's soft targets (KD mixed with CE). "
                       "Writes RUN_DIR/student (an HF folder). Under 'accelerate launch' or "
                       "torchrun it runs data-parallel unchanged.")
    p.add_argument("--teacher", default=None, action="append",
                   help="local HF model folder or hub id (default: the bundled "
                   "all-MiniLM-L6-v2); repeat it for several teachers")
    p.add_argument("--target", default="laptop", help="profile the student must fit")
    p.add_argument("--data", default=None, help="text file, .jsonl, folder, or a saved "
                   "datasets folder (default: Python standard-library text)")
    p.add_argument("--out", default="runs/distill", help="run folder")
    p.add_argument("--student", default=None, help="train this HF folder instead of the "
                   "planned student (same tokenizer as the teacher; any supported family)")
    add_distill_options(p)
    p.add_argument("--generate", type=count(0), default=None, metavar="N",
                   help="add N teacher-written continuations (sequence-level KD)")
    p.add_argument("--cache-topk", type=count(0), default=None, metavar="K",
                   help="cache the teacher's top-K logits on disk and train from the cache")
    add_plan_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def run(args) -> int:
    from edgedistill.cli import emit_json
    from edgedistill.distill import distill

    config = distill_config(args, student=args.student)  # checked before any model loads
    res = distill(args.teacher, args.target, args.data, args.out, config,
                  plan_config=plan_config(args), resume=args.resume)
    if not res.metrics:  # not the main process of a distributed run
        return 0
    if args.json:
        emit_json(res.metrics)
        return 0
    v = res.metrics.get("validation", {})
    print(f"student: {res.student_dir}")
    print(f"steps {res.metrics['steps']} ({res.metrics['tokens']:,} tokens, "
          f"{res.metrics['tokens_per_s']:.0f} tok/s, world size {res.metrics['world_size']})")
    if "teacher_val_loss" in res.metrics and "loss" in v:
        print(f"held-out loss: student {v.get('loss', float('nan')):.4f}, teacher "
              f"{res.metrics['teacher_val_loss']:.4f}; KL to teacher {v.get('kl', 0):.4f}")
    elif "cosine" in v:
        print(f"held-out embedding cosine to the teacher: {v['cosine']:.4f}")
    elif not v:
        print("held-out figures: none (validation was off: --eval-every 0)")
    if "cache_bytes_per_token" in res.metrics:
        print(f"top-{res.metrics['cache_topk']} cache: {res.metrics['cache_bytes_per_token']} "
              "bytes per token")
    print(f"figures: {Path(args.out) / 'distill.json'}")
    return 0
