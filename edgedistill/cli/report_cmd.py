"""``edgedistill report RUN_DIR``: (re)write report.json, report.md and report.html."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a run folder's reports",
                       description="(Re)write report.json, report.md and report.html from a "
                       "run folder's bench.json and plan.json.")
    p.add_argument("run_dir")
    return p


def run(args) -> int:
    from edgedistill.pipeline import report
    from edgedistill.cli import emit_json

    paths = report(args.run_dir)
    if args.json:
        emit_json(paths)
    else:
        for k, v in paths.items():
            print(f"{k:5} {v}")
    return 0
