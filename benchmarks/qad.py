"""Quant-aware distillation against distil-then-quantize, measured in llama.cpp.

    .venv/bin/python benchmarks/qad.py [--teacher DIR] [--uses self,planned] [--steps 300]
        [--seeds 0,1] [--grids gguf:q4_0,gguf:q4_k_m,onnx:int4,onnx:qdq_a8w8]

Two uses, each with the same total steps per arm:

- ``self``: the teacher made to survive 4 bits (``distill --student TEACHER``, a QAT
  checkpoint). Arm (a) is the teacher itself, quantized (distilling a model into itself
  without the grid changes nothing); arm (b) trains all its steps through the grid.
- ``planned``: the student the planner picks for the laptop. Arm (a) distils for all the
  steps, then quantizes; arm (b) distils the same steps with the QAD phase (the last
  ``--share`` of them).

Arm (a) is shipped as every file of ``--grids``; each file gets its own arm (b), trained
through that file's grids.

Each arm's student is exported by edgedistill's own export (``export --student``: an
importance matrix where it helps the plain student; the quant-aware one is written as it
is) and its file run in llama.cpp (CPU, F32 KV cache) on held-out standard-library text (an
``onnx:int4`` file in onnxruntime; an ``onnx:qdq_*`` file: the phone NPU's fixed prefill
graph, on onnxruntime's CPU provider, ``--uses self`` only), then
compared with the float teacher in torch: KL, top-1 agreement, held-out loss (cross-entropy of
the next token). The recovered share of the quantization gap is
1 - (KL_qad - KL_float) / (KL_ptq - KL_float), KL_float being arm (a)'s float student (0 for
``self``); it is reported only where the PTQ gap exceeds 3x the spread between seeds.

Every arm distils on ``--distill-chars`` characters of standard-library source (4M by default)
from files the held-out text is never drawn from. A ``self`` arm runs at distill's own learning
rate for a QAT checkpoint (5e-5) unless ``--self-lr`` says otherwise.

Default teacher: the 4.2M llama kd_vs_ce.py trains (hidden 256, 4 layers, vocab 2048).
Writes benchmarks/results/qad_<teacher>.json. Figures: measured, this machine, llama.cpp CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def _log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(teacher: list, got: list, seqs: list) -> dict:
    """KL(teacher || got), top-1 agreement, and got's held-out loss on the next tokens."""
    kl = agree = ce = n = m = 0.0
    for t, g, ids in zip(teacher, got, seqs):
        lt, lg = _log_softmax(t), _log_softmax(g)
        kl += float((np.exp(lt) * (lt - lg)).sum())
        agree += float((t.argmax(-1) == g.argmax(-1)).sum())
        nxt = np.asarray(ids[1:len(g)])
        ce -= float(lg[np.arange(len(nxt)), nxt].sum())
        n += len(t)
        m += len(nxt)
    return {"kl": kl / n, "top1_agreement": agree / n, "heldout_loss": ce / m}


def npu_file_logits(art, held: list, graphs: list, threads: int) -> list:
    """The logits of the phone NPU's QDQ file ``art`` (an export Artifact) on ``held``: its
    fixed prefill graphs run by onnxruntime's CPU provider."""
    from edgedistill.convert import npu
    from edgedistill.runtimes import qnn
    from edgedistill.runtimes.outputs import ort_session

    sessions = [ort_session(npu.fixed_path(art.path.parent / "model.onnx", g, art.quant),
                            threads, basic=True) for g in graphs]
    return qnn.run_causal(*sessions, held, [0] * len(held), graphs)[0]


def qdq_quants_of(grids: list) -> tuple:
    return tuple(g.split(":", 1)[1] for g in grids if g.startswith("onnx:qdq"))


