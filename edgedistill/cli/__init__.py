"""The ``edgedistill`` command: one module per verb, each a thin layer over the Python API.

Contracts: ``--json`` prints exactly one JSON document on stdout (logs go to stderr); exit 0 on
success, 2 on a user error (one line with the fix, no traceback), 1 on an internal error
(traceback only with ``EDGEDISTILL_DEBUG=1``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from edgedistill.cli import (bench_cmd, calibrate_cmd, distill_cmd, export_cmd, plan_cmd,
                             predict_cmd, profiles_cmd, report_cmd)
from edgedistill.errors import EdgeDistillError

VERBS = (profiles_cmd, plan_cmd, predict_cmd, calibrate_cmd, distill_cmd, export_cmd, bench_cmd,
         report_cmd)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors follow our contract: one line, exit 2."""

    def error(self, message: str):  # noqa: D401
        raise EdgeDistillError(f"{self.prog}: {message}.", f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    from edgedistill.version import __version__

    p = _Parser(prog="edgedistill",
                description="Distil a model for a device, export it, and measure it there.")
    p.add_argument("--version", action="version", version=f"edgedistill {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for verb in VERBS:
        sp = verb.add_parser(sub)
        sp.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of tables")
        sp.set_defaults(_run=verb.run)
    return p


def emit_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    want_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return args._run(args) or 0
    except EdgeDistillError as e:
        if want_json:
            emit_json(e.to_dict())
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so, keep the traceback for those who ask
        if os.environ.get("EDGEDISTILL_DEBUG") == "1":
            traceback.print_exc()
        else:
            print(f"internal error: {type(e).__name__}: {e} (set EDGEDISTILL_DEBUG=1 for the "
                  "traceback, and please report it)", file=sys.stderr)
        if want_json:
            emit_json({"error": "InternalError", "message": f"{type(e).__name__}: {e}"})
        return 1
