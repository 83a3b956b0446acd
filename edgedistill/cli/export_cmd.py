"""``edgedistill export --student PATH``: export an HF model for a target, quantize it, and
verify every artifact against torch."""
from __future__ import annotations

import argparse

from .table import table


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a model to ONNX/GGUF and verify every file",
                       description="Export an HF model folder for a target device: ONNX and/or "
                       "GGUF, quantized as the profile allows, each file run in its runtime and "
                       "compared with torch. Exit status 3 when any artifact fails its check.")
    p.add_argument("--student", required=True, help="HF model folder to export")
    p.add_argument("--target", default="laptop", help="profile name, 'local' or a YAML file")
    p.add_argument("--formats", default=None, help="comma list: onnx,gguf (default: profile's)")
    p.add_argument("--quant", default=None,
                   help="comma list of quantizations, e.g. q4_k_m,int8 (default: all the "
                   "profile allows)")
    p.add_argument("--data", default=None, help="text for verification and QDQ calibration "
                   "(default: Python standard-library text)")
    p.add_argument("--out", default=None, help="output folder (default: next to the student)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads")
    return p


def run(args) -> int:
    from ..export import ExportConfig, export  # heavy (numpy, onnx): only when exporting
    from . import emit_json

    cfg = ExportConfig(formats=_csv(args.formats), quants=_csv(args.quant), data=args.data,
                       threads=args.threads)
    res = export(args.student, args.target, cfg, args.out)
    doc = res.to_dict()
    if args.json:
        emit_json(doc)
        return 0 if res.passed else 3
    rows = []
    for a in doc["artifacts"]:
        f = a["parity"]["figures"]
        rows.append([a["format"], a["quant"], f"{(a['size_bytes'] or 0) / 2**20:.1f}",
                     _fmt(f.get("max_abs_diff")), _fmt(f.get("top1_agreement")),
                     _fmt(f.get("kl")), _fmt(f.get("cosine")), a["status"],
                     "; ".join(a["parity"]["failures"]) or a["note"]])
    print(table(["format", "quant", "MiB", "max|diff|", "top-1", "KL", "cosine", "status",
                 "notes"], rows))
    tp = doc["tokenizer_parity"]
    if tp:
        print(f"\nGGUF tokenizer parity: {'passed' if tp['passed'] else 'FAILED'} "
              f"({tp['cases']} probe texts, {tp['mismatches']} mismatches)")
    print(f"\nwrote {res.out_dir}/export.json; all checks "
          f"{'passed' if res.passed else 'did NOT pass'} (figures measured against torch)")
    return 0 if res.passed else 3


def _fmt(x) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.4f}"
