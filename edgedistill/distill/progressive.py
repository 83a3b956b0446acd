"""Progressive distillation: teacher -> medium -> ... -> student, each stage pruned from the
model before it and distilled by it (or by the original teacher), instead of one big jump.

The chain comes from ``plan.progressive_chain``; the token budget (``--steps``) is split
evenly over the stages, or ``--final-share`` of it to the last stage and the rest evenly.
Each stage is a run folder of its own, ``RUN/stages/K/`` (student_init, checkpoints,
train_log.jsonl, student, distill.json) with a ``stage.json`` once it is done, so a killed
chain resumes at the stage it was in. The run folder then holds the last stage's student, one
train_log.jsonl with every stage's rows (``stage`` and a running ``step``), and a
distill.json whose ``stages`` list each stage's shape, parameters, teacher, steps and held-out
figures."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from edgedistill.arch import config_for_shape
from edgedistill.distill.config import DistillResult
from edgedistill.runstate import atomic_write, files_id, fingerprint


def split_steps(steps: int, stages: int, final_share: float = 0.0) -> list[int]:
    """``steps`` over ``stages``: the last gets ``final_share`` of them and the others split
    the rest evenly (0: all evenly), the remainder to the last; at least 1 each."""
    if final_share and stages > 1:
        per = [max(1, (steps - round(steps * final_share)) // (stages - 1))] * stages
    else:
        per = [max(1, steps // stages)] * stages
    per[-1] = max(1, steps - sum(per[:-1]))
    return per


def distill_progressive(distill, t, target, data, run_dir: Path, config, chain: list, train,
                        resume: bool, log):
    """Run the chain (``distill`` is the stage runner, :func:`edgedistill.distill.distill`).
    ``chain``: the students' shapes, the planned student last; ``train``: the resolved
    TrainConfig of the whole run."""
    from accelerate import PartialState

    state = PartialState()
    steps = split_steps(train.steps, len(chain), config.final_share)
    prev_dir, prev_params = Path(t.path), t.shape.total_params()
    desc = " -> ".join(f"{p / 1e6:.1f}M" for p in
                       [prev_params] + [s.total_params() for s in chain])
    by = ("the stage before" if config.progressive_teacher == "previous"
          else "the original teacher")
    log(f"progressive: {len(chain)} stages, {desc} parameters, steps {steps}, each stage "
        f"distilled by {by}")
    records, logs, offset = [], [], 0
    for k, (shape, n) in enumerate(zip(chain, steps), 1):
        sdir = run_dir / "stages" / str(k)
        teacher_k = prev_dir if config.progressive_teacher == "previous" else Path(t.path)
        stage_cfg = replace(config, stages=1, student=None,
                            train=replace(config.train, steps=n, batch_size=train.batch_size))
        s_cfg = config_for_shape(t.config, shape)
        key = fingerprint(files_id(prev_dir), files_id(teacher_k), s_cfg, asdict(stage_cfg),
                          str(data), str(getattr(target, "name", target)))
        done = sdir / "stage.json"
        rec = json.loads(done.read_text()) if done.is_file() else None
        if resume and rec is not None and rec.get("key") == key and (sdir / "student").is_dir():
            log(f"progressive: stage {k} done, kept {sdir / 'student'}")
        else:
            resume_k = resume and (sdir / "checkpoints" / "latest").is_file()
            log(f"progressive: stage {k}/{len(chain)}: {shape.describe()} "
                f"({shape.total_params():,} params, {1 - shape.total_params() / prev_params:.0%}"
                f" fewer than stage {k - 1 if k > 1 else 'teacher'}), {n} steps"
                + (" (resuming)" if resume_k else ""))
            if not resume_k and state.is_main_process:
                shutil.rmtree(sdir, ignore_errors=True)
            state.wait_for_everyone()
            res = distill(teacher_k, target, data, sdir, stage_cfg, resume=resume_k, log=log,
                          student_config=s_cfg, init_from=prev_dir)
            state.wait_for_everyone()  # the next stage reads this one's student
            if not state.is_main_process:
                prev_dir, prev_params = sdir / "student", shape.total_params()
                continue
            m = res.metrics
            rec = {"key": key, "stage": k, "shape": shape.describe(),
                   "params": shape.total_params(), "teacher": str(teacher_k),
                   "pruned_from": str(prev_dir),
                   "drop": 1 - shape.total_params() / prev_params, "steps": n,
                   "tokens": m.get("tokens"), "seconds": m.get("seconds"),
                   "validation": m.get("validation"),
                   "teacher_val_loss": m.get("teacher_val_loss"),
                   "student_dir": str(res.student_dir)}
            atomic_write(done, rec)
        if rec is None:  # a non-main process: the main one keeps the records
            continue
        records.append(rec)
        for line in (sdir / "train_log.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            logs.append(row | {"step": row["step"] + offset, "stage": k})
        offset += n
        prev_dir, prev_params = sdir / "student", shape.total_params()
    student_dir = run_dir / "student"
    if not state.is_main_process:
        state.wait_for_everyone()
        return DistillResult(run_dir, student_dir, {})
    tmp = run_dir / ".student.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(prev_dir, tmp)
    shutil.rmtree(student_dir, ignore_errors=True)
    tmp.rename(student_dir)
    atomic_write(run_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in logs))
    last = json.loads((prev_dir.parent / "distill.json").read_text())
    metrics = last | {"steps": sum(steps), "tokens": sum(r["tokens"] or 0 for r in records),
                      "seconds": sum(r["seconds"] or 0 for r in records),
                      "teacher": str(t.path),
                      "teacher_val_loss": records[0]["teacher_val_loss"],
                      "stages": [{k: v for k, v in r.items() if k != "key"} for r in records],
                      "progressive_teacher": config.progressive_teacher,
                      "student_dir": str(student_dir)}
    metrics["tokens_per_s"] = metrics["tokens"] / max(metrics["seconds"], 1e-9)
    atomic_write(run_dir / "distill.json", metrics)
    state.wait_for_everyone()
    return DistillResult(run_dir, student_dir, metrics)
