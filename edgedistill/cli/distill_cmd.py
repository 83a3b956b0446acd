"""``edgedistill distill``: train the planned student on the teacher's soft targets."""
from __future__ import annotations

import argparse

from pathlib import Path

from edgedistill.cli.types import count, fraction, non_negative, positive

LOSSES = ("fkl", "rkl", "jsd")  # kept here so --help does not import torch


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="distil a teacher into the planned student",
                       description="Plan a student for the target, initialise it from the "
                       "teacher, and train it on the teacher's soft targets (KD mixed with CE). "
                       "Writes RUN_DIR/student (an HF folder). Under 'accelerate launch' or "
                       "torchrun it runs data-parallel unchanged.")
    p.add_argument("--teacher", default=None, help="local HF model folder (default: the "
                   "bundled all-MiniLM-L6-v2)")
    p.add_argument("--target", default="laptop", help="profile the student must fit")
    p.add_argument("--data", default=None, help="text file, .jsonl, folder, or a saved "
                   "datasets folder (default: Python standard-library text)")
    p.add_argument("--out", default="runs/distill", help="run folder")
    p.add_argument("--student", default=None, help="train this HF folder instead of the "
                   "planned student (same tokenizer as the teacher; any supported family)")
    p.add_argument("--steps", type=count(), default=None,
                   help="default 800 for encoders, 300 for causal LMs")
    p.add_argument("--batch-size", type=count(), default=None,
                   help="default 32 sentences for encoders, 8 sequences for causal LMs")
    p.add_argument("--grad-accum", type=count(), default=1)
    p.add_argument("--seq-len", type=count(2), default=256)
    p.add_argument("--lr", type=positive, default=5e-4)
    p.add_argument("--loss", default="fkl", help="fkl | rkl | jsd")
    p.add_argument("--temperature", type=positive, default=1.0)
    p.add_argument("--kd-weight", type=fraction, default=1.0,
                   help="KD vs CE weight in [0, 1]; 1 = pure KD, 0 = plain cross-entropy (the "
                   "baseline)")
    p.add_argument("--jsd-beta", type=fraction, default=0.5)
    p.add_argument("--hidden-weight", type=non_negative, default=0.0,
                   help="weight of the hidden-state loss (encoders default to 1)")
    p.add_argument("--init", default="teacher", help="teacher | random")
    p.add_argument("--generate", type=count(0), default=0, metavar="N",
                   help="add N teacher-written continuations (sequence-level KD)")
    p.add_argument("--cache-topk", type=count(0), default=0, metavar="K",
                   help="cache the teacher's top-K logits on disk and train from the cache")
    p.add_argument("--eval-every", type=count(0), default=50,
                   help="validate every N steps (0: never)")
    p.add_argument("--save-every", type=count(0), default=50,
                   help="checkpoint every N steps (0: never; --resume needs checkpoints)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speedup", type=positive, default=None, help="as for 'plan'")
    p.add_argument("--max-params", default=None, help="as for 'plan'")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def _check(args) -> None:
    from edgedistill.errors import EdgeDistillError

    if args.loss not in LOSSES:
        raise EdgeDistillError(f"unknown --loss {args.loss!r}.", f"use one of {', '.join(LOSSES)}")
    if args.init not in ("teacher", "random"):
        raise EdgeDistillError(f"unknown --init {args.init!r}.", "use teacher or random")


def run(args) -> int:
    from edgedistill.distill import DataConfig, KDConfig, TrainConfig, distill, train_size
    from edgedistill.plan import PlanConfig
    from edgedistill.cli import emit_json
    from edgedistill.cli.plan_cmd import parse_count

    _check(args)
    steps, batch = train_size(args.teacher, args.steps, args.batch_size)
    res = distill(
        args.teacher, args.target, args.data, args.out,
        kd=KDConfig(loss=args.loss, temperature=args.temperature, kd_weight=args.kd_weight,
                    jsd_beta=args.jsd_beta),
        train=TrainConfig(steps=steps, batch_size=batch,
                          grad_accum=args.grad_accum, lr=args.lr,
                          hidden_weight=args.hidden_weight, eval_every=args.eval_every,
                          save_every=args.save_every, seed=args.seed),
        data_cfg=DataConfig(seq_len=args.seq_len, generate=args.generate,
                            cache_topk=args.cache_topk),
        init=args.init, student=args.student, resume=args.resume,
        plan_config=PlanConfig(speedup=args.speedup, max_params=parse_count(args.max_params)
                               if args.max_params else None))
    if not res.metrics:  # not the main process of a distributed run
        return 0
    if args.json:
        emit_json(res.metrics)
        return 0
    v = res.metrics.get("validation", {})
    print(f"student: {res.student_dir}")
    print(f"steps {res.metrics['steps']} ({res.metrics['tokens']:,} tokens, "
          f"{res.metrics['tokens_per_s']:.0f} tok/s, world size {res.metrics['world_size']})")
    if "teacher_val_loss" in res.metrics:
        print(f"held-out loss: student {v.get('loss', float('nan')):.4f}, teacher "
              f"{res.metrics['teacher_val_loss']:.4f}; KL to teacher {v.get('kl', 0):.4f}")
    elif "cosine" in v:
        print(f"held-out embedding cosine to the teacher: {v['cosine']:.4f}")
    if "cache_bytes_per_token" in res.metrics:
        print(f"top-{res.metrics['cache_topk']} cache: {res.metrics['cache_bytes_per_token']} "
              "bytes per token")
    print(f"figures: {Path(args.out) / 'distill.json'}")
    return 0



