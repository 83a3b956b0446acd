"""``edgedistill report RUN_DIR``: (re)write report.json, report.md and report.html, and print
the headline; ``edgedistill report --compare RUN RUN ...``: runs side by side."""
from __future__ import annotations

import argparse

from edgedistill.cli.table import table
from edgedistill.errors import EdgeDistillError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a run folder's reports, or compare runs",
                       description="(Re)write report.json, report.md and report.html from a "
                       "run folder's bench.json, plan.json, distill.json and training log, "
                       "and print which file to ship. With --compare, put two or more runs "
                       "side by side instead.")
    p.add_argument("run_dir", nargs="?", help="the run folder (not with --compare)")
    p.add_argument("--compare", nargs="+", metavar="RUN", default=None,
                   help="compare these run folders: each one's recommended file and every "
                   "student format:quant they share, in compare.json/md/html")
    p.add_argument("--out", default="compare", metavar="DIR",
                   help="with --compare: where to write compare.* (default: ./compare)")
    return p


def run(args) -> int:
    from edgedistill.cli import emit_json

    if args.compare:
        from edgedistill.report.compare import compare, compare_tables, write_compare

        runs = ([args.run_dir] if args.run_dir else []) + args.compare
        doc = compare(runs)
        paths = write_compare(args.out, doc)
        if args.json:
            emit_json({"paths": paths} | doc | {"runs": [
                {k: v for k, v in r.items() if k != "rows"} for r in doc["runs"]]})
            return 0
        for title, head, rows in compare_tables(doc):
            print(f"{title}\n{table(head, rows)}\n")
        for k, v in paths.items():
            print(f"{k:5} {v}")
        return 0
    if not args.run_dir:
        raise EdgeDistillError("report needs a run folder.",
                               "write 'edgedistill report RUN_DIR', or '--compare RUN RUN'")
    from edgedistill.report import build_report, recommendation_lines, write_report

    doc = build_report(args.run_dir)
    paths = write_report(args.run_dir, doc)
    if args.json:
        emit_json(paths)
        return 0
    print((doc.get("recommendation") or {}).get("headline", ""))
    for line in recommendation_lines(doc):
        print(f"- {line}")
    for k, v in paths.items():
        print(f"{k:5} {v}")
    return 0
