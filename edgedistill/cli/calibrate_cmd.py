"""``edgedistill calibrate``: measure this machine's runtimes and fit the latency predictor."""
from __future__ import annotations

import argparse

from edgedistill.cli.table import table
from edgedistill.cli.types import count, positive


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="measure this machine's runtimes; fit the latency predictor",
        description="Build random-weight models of a designed set of shapes, export them the "
        "way a real export does, time them in llama.cpp and onnxruntime, fit the latency "
        "predictor per format, and report its error on held-out shapes. The result is stored "
        "in the cache (keyed by CPU, threads and runtime versions); 'plan' and 'predict' use "
        "it from then on.")
    p.add_argument("--target", default="local",
                   help="'local', or a profile whose prompt length and encoder batch set the "
                   "measured workload (the measuring is always of this machine)")
    p.add_argument("--formats", default=None,
                   help="comma list of gguf:f16, gguf:q8_0, gguf:q4_k_m, onnx:fp32, onnx:int8 "
                   "(causal LMs) and encoder:onnx:fp32, encoder:onnx:int8 (default: all)")
    p.add_argument("--budget-s", type=positive, default=600,
                   help="time budget in seconds (default 600)")
    p.add_argument("--threads", type=count(), default=None, help="runtime threads (default: "
                   "physical cores)")
    p.add_argument("--repeats", type=count(), default=3, help="timed runs per measurement")
    p.add_argument("--out", default=None, help="also write the calibration JSON here")
    return p


def run(args) -> int:
    from edgedistill.calibrate import SUMMARY_HEAD, CalibrateConfig, calibrate, summary_rows
    from edgedistill.plan.predictor import calibration_path
    from edgedistill.cli import emit_json

    cfg = CalibrateConfig(target=args.target, formats=args.formats, budget_s=args.budget_s,
                          threads=args.threads, out=args.out, repeats=args.repeats)
    cal = calibrate(cfg, progress=not args.json)
    path = calibration_path(cal["machine"]["threads"])
    if args.json:
        emit_json({k: v for k, v in cal.items() if k != "points"} | {"path": str(path)})
        return 0
    m = cal["machine"]
    print(f"machine  {m['cpu_model']}, {m['threads']} threads, {m['bandwidth_gbps']:.1f} GB/s")
    print(f"measured {len({p['shape'] for p in cal['points']})} shapes, "
          f"{len(cal['points'])} figures in {cal['seconds']:.0f} s\n")
    print(table(SUMMARY_HEAD, summary_rows(cal)))
    print("\nMAPE: mean absolute error of the predicted time; held out: shapes the fit never "
          "saw; re-measured: the same held-out files timed again at the end (the machine's own "
          f"noise, a floor under any prediction's error).\nStored: {path}")
    return 0
