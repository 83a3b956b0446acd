"""``edgedistill export --student PATH``: export an HF model for a target, quantize it, and
verify every artifact against torch."""
from __future__ import annotations

import argparse
import dataclasses
import json

from edgedistill.cli.options import (_given, add_distill_options, add_plan_options,
                                     distill_config, plan_config, training_dests)
from edgedistill.cli.table import table
from edgedistill.cli.types import count


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="the whole chain, or export one model (--student)",
                       description="Without --student: the whole chain for a teacher and a "
                       "target (plan, distill, export, quantize, verify, benchmark, report) into "
                       "--out. With --student: export that HF folder for the target: ONNX "
                       "and/or GGUF, quantized as the profile allows, each file run in its "
                       "runtime and compared with torch: 'passed' (meets the quality "
                       "targets), 'below-target' (usable, loses more than the targets allow) "
                       "or 'failed' (broken). Either way, exit status 3 when a file failed (with "
                       "--strict: or is below target); the whole chain still writes its "
                       "report.")
    p.add_argument("--student", default=None, help="export this HF model folder only")
    p.add_argument("--teacher", default=None, action="append",
                   help="teacher for the whole chain (default: the bundled all-MiniLM-L6-v2); "
                   "repeat it for several teachers (the largest is the baseline)")
    add_distill_options(p)
    add_plan_options(p)
    p.add_argument("--new-tokens", type=count(), default=None,
                   help="decoded tokens per benchmark run (default 64)")
    p.add_argument("--repeats", type=count(), default=None,
                   help="benchmark runs per artifact, median reported (default 15 for encoders, "
                   "3 for causal LMs)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not export and measure the teacher too")
    p.add_argument("--no-quant-aware", action="store_const", const=True, default=None,
                   help="never train quant-aware (default: on where a deployed file loses "
                   "measurably and has a training grid: the laptop's Q4_K_M, the phone NPU's "
                   "a8w8, for causal LMs)")
    p.add_argument("--compare-ptq", action="store_const", const=True, default=None,
                   help="also distil the same student for the same steps without quant-aware "
                   "training, export and measure it (role student-ptq); the report sets the "
                   "two side by side")
    p.add_argument("--verify-plan", type=count(), default=None, metavar="K",
                   help="check the planner's choice by timing the K candidates around it on "
                   "this machine (plan --verify); the report shows it")
    p.add_argument("--target", default="laptop", help="profile name, 'local' or a YAML file")
    p.add_argument("--formats", default=None, help="comma list: onnx,gguf (default: profile's)")
    p.add_argument("--quant", default=None,
                   help="comma list of quantizations, e.g. q4_k_m,int8 (default: all the "
                   "profile allows)")
    p.add_argument("--data", default=None, help="text for verification and QDQ calibration "
                   "(default: Python standard-library text)")
    p.add_argument("--out", default=None, help="output folder (default: next to the student)")
    p.add_argument("--threads", type=count(), default=None, help="runtime threads")
    p.add_argument("--context", type=count(2), default=None,
                   help="NPU profiles: KV-cache slots of the fixed graphs (default: the "
                        "profile's context_length)")
    p.add_argument("--npu-items", type=count(), default=None,
                   help="NPU profiles: held-out items run on the HTP (its simulation is slow; "
                   "default 16)")
    p.add_argument("--no-imatrix", action="store_true",
                   help="GGUF: quantize without an importance matrix from the calibration text")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 3 when a file is below its quality targets too, "
                        "not only when one is broken")
    p.add_argument("--no-npu-context", action="store_true",
                   help="NPU profiles: do not save the compiled HTP graphs (*.qnn-ctx.onnx)")
    p.add_argument("--fresh", action="store_true",
                   help="redo every file, even those an earlier export into --out wrote and "
                        "verified from the same inputs (by default they are kept)")
    return p


def export_config(args):
    from edgedistill.export import ExportConfig  # heavy (numpy, onnx): only when exporting

    return ExportConfig(formats=_csv(args.formats), quants=_csv(args.quant), data=args.data,
                        threads=args.threads, context=args.context,
                        npu_context=not args.no_npu_context, importance=not args.no_imatrix,
                        resume=not args.fresh, **_given(args, npu_eval_items="npu_items"))


