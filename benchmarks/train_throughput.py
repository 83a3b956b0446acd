"""Distillation throughput against the tools people use: edgedistill's training loop, TRL's
GKDTrainer and a plain PyTorch loop, on one teacher/student pair, the same batches in the
same order, the same batch size, sequence length, optimizer (edgedistill's AdamW and learning-rate
schedule, handed to TRL as `optimizers=`) and divergence
(forward KL, temperature 1).

    pip install trl==1.16.0                      # the comparison only; not a dependency
    .venv/bin/python benchmarks/train_throughput.py [--steps 24] [--batch 8] [--seq-len 256]

- edgedistill: ``causal_recipe`` + ``distill.loop.train``, what ``edgedistill distill`` runs
  (the teacher's logits and the student's are made and compared a chunk of tokens at a time).
- trl: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0, beta=0, seq_kd=False`` (off-policy
  forward KL), as its documentation configures it; a sequential sampler over the same batches.
- plain: a PyTorch loop that computes both models' full logits and ``F.kl_div``.

Teacher: SmolLM2-135M-Instruct (benchmarks/smollm2_folder.py; its weights on the Q4_1 grid)
or ``--teacher DIR``; student: the teacher with every other layer kept (``--student-layers``),
built by edgedistill's student initialiser. The teacher is frozen in the dtype edgedistill's
``--teacher-dtype auto`` picks for this device, in every arm; the student trains in fp32 on a
CPU, under bf16 autocast on a GPU (TRL: ``bf16=True``); an arm named ``NAME-bf16`` trains
under bf16 autocast on a CPU too (``--arms edgedistill-bf16,trl-bf16 --merge`` adds them to an
earlier run's file), ``NAME-ckpt`` with activation checkpointing. Each arm runs in its own
process:
tokens/s is measured over the steps after ``--warm`` (per-step wall clock), peak memory is
the process's resident high-water mark during training (``VmHWM``, reset after loading) on a
CPU and ``torch.cuda.max_memory_allocated`` on a GPU, both including the resident models.
After training, every student is judged on the same held-out text from another source
(``edgedistill/corpora/wiki_en.txt``): loss on the next token and KL to the teacher. A
second edgedistill run with another data order (``--noise``) gives the noise those figures
carry. Writes benchmarks/results/train_throughput_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ARMS = ("edgedistill", "trl", "plain")


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="HF folder (default: SmolLM2-135M)")
    ap.add_argument("--student-layers", type=int, default=None,
                    help="default: half the teacher's layers")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warm", type=int, default=3, help="steps left out of tokens/s")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--heldout-blocks", type=int, default=32)
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="of edgedistill, trl, plain; NAME-bf16: the student under bf16 "
                         "autocast on a CPU (on a GPU every arm is); NAME-ckpt: with "
                         "activation checkpointing")
    ap.add_argument("--noise", action="store_true",
                    help="also an edgedistill run with another data order (seed 1)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other arms of an earlier run's --out file")
    ap.add_argument("--work", default=None, help="folder for the student and data")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each arm, in rotation (A B C A B C); tokens/s and peak memory "
                         "are their medians, the held-out figures the first run's")
    ap.add_argument("--summarize", action="store_true",
                    help="only write --out's comparisons again from its arms")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-heldout", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# -- shared set-up (the parent makes it once; each arm's process reads it) ----------------

def prepare(args, work: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from edgedistill.data import pack, stdlib_source
    from edgedistill.student import build_student

    teacher = Path(args.teacher) if args.teacher else Path(subprocess.run(
        [sys.executable, str(ROOT / "smollm2_folder.py")], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1])
    cfg = json.loads((teacher / "config.json").read_text())
    layers = args.student_layers or max(1, cfg["num_hidden_layers"] // 2)
    student = work / f"student-{layers}L"
    if not (student / "config.json").is_file():
        build_student(teacher, cfg | {"num_hidden_layers": layers}, student, init="teacher")
    tok = AutoTokenizer.from_pretrained(teacher)
    need = args.steps * args.batch
    chars = max(200_000, need * args.seq_len * 5)
    train = pack([stdlib_source(chars)], tok, args.seq_len)
    wiki = (Path(__file__).resolve().parents[1] / "edgedistill" / "corpora" / "wiki_en.txt")
    held = pack([wiki.read_text()], tok, args.seq_len)[: args.heldout_blocks]
    torch.save({"train": train, "held": held}, work / "blocks.pt")
    return {"teacher": str(teacher), "student": str(student), "student_layers": layers,
            "teacher_layers": cfg["num_hidden_layers"], "train_blocks": len(train),
            "heldout_blocks": len(held), "heldout_source": "edgedistill/corpora/wiki_en.txt"}


def _order(n: int, steps: int, batch: int, seed: int):
    """The blocks of every step, as edgedistill's loop draws them (one process)."""
    from edgedistill.distill.loop import micro_batch_indices
    return [micro_batch_indices(j, n, batch, 1, 0, seed) for j in range(steps)]