def summarize(runs: list, grids: list, seeds: list) -> list:
    """One row per use and deployed file: the seeds' median KL of each arm, the spread
    between seeds, and the recovered share of the gap where it exceeds 3x that spread."""
    summary = []
    for use in sorted({r["use"] for r in runs}):
        for g in grids:
            q = g.split(":", 1)[1]

            def kls(arm, key=q):
                return [next(r for r in runs if r["use"] == use and r["arm"] == arm
                             and r["seed"] == s)[key]["kl"] for s in seeds]
            ptq, qad = kls("ptq"), kls(f"qad:{g}")
            flt = [0.0] * len(seeds) if use == "self" else kls("ptq", "float")
            gap = float(np.median(ptq) - np.median(flt))
            spread = max(max(ptq) - min(ptq), max(qad) - min(qad))
            share = 1 - (np.median(qad) - np.median(flt)) / gap if gap > 0 else None

            def med(arm, key):
                return float(np.median([next(r for r in runs if r["use"] == use
                                             and r["arm"] == arm and r["seed"] == s)[q][key]
                                        for s in seeds]))
            summary.append({
                "use": use, "deployed": g, "kl_float": float(np.median(flt)),
                "kl_ptq": float(np.median(ptq)), "kl_qad": float(np.median(qad)),
                "top1_ptq": med("ptq", "top1_agreement"),
                "top1_qad": med(f"qad:{g}", "top1_agreement"),
                "heldout_loss_ptq": med("ptq", "heldout_loss"),
                "heldout_loss_qad": med(f"qad:{g}", "heldout_loss"),
                "gap": gap, "seed_spread": float(spread),
                "recovered": (float(share) if share is not None and gap > 3 * spread
                              else None),
                "recovered_raw": float(share) if share is not None else None,
                "measurable": bool(gap > 3 * spread)})
    return summary


def show(summary: list, out: Path) -> None:
    for s in summary:
        rec = "n/a (gap within 3x seed spread)" if s["recovered"] is None else \
            f"{s['recovered']:.0%}"
        print(f"{s['use']:<8} {s['deployed']:<12} KL float {s['kl_float']:.4f}  PTQ "
              f"{s['kl_ptq']:.4f}  QAD {s['kl_qad']:.4f}  spread {s['seed_spread']:.4f}  "
              f"recovered {rec}")
    print(json.dumps({"benchmark": "qad", "out": str(out)}))


SEED_FREE = ("steps", "batch_size", "seq_len", "lr", "self_lr", "share", "distill_chars",
             "teacher_dtype", "loss", "hidden_weight", "calibrated_plan")
"""Settings runs must share to be merged (their seeds and grids may differ)."""


