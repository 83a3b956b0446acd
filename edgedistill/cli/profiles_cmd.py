"""``edgedistill profiles [NAME] [--json]``: list the device profiles, or show one."""
from __future__ import annotations

import argparse

from edgedistill.cli.table import table
from edgedistill.profiles import list_profiles, load_profile


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("profiles", help="list device profiles (or show one)",
                       description="List the shipped device profiles, or show one in full. "
                       "'local' measures this machine; a path shows a YAML file of your own.")
    p.add_argument("name", nargs="?", help="profile name, 'local', or a YAML file to show")
    return p


def run(args) -> int:
    from edgedistill.cli import emit_json

    if args.name:
        prof = load_profile(args.name)
        if args.json:
            emit_json(prof.to_dict())
            return 0
        d = prof.to_dict()
        for k, v in d.items():
            print(f"{k:16} {v}")
        return 0
    profs = list_profiles()
    if args.json:
        emit_json({"profiles": [p.to_dict() for p in profs]})
        return 0
    rows = [[p.name, p.kind, f"{p.memory.budget_gb:g}", f"{p.memory.bandwidth_gbps:g}",
             p.primary_runtime, f"{p.primary_format}:{p.primary_quant}",
             f"{p.latency_targets.decode_tokens_per_s:g}",
             "static" if p.constraints.static_shapes else "dynamic", p.description]
            for p in profs]
    print(table(["name", "kind", "mem GB", "BW GB/s", "runtime", "default", "tok/s target",
                 "shapes", "device"], rows))
    print("\n'local' measures this machine (edgedistill profiles local); "
          "--target also takes a YAML file of your own.")
    return 0