def _peak_reset(cuda: bool) -> None:
    import torch
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:  # Linux: writing 5 resets the resident high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_gb(cuda: bool) -> float:
    import torch
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def heldout(student, teacher, held, device) -> dict:
    """Next-token loss of student and teacher, and KL(teacher || student), per predicted
    position (real_teacher.judge: bench's figures for deployed files)."""
    from real_teacher import judge, teacher_logits

    student.eval()
    t_logits = teacher_logits(teacher, held, device)
    s, t = judge(student, held, t_logits, device), judge(teacher, held, t_logits, device)
    return {"student_loss": s["loss"], "teacher_loss": t["loss"], "kl": s["kl_to_teacher"],
            "tokens": s["tokens"]}


# -- one arm, in its own process ----------------------------------------------------------

def _optimizer(student, cfg):
    """edgedistill's AdamW (weight decay on matrices only) and warm-up + cosine schedule."""
    import torch

    from edgedistill.distill.loop import _lr_lambda, adamw

    decay = [p for p in student.parameters() if p.ndim >= 2]
    rest = [p for p in student.parameters() if p.ndim < 2]
    opt = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": rest, "weight_decay": 0.0}], cfg.lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))


def run_arm(args, work: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from edgedistill.distill.config import TrainConfig, auto_teacher_dtype
    from edgedistill.machine import machine_info

    setup = json.loads((work / "setup.json").read_text())
    blocks = torch.load(work / "blocks.pt")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tdtype, _ = auto_teacher_dtype(device, machine_info().flags,
                                   cuda and torch.cuda.is_bf16_supported())
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[tdtype]
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(setup["teacher"], dtype=torch_dtype)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(setup["student"], dtype=torch.float32)
    train, steps, B = blocks["train"], args.steps, args.batch
    order = _order(len(train), steps, B, args.seed)
    arm, *flags = args.arm.split("-")
    bf16 = cuda or "bf16" in flags  # on a CPU: the student under bf16 autocast
    if "ckpt" in flags:  # activation checkpointing, in every arm the same way
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant":
                                                                              False})
    cfg = TrainConfig(steps=steps, batch_size=B, lr=args.lr, warmup=0.05, weight_decay=0.01,
                      clip=1.0, hidden_weight=0.0, eval_every=0, save_every=0,
                      mixed_precision="bf16" if bf16 else "no", seed=args.seed)
    times: list[float] = []

    def tick():
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    if arm == "edgedistill":
        from transformers import AutoTokenizer

        from edgedistill.distill.config import DataConfig, KDConfig
        from edgedistill.distill.loop import train as run_training
        from edgedistill.distill.recipes import causal_recipe
        from edgedistill.teacher import load_teacher

        t = load_teacher(setup["teacher"], weights=True)
        tok = AutoTokenizer.from_pretrained(setup["teacher"])
        run_dir = Path(tempfile.mkdtemp(dir=work, prefix="ed-"))
        recipe = causal_recipe(t, tok, teacher, student, train, blocks["held"][:B],
                               KDConfig(loss="fkl"), cfg, DataConfig(seq_len=args.seq_len),
                               run_dir, device, lambda m: None)
        _peak_reset(cuda)
        tick()
        m = run_training(recipe.module, recipe.teacher_fn, recipe.batch_fn, len(train),
                         recipe.val_fn, recipe.train_cfg, run_dir, "bench")
        rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
        times += [times[0] + r["seconds"] for r in rows]  # the loop's own per-step clock
        student = m["unwrapped"].student
    elif arm == "trl":
        import datasets
        from torch.utils.data import SequentialSampler
        from transformers import AutoTokenizer, TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        tok = AutoTokenizer.from_pretrained(setup["teacher"])
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        ordered = torch.cat([train[idx] for idx in order])
        ds = datasets.Dataset.from_dict({"input_ids": ordered.tolist()})

        def collate(rows):
            ids = torch.tensor([r["input_ids"] for r in rows])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": ids.clone()}

        class InOrder(GKDTrainer):
            def _get_train_sampler(self, *a, **k):
                return SequentialSampler(self.train_dataset)

        class Clock(TrainerCallback):
            def on_step_end(self, *a, **k):
                tick()

        targs = GKDConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=B,
                          max_steps=steps, learning_rate=args.lr, weight_decay=0.01,
                          max_grad_norm=1.0,
                          lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
                          bf16=bf16, use_cpu=not cuda, logging_steps=steps,
                          save_strategy="no", report_to=[], dataloader_num_workers=0,
                          disable_dropout=True, max_length=args.seq_len, seed=args.seed,
                          remove_unused_columns=False)
        opt, sched = _optimizer(student, cfg)  # the same update and schedule in every arm
        trainer = InOrder(model=student, teacher_model=teacher, args=targs, train_dataset=ds,
                          data_collator=collate, processing_class=tok, callbacks=[Clock()],
                          optimizers=(opt, sched))
        _peak_reset(cuda)
        tick()
        trainer.train()
        student = trainer.model
    elif arm == "plain":
        student = student.to(device)
        opt, sched = _optimizer(student, cfg)
        student.train()
        _peak_reset(cuda)
        tick()
        for idx in order:
            ids = train[idx].to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                s = student(input_ids=ids).logits[:, :-1]
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids).logits[:, :-1]
            ls = F.log_softmax(s.float(), -1)
            lt = F.log_softmax(t_logits.float(), -1)
            loss = F.kl_div(ls, lt, log_target=True, reduction="sum") / ls[..., 0].numel()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            tick()
    else:
        raise SystemExit(f"unknown arm {args.arm!r}; use one of {', '.join(ARMS)}, each "
                         "with -bf16 for bf16 autocast on a CPU")
    peak = _peak_gb(cuda)
    w = min(args.warm, len(times) - 2)
    steady = (len(times) - 1 - w) * B * args.seq_len / (times[-1] - times[w])
    quality = None if args.no_heldout else heldout(student.to(device), teacher,
                                                   blocks["held"], device)
    return {"arm": args.arm, "seed": args.seed, "teacher_dtype": tdtype, "device": device,
            "student_precision": "bf16 autocast" if bf16 else "fp32",
            "activation_checkpointing": "ckpt" in flags,
            "steps_timed": len(times) - 1 - w, "tokens_per_s": steady,
            "train_seconds": times[-1] - times[0], "peak_memory_gb": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if cuda else "VmHWM (RSS)",
            "heldout": quality}


