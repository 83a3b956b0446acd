"""``edgedistill predict``: decode/prefill speed (or encoder batch time) and memory of any
student shape, from the predictor that ``plan`` uses."""
from __future__ import annotations

import argparse

from edgedistill.cli.table import table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="predict speed and memory of a model shape on a device",
                       description="Predict decode_tokens_per_s (the runtime's decode "
                       "step), generate_tokens_per_s (GGUF: llama-cpp-python's generate loop), "
                       "prefill_tokens_per_s and "
                       "memory_gb (encoders: ms per batch) of the shape in an HF config.json, "
                       "deployed as FORMAT on the target. Labelled calibrated, predicted or "
                       "uncalibrated, as in 'plan'.")
    p.add_argument("--config", required=True, help="an HF config.json (or its folder)")
    p.add_argument("--target", default="local", help="profile name, 'local' or a YAML file")
    p.add_argument("--format", required=True, dest="fmt", metavar="FORMAT:QUANT",
                   help="e.g. gguf:q4_k_m, gguf:f16, onnx:int8")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a calibration of this machine (default: the cached one, if any)")
    return p


def run(args) -> int:
    from edgedistill.plan.predictor import predict_config as predict
    from edgedistill.cli import emit_json

    pred = predict(args.config, args.target, args.fmt, calibration=args.calibration)
    if args.json:
        emit_json(pred)
        return 0
    rows = [[k + _WHAT.get(k, ""), "-" if v is None else
             (f"{v:.4g}" if isinstance(v, float) else v)]
            for k, v in pred.items() if k in _SHOWN]
    print(table(["figure", "value"], rows))
    print(f"\n({pred['label']}: {pred['basis']})")
    return 0


_WHAT = {"decode_tokens_per_s": " (the runtime's decode step)",
         "generate_tokens_per_s": " (llama-cpp-python's generate loop)"}
_SHOWN = ("model", "target", "format", "decode_tokens_per_s", "generate_tokens_per_s",
          "prefill_tokens_per_s",
          "prefill_ms", "encoder_batch_ms", "sentences_per_s", "memory_gb", "weights_gb",
          "fallback_note")
