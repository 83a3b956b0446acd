"""What an interrupted export costs: fresh, killed and resumed, and repeated with nothing to do.

    .venv/bin/python benchmarks/export_resume.py --model "$(.venv/bin/python \
        benchmarks/smollm2_folder.py)" [--kill-after 5] [--out benchmarks/results/export_resume.json]

Runs ``edgedistill export --student MODEL --target laptop`` four times, each in its own process:
1. into a new folder (the reference time and figures);
2. into a second new folder, killed with SIGKILL (with its llama.cpp children) as soon as
   the ``--kill-after``-th artifact's verdict is logged (that one is not recorded yet);
3. again into that folder: it keeps what run 2 verified (see edgedistill/runstate.py) and makes the
   rest;
4. again: everything is kept.
Writes the wall times, which artifacts each run kept, and whether run 3's figures equal run 1's.
Measured on this machine, one run each (not medians: the point is minutes against seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
QUANTS = "fp32,int8,int4,f16,q8_0,q4_k_m,q5_k_m"
LINE = re.compile(r"^\[export\] (\w+):(\w+) .*MiB")


def export_cmd(model: str, out: Path, quants: str, data: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "edgedistill", "export", "--student", model, "--target",
           "laptop", "--quant", quants, "--out", str(out), "--json"]
    return cmd + (["--data", data] if data else [])


def run(cmd: list[str], kill_after: int | None = None) -> dict:
    """Run ``cmd``; with ``kill_after``, SIGKILL its process group once that many artifact
    lines were logged. Returns wall seconds, the artifact lines, kept ones, and the JSON."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    done, kept = [], []
    for line in p.stderr:
        m = LINE.match(line)
        if m:
            done.append(f"{m[1]}:{m[2]}")
            if "[kept:" in line:
                kept.append(done[-1])
            if kill_after and len(done) >= kill_after:
                os.killpg(p.pid, signal.SIGKILL)
                break
    out = p.stdout.read()
    p.wait()
    doc = json.loads(out) if out.strip() and p.returncode in (0, 3) else None
    return {"seconds": round(time.time() - t0, 1), "exit": p.returncode, "artifacts": done,
            "kept": kept, "doc": doc}


def figures(doc: dict) -> dict:
    return {f"{a['format']}:{a['quant']}": a["parity"]["figures"] for a in doc["artifacts"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an HF causal-LM folder")
    ap.add_argument("--data", default=None, help="held-out text (default: stdlib text)")
    ap.add_argument("--quant", default=QUANTS)
    ap.add_argument("--kill-after", type=int, default=5, help="artifacts verified before the kill")
    ap.add_argument("--work", default="/tmp/edgedistill-bench/export_resume")
    ap.add_argument("--out", default=str(ROOT / "results" / "export_resume.json"))
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    fresh = run(export_cmd(args.model, work / "fresh", args.quant, args.data))
    print(f"fresh: {fresh['seconds']} s, exit {fresh['exit']}", file=sys.stderr)
    cmd = export_cmd(args.model, work / "resumed", args.quant, args.data)
    killed = run(cmd, kill_after=args.kill_after)
    print(f"killed after {killed['seconds']} s ({len(killed['artifacts'])} artifacts)",
          file=sys.stderr)
    resumed = run(cmd)
    print(f"resumed: {resumed['seconds']} s, kept {resumed['kept']}", file=sys.stderr)
    repeated = run(cmd)
    print(f"repeated: {repeated['seconds']} s, kept {len(repeated['kept'])}", file=sys.stderr)
    same = (fresh["doc"] is not None and resumed["doc"] is not None
            and figures(fresh["doc"]) == figures(resumed["doc"]))
    result = {
        "benchmark": "export_resume", "measured": True,
        "device": f"{platform.machine()} ({platform.node() or 'this machine'}), "
                  f"{os.cpu_count()} threads",
        "model": args.model, "quant": args.quant,
        "runs": {name: {k: v for k, v in r.items() if k != "doc"}
                 for name, r in (("fresh", fresh), ("killed", killed), ("resumed", resumed),
                                 ("repeated", repeated))},
        "resumed_over_fresh": round(resumed["seconds"] / fresh["seconds"], 3),
        "repeated_over_fresh": round(repeated["seconds"] / fresh["seconds"], 3),
        "resumed_figures_equal_fresh": same,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("resumed_over_fresh", "repeated_over_fresh",
                                             "resumed_figures_equal_fresh")}))
    return 0 if same and fresh["exit"] in (0, 3) else 1


if __name__ == "__main__":
    sys.exit(main())
