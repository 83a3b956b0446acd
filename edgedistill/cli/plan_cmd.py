"""``edgedistill plan``: choose a student for a teacher and a target device, and say why."""
from __future__ import annotations

import argparse
import re

from edgedistill.cli.table import table
from edgedistill.cli.types import count, positive
from edgedistill.errors import EdgeDistillError
from edgedistill.plan import DEFAULT_SPEEDUP, PlanConfig, candidate_table, plan


def parse_count(text: str) -> int:
    """'500M', '1.5B', '2e8' or '123456' -> an int."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", text)
    if not m:
        raise EdgeDistillError(f"--max-params {text!r} is not a number.",
                               "write e.g. --max-params 500M, 1.5B or 120000000")
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="choose a student that fits a device",
                       description="Enumerate student shapes of the teacher's family, predict "
                       "memory and latency on the target, and choose the most capable one that "
                       "fits. Needs only the teacher's config.json.")
    p.add_argument("--teacher", default=None,
                   help="local HF model folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--target", default="laptop",
                   help="profile name, 'local' (measure this machine) or a YAML file "
                   "(default: laptop)")
    p.add_argument("--speedup", type=positive, default=None,
                   help=f"required speedup over the teacher on the target (default "
                   f"{DEFAULT_SPEEDUP:g}, relaxed with a note when out of reach; 1 = targets "
                   "only)")
    p.add_argument("--max-params", default=None, help="cap on student size, e.g. 500M")
    p.add_argument("--deploy", default=None, metavar="FORMAT:QUANT",
                   help="size for this format and quantization (default: the profile's first)")
    p.add_argument("--top", type=count(), default=8, help="rows of the candidate table")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a calibration of this machine (default: the one 'edgedistill "
                   "calibrate' stored in the cache, if any)")
    p.add_argument("--verify", type=count(), default=None, metavar="K",
                   help="check the choice by measurement: build the K candidates around it "
                   "(random weights, the real format) and time them on this machine")
    p.add_argument("--repeats", type=count(), default=5,
                   help="--verify: timed runs per candidate (default 5)")
    p.add_argument("--threads", type=count(), default=None,
                   help="--verify: runtime threads (default: the physical cores)")
    return p


def _verify(args, cfg) -> int:
    from edgedistill.calibrate.verify import verify_plan
    from edgedistill.cli import emit_json
    from edgedistill.report import verify_lines, verify_rows

    doc = verify_plan(args.teacher, args.target, cfg, args.verify, threads=args.threads,
                      repeats=args.repeats)
    if args.json:
        emit_json(doc)
        return 0
    print(table(*verify_rows(doc)))
    print()
    for line in verify_lines(doc):
        print(f"- {line}")
    return 0


def run(args) -> int:
    from edgedistill.cli import emit_json

    cfg = PlanConfig(speedup=args.speedup,
                     max_params=parse_count(args.max_params) if args.max_params else None,
                     deploy=args.deploy, top=args.top, calibration=args.calibration)
    if args.verify is not None:
        return _verify(args, cfg)
    result = plan(args.teacher, args.target, cfg)
    doc = result.to_dict()
    if args.json:
        emit_json(doc)
        return 0
    t, s, d = doc["teacher"], doc["student"], doc["deployment"]
    print(f"target   {doc['target']['name']} ({doc['target']['device']})")
    print(f"deploy   {d['runtime']} {d['format']}:{d['quant']}")
    print(f"teacher  {t['name']}: {t['family']}, {t['params']:,} params")
    print(f"student  {s['family']}, {s['params']:,} params ({s['params_ratio']:.0%} of teacher)")
    print()
    print(table(*candidate_table(doc)))
    print()
    for line in doc["explanation"]:
        print(f"- {line}")
    label = s["predicted"]["label"]
    print(f"\n(figures: {label}, {s['predicted']['basis']}; --json for the student's config)")
    return 0