def run_config(args):
    """The whole chain's RunConfig from the flags: a flag not given leaves the config's
    default, so this equals what ``pipeline.run()`` does from Python."""
    from edgedistill.bench import BenchConfig
    from edgedistill.pipeline import RunConfig

    export = export_config(args)
    streamed = bool(getattr(args, "stream", None))
    if streamed:  # the files are checked on the stream's held-out documents (pipeline.run)
        export = dataclasses.replace(export, data=None)
    return RunConfig(plan=plan_config(args), distill=distill_config(args), export=export,
                     bench=BenchConfig(**_given(args, threads="threads",
                                                new_tokens="new_tokens", repeats="repeats",
                                                **({} if streamed else {"data": "data"}))),
                     baselines=not args.no_baselines, quant_aware=not args.no_quant_aware,
                     compare_ptq=bool(args.compare_ptq), **_given(args, verify_plan="verify_plan"))


def run(args) -> int:
    from edgedistill.cli import emit_json
    from edgedistill.export import export

    if args.student is None:
        return _pipeline(args)
    _no_training_flags(args)
    res = export(args.student, args.target, export_config(args), args.out)
    doc = res.to_dict()
    code = _exit_code((a.status for a in res.artifacts), args.strict)
    if args.json:
        emit_json(doc)
        return code
    rows = []
    for a in doc["artifacts"]:
        f = a["parity"]["figures"]
        rows.append([a["format"], a["quant"], f"{(a['size_bytes'] or 0) / 2**20:.1f}",
                     _fmt(f.get("max_abs_diff")), _fmt(f.get("top1_agreement")),
                     _fmt(f.get("kl")), _fmt(f.get("cosine")), a["status"],
                     "; ".join(a["parity"]["failures"] + [a["note"]] * bool(a["note"]))])
    print(table(["format", "quant", "MiB", "max|diff|", "top-1", "KL", "cosine", "status",
                 "notes"], rows))
    tp = doc["tokenizer_parity"]
    if tp:
        print(f"\nGGUF tokenizer parity: {'passed' if tp['passed'] else 'FAILED'} "
              f"({tp['cases']} probe texts, {tp['mismatches']} mismatches)")
    by = {s: [f"{a['format']}:{a['quant']}" for a in doc["artifacts"] if a["status"] == s]
          for s in ("below-target", "failed", "error")}
    for n in doc["notes"]:
        print(f"\nnote: {n}")
    print(f"\nwrote {res.out_dir}/export.json (figures measured against torch)")
    kept = [f"{a['format']}:{a['quant']}" for a in doc["artifacts"]
            if a["verified"]["earlier_run"]]
    if kept:
        print(f"kept from an earlier export into this folder (same inputs, files unchanged, "
              f"verified then): {', '.join(kept)}; --fresh redoes them")
    if res.passed:
        print("every file met its quality targets")
    if by["below-target"]:
        print(f"below target (usable, but losing more than the targets allow): "
              f"{', '.join(by['below-target'])}" + ("" if args.strict else
                                                    "; --strict makes this an error"))
    if by["failed"] or by["error"]:
        print(f"FAILED (broken, do not deploy): {', '.join(by['failed'] + by['error'])}")
    return code


def _exit_code(statuses, strict: bool) -> int:
    """3 when a file failed its verification or could not run (``strict``: or is below
    target), else 0: the same rule for ``--student`` and the whole chain."""
    bad = {"failed", "error"} | ({"below-target"} if strict else set())
    return 3 if any(s in bad for s in statuses) else 0


def _fmt(x) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.4f}"


def _no_training_flags(args) -> None:
    """``--student`` exports a folder: a training or planning flag would be silently ignored."""
    from edgedistill.errors import EdgeDistillError

    chain_only = ["new_tokens", "repeats", "verify_plan", "no_quant_aware", "compare_ptq"]
    given = [f"--{k.replace('_', '-')}" for k in training_dests() + chain_only
             if getattr(args, k) is not None]
    if args.teacher is not None:
        given.insert(0, "--teacher")
    if given:
        raise EdgeDistillError(f"--student exports that folder as it is; {', '.join(given)} "
                               "only apply to the whole chain.",
                               f"drop {', '.join(given)}, or drop --student to distil first")


def _pipeline(args) -> int:
    from edgedistill.cli import emit_json
    from edgedistill.pipeline import run
    from edgedistill.report import main_table, recommendation_lines

    paths = run(args.teacher, args.target, args.data, args.out or "runs/run", run_config(args))
    doc = json.loads(open(paths["json"]).read())
    code = _exit_code(((a.get("parity") or {}).get("status") for a in doc["artifacts"]),
                      args.strict)  # student and baseline files alike
    if args.json:
        emit_json(doc)
        return code
    head, rows = main_table(doc["artifacts"], doc.get("frontier"), doc.get("judged"))
    print(table(head, rows))
    for n in doc.get("notes", []):
        print(f"- {n}")
    print(f"\n{(doc.get('recommendation') or {}).get('headline', '')}")
    for line in recommendation_lines(doc):
        print(f"- {line}")
    print(f"\nreport: {paths['html']}")
    return code