# (name, edgedistill's arm, the other arm): the comparisons the results file states
PAIRS = [("trl", "edgedistill", "trl"), ("plain", "edgedistill", "plain"),
         ("trl-bf16", "edgedistill-bf16", "trl-bf16"),
         ("trl-ckpt", "edgedistill-ckpt", "trl-ckpt"),
         ("trl (edgedistill bf16 on a CPU)", "edgedistill-bf16", "trl"),
         ("trl (edgedistill with activation checkpointing)", "edgedistill-ckpt", "trl"),
         ("trl (edgedistill bf16 + activation checkpointing on a CPU)",
          "edgedistill-bf16-ckpt", "trl")]


def summarize(rows: list, cuda: bool) -> tuple[dict, dict | None]:
    """edgedistill's arms over the others' (tokens/s, peak memory, held-out differences),
    and the held-out noise of another data order."""
    ok = {(r["arm"], r["seed"]): r for r in rows if "error" not in r}
    ratios = {}
    for name, mine, other in PAIRS:
        m, o = ok.get((mine, 0)), ok.get((other, 0))
        if m and o and not (cuda and "bf16" in name):
            ratios[name] = {
                "tokens_per_s": m["tokens_per_s"] / o["tokens_per_s"],
                "peak_memory": m["peak_memory_gb"] / o["peak_memory_gb"],
                "heldout_loss_diff": (m["heldout"]["student_loss"]
                                      - o["heldout"]["student_loss"]),
                "kl_diff": m["heldout"]["kl"] - o["heldout"]["kl"]}
    noise = None
    ed, e1 = ok.get(("edgedistill", 0)), ok.get(("edgedistill", 1))
    if ed and e1:
        noise = {"heldout_loss_diff": e1["heldout"]["student_loss"]
                 - ed["heldout"]["student_loss"],
                 "kl_diff": e1["heldout"]["kl"] - ed["heldout"]["kl"],
                 "what": "edgedistill seed 1 (another data order) minus seed 0"}
    return ratios, noise


