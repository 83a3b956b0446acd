"""``edgedistill bench ARTIFACT_OR_RUN_DIR`` and ``edgedistill report RUN_DIR``."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgedistill.cli.table import table
from edgedistill.cli.types import count


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure artifacts in their runtimes",
                       description="Measure a run folder's exported artifacts (or one .gguf / "
                       ".onnx file) in the runtimes they deploy to: speed, memory and quality "
                       "from the runtime's own outputs. A run folder gets bench.json.")
    p.add_argument("path", help="run folder, or one artifact file")
    p.add_argument("--target", default="laptop")
    p.add_argument("--model", default=None, help="for a single file: the HF folder it came "
                   "from (default: the file's folder's student/)")
    p.add_argument("--threads", type=count(), default=None)
    p.add_argument("--new-tokens", type=count(), default=64)
    p.add_argument("--repeats", type=count(), default=None,
                   help="timed runs per artifact, median reported (default 15 for encoders, 3 "
                   "for causal LMs)")
    p.add_argument("--data", default=None)
    p.add_argument("--runtime", action="append", default=None,
                   choices=["gpu", "torch-cuda", "onnxruntime-cuda", "llama.cpp-cuda"],
                   help="also measure causal LMs in this GPU runtime (repeatable; gpu: the "
                   "target profile's GPU runtimes). A runtime that cannot run here is an "
                   "error. Default: CPU runtimes, plus on a GPU target those of its GPU "
                   "runtimes this machine has")
    p.add_argument("--qai-hub", action="store_true",
                   help="NPU targets: also compile and profile each QDQ graph on a real phone "
                   "through Qualcomm AI Hub (needs 'pip install qai-hub' and an API token: "
                   "QAI_HUB_API_TOKEN or 'qai-hub configure'); the latencies are recorded as "
                   "measured and calibrate the target's NPU predictions")
    p.add_argument("--device", default=None, metavar="NAME",
                   help="with --qai-hub: the AI Hub device (default: the profile's "
                   "qai_hub_device, e.g. \"Samsung Galaxy S24 (Family)\")")
    return p


def run(args) -> int:
    from edgedistill.bench import BenchConfig, artifacts_of_run, bench
    from edgedistill.records import BenchRecord
    from edgedistill.runstate import atomic_write
    from edgedistill.errors import EdgeDistillError
    from edgedistill.report import main_table
    from edgedistill.cli import emit_json

    path = Path(args.path)
    cfg = BenchConfig(threads=args.threads, new_tokens=args.new_tokens, repeats=args.repeats,
                      data=args.data, runtimes=tuple(args.runtime) if args.runtime else None,
                      qai_hub=args.qai_hub, qai_hub_device=args.device)
    if args.device and not args.qai_hub:
        raise EdgeDistillError("--device names an AI Hub device, used only with --qai-hub.",
                               "add --qai-hub, or drop --device")
    if cfg.runtimes:  # fail before any work when a requested runtime is missing
        from edgedistill.bench import gpu_runtimes
        from edgedistill.profiles import load_profile
        gpu_runtimes(load_profile(args.target), cfg.runtimes, lambda m: None)
    if args.qai_hub:  # no token, no client, no network or an unknown device: before any work
        from edgedistill.bench import phone
        from edgedistill.profiles import resolve_profile
        hub = phone.connect(resolve_profile(args.target), args.device)
    else:
        hub = None
    if path.is_dir():
        arts, teacher = artifacts_of_run(path)
        records = bench(arts, teacher, args.target, cfg, qai_hub=hub)
        atomic_write(path / "bench.json", [r.to_dict() for r in records])
    else:
        if not path.is_file():
            raise EdgeDistillError(f"{path} does not exist.", "pass a run folder or a file")
        fmt = {".gguf": "gguf", ".onnx": "onnx"}.get(path.suffix)
        if fmt is None:
            raise EdgeDistillError(f"{path.name}: not a .gguf or .onnx file.",
                                   "pass an exported artifact or a run folder")
        model = Path(args.model) if args.model else path.parent.parent / "student"
        if not (model / "config.json").is_file():
            raise EdgeDistillError(f"cannot find the HF folder {path.name} came from.",
                                   "pass it with --model PATH")
        quant = path.stem.split(".", 1)[1] if "." in path.stem else (
            "fp32" if fmt == "onnx" else "f16")
        records = bench([BenchRecord(role="student", path=str(path), format=fmt, quant=quant,
                                     model_dir=str(model))], model, args.target, cfg,
                        qai_hub=hub)
    if args.json:
        emit_json([r.to_dict() for r in records])
        return 0
    head, rows = main_table(records)
    print(table(head, rows))
    return 0