def merge(paths: list[str], out: str | None) -> int:
    """Several result files of one setting, other seeds each, as one: their runs together,
    the summary over every seed they hold (the seed spread needs at least two)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    first = docs[0]
    for p, d in zip(paths[1:], docs[1:]):
        diff = [k for k in SEED_FREE if d["settings"].get(k) != first["settings"].get(k)]
        if d["teacher"] != first["teacher"] or diff:
            print(f"qad.py --merge: {p} was run with another teacher or settings "
                  f"({', '.join(diff) or 'teacher'}) than {paths[0]}; merge only runs "
                  "that differ in their seeds", file=sys.stderr)
            return 2
    runs = [r for d in docs for r in d["runs"]]
    seen = {(r["use"], r["arm"], r["seed"]) for r in runs}
    if len(seen) < len(runs):
        print("qad.py --merge: two files hold the same arm and seed; merge other seeds",
              file=sys.stderr)
        return 2
    grid_sets = [set(d["settings"]["grids"].split(",")) for d in docs]
    grids = [g for g in first["settings"]["grids"].split(",")
             if all(g in gs for gs in grid_sets)]
    seeds = sorted({r["seed"] for r in runs})
    doc = dict(first, summary=summarize(runs, grids, seeds), runs=runs,
               settings=dict(first["settings"], grids=",".join(grids),
                             seeds=",".join(map(str, seeds))),
               merged_from=[Path(p).name for p in paths],
               seconds=round(sum(d.get("seconds", 0) for d in docs), 1))
    target = Path(out or paths[0])
    target.write_text(json.dumps(doc, indent=2, default=str))
    show(doc["summary"], target)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="a causal-LM HF folder (default: the 4.2M llama)")
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--uses", default="self,planned")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per arm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4, help="planned: the distillation's lr")
    ap.add_argument("--self-lr", type=float, default=None,
                    help="self: the QAT checkpoint's lr (default: distill's for a QAT "
                    "checkpoint, 5e-5; at 5e-4 the 4.2M llama's Q4_0 KL rose from 0.0115 to "
                    "0.0156)")
    ap.add_argument("--distill-chars", type=int, default=4_000_000,
                    help="characters of standard-library source to distil on (files the "
                    "held-out text is not drawn from, past the teacher's first 2.5M)")
    ap.add_argument("--share", type=float, default=0.5, help="planned: the QAD phase's share")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--grids", default="gguf:q4_0,gguf:q4_k_m",
                    help="one QAD arm per file, trained through its grids and shipped as it")
    ap.add_argument("--eval-sequences", type=int, default=32)
    ap.add_argument("--npu-context", type=int, default=256,
                    help="onnx:qdq_* files: the fixed graphs' context")
    ap.add_argument("--teacher-dtype", default="fp32")
    ap.add_argument("--loss", default="fkl", help="the KD divergence: fkl, rkl or jsd")
    ap.add_argument("--hidden-weight", type=float, default=None,
                    help="weight of the hidden-state loss (distill's --hidden-weight; default: "
                    "distill's, 0 for causal LMs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/qad")
    ap.add_argument("--out", help="default: benchmarks/results/qad_<teacher>.json")
    ap.add_argument("--calibrated-plan", action="store_true",
                    help="plan the planned student with this machine's latency calibration "
                    "(default: as an uncalibrated machine plans it, the 3.4M student of the "
                    "committed runs; a calibration here plans a 1-layer one for 2x)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="write one result of several runs of the same settings with other "
                    "seeds (to --out, default: the first file) and summarize over all seeds")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if not args.calibrated_plan:  # the planner reads this machine's calibration from the cache
        os.environ["EDGEDISTILL_CACHE"] = str(Path(args.work) / "cache")

    from transformers import AutoTokenizer

    from edgedistill.data import eval_data, stdlib_source_split
    from edgedistill.distill import DataConfig, DistillConfig, KDConfig, TrainConfig, distill
    from edgedistill.export import ExportConfig, export
    from edgedistill.convert import npu
    from edgedistill.plan import PlanConfig
    from edgedistill.profiles import load_profile
    from edgedistill.quantize.gguf import tensor_types
    from edgedistill.runtimes.outputs import (gguf_causal_logits, onnx_causal_logits,
                                              torch_causal_logits)
    from edgedistill.toy import make_causal_lm

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    teacher = Path(args.teacher) if args.teacher else (
        work.parent / "export_parity" / f"llama-h256-l4-s{args.teacher_steps}-lr0.001")
    if not (teacher / "config.json").is_file():
        if args.teacher:
            raise SystemExit(f"{teacher}: not an HF folder")
        make_causal_lm(teacher, hidden=256, layers=4, heads=4, kv_heads=2, ffn=768,
                       vocab=2048, steps=args.teacher_steps, seq_len=128, batch=8, lr=1e-3,
                       chars=2_000_000, log=lambda m: print(m, file=sys.stderr))
    data = work / f"distill_data-{args.distill_chars}.txt"
    heldout = work / "heldout.txt"
    if not (data.is_file() and heldout.is_file()):  # one read of the standard library
        train_text, held_text = stdlib_source_split()
        data.write_text(train_text[2_500_000:2_500_000 + args.distill_chars])
        heldout.write_text(held_text)
    tok = AutoTokenizer.from_pretrained(teacher)
    held, _ = eval_data(tok, False, str(heldout), sequences=args.eval_sequences)
    ref = torch_causal_logits(teacher, held)
    grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    quants = [g.split(":", 1)[1] for g in grids]
    seeds = [int(s) for s in args.seeds.split(",")]

    if qdq_quants_of(grids) and args.uses != "self":
        raise SystemExit("onnx:qdq_* grids: --uses self only (a planned student for the "
                         "phone NPU is another plan than the laptop's PTQ arm)")
    gguf_quants = tuple(q for g, q in zip(grids, quants) if g.startswith("gguf:"))
    onnx_quants = tuple(q for g, q in zip(grids, quants) if g.startswith("onnx:")
                        and q not in qdq_quants_of(grids))
    qdq_quants = qdq_quants_of(grids)
    npu_graphs = npu.graph_shapes(False, load_profile("phone-npu"), args.npu_context)

    def npu_logits(a):  # the HTP's QDQ prefill graph, run by onnxruntime's CPU provider
        return npu_file_logits(a, held, npu_graphs, args.threads)

    files = [  # (quantizations, target, export settings, folder, the file's logits)
        (gguf_quants, "laptop", ExportConfig(formats=("gguf",), quants=gguf_quants), "export",
         lambda a: gguf_causal_logits(a.path, held, args.threads, kv_f32=True)),
        (onnx_quants, "laptop", ExportConfig(formats=("onnx",), quants=onnx_quants),
         "export-onnx", lambda a: onnx_causal_logits(a.path, held, args.threads)),
        (qdq_quants, "phone-npu", ExportConfig(quants=qdq_quants, context=args.npu_context,
                                               eval_sequences=2, npu_eval_items=2),
         "export-npu", npu_logits)]

    def evaluate(student: Path, name: str) -> dict:
        row = {"float": compare(ref, torch_causal_logits(student, held), held)}
        for qs, target, cfg, folder, logits in files:
            if not qs:
                continue
            for a in export(student, target, cfg, work / name / folder).artifacts:
                if a.quant in qs:
                    row[a.quant] = {**compare(ref, logits(a), held), "verdict": a.status,
                                    "note": a.note} | (
                        {"tensor_types": tensor_types(a.path)} if a.format == "gguf" else {})
        return row

    runs = []
    for use in [u.strip() for u in args.uses.split(",") if u.strip()]:
        for seed in seeds:
            for arm in ["ptq"] + [f"qad:{g}" for g in grids]:
                name = f"{use}-{arm.replace(':', '-')}-seed{seed}"
                t0 = time.time()
                if use == "self" and arm == "ptq":
                    student, metrics = teacher, {"steps": 0}
                else:
                    shutil.rmtree(work / name, ignore_errors=True)
                    qa = {} if arm == "ptq" else {
                        "quant_aware": arm[4:],
                        "quant_aware_share": 1.0 if use == "self" else args.share}
                    cfg = DistillConfig(
                        student=str(teacher) if use == "self" else None,
                        train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                          lr=args.self_lr if use == "self" else args.lr,
                                          eval_every=0, save_every=0, seed=seed,
                                          hidden_weight=args.hidden_weight),
                        data=DataConfig(seq_len=args.seq_len), kd=KDConfig(loss=args.loss),
                        teacher_dtype=args.teacher_dtype, **qa)
                    target = "phone-npu" if arm.startswith("qad:onnx:qdq") else "laptop"
                    res = distill(teacher, target, data, work / name, cfg,
                                  plan_config=PlanConfig())
                    student, metrics = res.student_dir, res.metrics
                row = {"use": use, "arm": arm, "seed": seed, "steps": metrics.get("steps"),
                       "student": str(student), **evaluate(student, name),
                       "quant_aware": metrics.get("quant_aware"),
                       "seconds": round(time.time() - t0, 1)}
                runs.append(row)
                print(json.dumps({k: row.get(k) for k in ("use", "arm", "seed", "float",
                                                          *quants)}, default=str)[:800],
                      file=sys.stderr)

    summary = summarize(runs, grids, seeds)
    cfg = json.loads((teacher / "config.json").read_text())
    doc = {"benchmark": "qad", "measured": True,
           "device": f"{platform.processor() or platform.machine()}, {args.threads} threads",
           "runtime": "llama.cpp CPU (llama-cpp-python), F32 KV cache; files from "
                      "edgedistill export (importance matrix where it helps plain students)"
                      + ("; onnx:int4 files: onnxruntime CPU" if onnx_quants else "")
                      + ("; onnx:qdq files: the phone NPU's fixed prefill graph on "
                         "onnxruntime's CPU provider" if qdq_quants else ""),
           "teacher": {"path": str(teacher), "family": cfg.get("model_type"),
                       "hidden": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
                       "vocab": cfg.get("vocab_size")},
           "heldout": {"sequences": len(held), "data": "standard-library files held out "
                       "(stdlib_source_split)"},
           "settings": {k: getattr(args, k) for k in ("steps", "batch_size", "seq_len", "lr",
                                                      "self_lr", "share", "grids", "distill_chars",
                                                      "teacher_dtype", "loss", "hidden_weight",
                                                      "calibrated_plan")},
           "summary": summary, "runs": runs, "seconds": round(time.time() - t_start, 1)}
    out = Path(args.out or ROOT / "results" / f"qad_{teacher.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    show(summary, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