def main() -> None:
    args = _args()
    if args.arm:
        print("ARM " + json.dumps(run_arm(args, Path(args.work))), flush=True)
        return
    if args.summarize:  # the comparisons of an earlier run's file, written again
        out = Path(args.out)
        doc = json.loads(out.read_text())
        doc["edgedistill_over"], doc["noise"] = summarize(doc["arms"], bool(doc["gpu"]))
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["edgedistill_over"]))
        return
    import torch

    from edgedistill.machine import machine_info

    work = Path(args.work or tempfile.mkdtemp(prefix="train-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare(args, work)
    (work / "setup.json").write_text(json.dumps(setup))
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    arms = [(a, 0) for a in args.arms.split(",")] + ([("edgedistill", 1)] if args.noise else [])
    base = [sys.executable, __file__, "--work", str(work), "--steps", str(args.steps),
            "--warm", str(args.warm), "--batch", str(args.batch), "--seq-len",
            str(args.seq_len), "--lr", str(args.lr)]

    def write(rows: list) -> dict:
        """The results so far, written after every arm (a run cut short keeps them)."""
        ratios, noise = summarize(rows, cuda)
        import transformers
        try:
            import trl
            trl_version = trl.__version__
        except ImportError:
            trl_version = None
        info = machine_info()
        doc = {"benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"),
               "device": gpu or f"{info.cpu_model}, {torch.get_num_threads()} threads",
               "gpu": gpu, "machine": platform.machine(), "torch": torch.__version__,
               "transformers": transformers.__version__, "trl": trl_version,
               "setup": setup | {"steps": args.steps, "warm": args.warm, "batch": args.batch,
                                 "repeats": args.repeats,
                                 "seq_len": args.seq_len, "lr": args.lr,
                                 "divergence": "forward KL, temperature 1"},
               "arms": rows, "edgedistill_over": ratios, "noise": noise,
               "goals": {"tokens_per_s_over_trl": 1.5, "peak_memory_over_trl": 0.7}}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        return {"out": str(out), "edgedistill_over": ratios, "noise": noise}

    name = "gpu-" + gpu.lower().replace(" ", "-") if gpu else "cpu"
    out = Path(args.out or ROOT / "results" / f"train_throughput_{name}.json")
    rows = []
    if args.merge and out.is_file():
        rows = [r for r in json.loads(out.read_text())["arms"]
                if (r["arm"], r["seed"]) not in arms]
    kept, runs = rows, {}

    def merged(v: list) -> dict:
        row = dict(v[0])
        if "error" not in row:
            ok_runs = [r for r in v if "error" not in r]
            row["tokens_per_s_runs"] = [round(r["tokens_per_s"], 1) for r in ok_runs]
            row["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in ok_runs)
            row["peak_memory_gb_runs"] = [round(r["peak_memory_gb"], 3) for r in ok_runs]
            row["peak_memory_gb"] = statistics.median(r["peak_memory_gb"] for r in ok_runs)
        return row

    for rep in range(args.repeats):
        for arm, seed in arms:
            if rep and seed:  # the other data order is for the held-out noise: once
                continue
            t0 = time.time()
            p = subprocess.run(base + ["--arm", arm, "--seed", str(seed)]
                               + (["--no-heldout"] if rep else []), capture_output=True,
                               text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
            got = [ln[4:] for ln in p.stdout.splitlines() if ln.startswith("ARM ")]
            if p.returncode or not got:
                print(f"{arm}: failed (rc {p.returncode})\n{p.stderr[-3000:]}", file=sys.stderr)
                row = {"arm": arm, "seed": seed, "error": p.stderr[-1500:]}
            else:
                row = json.loads(got[-1]) | {"process_seconds": time.time() - t0}
            runs.setdefault((arm, seed), []).append(row)
            write(kept + [merged(v) for v in runs.values()])
            if "error" not in row:
                h = row["heldout"] or {}
                print(f"{arm:18s} seed {seed} run {rep + 1}: {row['tokens_per_s']:8.0f} tok/s  "
                      f"peak {row['peak_memory_gb']:.2f} GB  held-out loss "
                      f"{h.get('student_loss', float('nan')):.4f} KL "
                      f"{h.get('kl', float('nan')):.4f}", flush=True)
    print(json.dumps(write(kept + [merged(v) for v in runs.values()])))


if __name__ == "__main__":
    main()
