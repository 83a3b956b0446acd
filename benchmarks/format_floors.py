"""How much of each GGUF file's loss is the format's own weight rounding, and how much is
llama.cpp's arithmetic: the floor under the export issue's goals.

    .venv/bin/python benchmarks/format_floors.py --model DIR [--quants f16,q8_0,q4_k_m]

For each quantization, three llama.cpp CPU runs on the same held-out tokens, each judged
against the torch model (fp32) with the figures export verification uses:

- ``file``: the file as llama.cpp quantizes it (plain, no importance matrix), run as users run
  it. Its matmuls round the activations too: to fp16 for F16 weights, to 8-bit blocks of 32
  (Q8_K blocks of 256 for k-quants) for the others.
- ``weights_only``: the same file's weights decoded back to F32 (``quantize.gguf.decode_gguf``)
  and run at F32: the loss of the weights alone, which no runtime setting can undo.
- ``f32``: the unrounded model written as an F32 GGUF: what the writer and llama.cpp's F32
  arithmetic add on their own.

It also records how close the torch model's own top two tokens are where top-1 agreement is
counted (``torch_top2_margin``): a position whose two best logits are 0.01 apart swaps under
any rounding. Writes benchmarks/results/format_floors_<model>.json. Figures: measured (this
machine, llama.cpp CPU), not predicted.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a causal-LM HF folder (llama/qwen2/...)")
    ap.add_argument("--data", help="held-out text; default: the standard-library files "
                                   "export_parity.py holds out")
    ap.add_argument("--quants", default="f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0")
    ap.add_argument("--eval-sequences", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/format_floors")
    ap.add_argument("--out", help="default: benchmarks/results/format_floors_<model>.json")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from edgedistill.data import stdlib_source_split
    from edgedistill.data import eval_data
    from edgedistill.convert.gguf import export_gguf
    from edgedistill.verify.parity import logit_figures
    from edgedistill.runtimes.outputs import gguf_causal_logits, torch_causal_logits
    from edgedistill.quantize.gguf import decode_gguf, quantize_gguf

    model = Path(args.model)
    work = Path(args.work) / model.name
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if not data:
        data = str(work / "heldout.txt")
        Path(data).write_text(stdlib_source_split()[1])
    tok = AutoTokenizer.from_pretrained(model)
    held, _ = eval_data(tok, False, data, sequences=args.eval_sequences)
    ref = torch_causal_logits(model, held)
    top2 = np.sort(np.concatenate(ref), axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]

    def figures(path: Path) -> dict:
        f = logit_figures(ref, gguf_causal_logits(path, held, args.threads, kv_f32=True))
        return {k: float(f[k]) for k in ("max_abs_diff", "max_abs_logit", "top1_agreement",
                                         "kl")}

    t0 = time.time()
    f32 = export_gguf(model, work / "model.f32.gguf", "f32")
    rows = [{"quant": "f32", "file": figures(f32)}]
    print(f"f32: {rows[0]['file']}", file=sys.stderr)
    for q in [q.strip() for q in args.quants.split(",") if q.strip()]:
        path = work / f"model.{q}.gguf"
        if q in ("f16", "bf16"):
            export_gguf(model, path, q)
        else:
            quantize_gguf(f32, q, path, args.threads)
        decoded = work / f"model.{q}.as-f32.gguf"
        types = decode_gguf(path, decoded)
        row = {"quant": q, "tensor_types": types, "file": figures(path),
               "weights_only": figures(decoded)}
        decoded.unlink()
        path.unlink()
        rows.append(row)
        print(f"{q}: file {row['file']}\n{'':>{len(q)}}  weights only {row['weights_only']}",
              file=sys.stderr)
    f32.unlink()

    print(f"{'gguf':<8} {'max|diff| file':>15} {'weights only':>13} {'top-1 file':>11} "
          f"{'weights only':>13} {'KL file':>9} {'weights only':>13}")
    for r in rows:
        w = r.get("weights_only", {})
        print(f"{r['quant']:<8} {r['file']['max_abs_diff']:15.4g} "
              f"{w.get('max_abs_diff', float('nan')):13.4g} "
              f"{r['file']['top1_agreement']:11.4f} {w.get('top1_agreement', float('nan')):13.4f} "
              f"{r['file']['kl']:9.2g} {w.get('kl', float('nan')):13.2g}")
    cfg = json.loads((model / "config.json").read_text())
    doc = {
        "benchmark": "format_floors", "measured": True,
        "device": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "runtime": "llama.cpp CPU (llama-cpp-python), F32 KV cache as export verification",
        "model": {"path": str(model), "family": cfg.get("model_type"),
                  "hidden": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
                  "vocab": cfg.get("vocab_size")},
        "heldout": {"sequences": len(held), "tokens": int(margin.size),
                    "data": args.data or "standard-library files held out by export_parity.py"},
        "torch_top2_margin": {f"share_below_{d:g}": float((margin < d).mean())
                              for d in (0.01, 0.05, 0.1)},
        "quantization": "llama.cpp's plain quantization (no importance matrix)",
        "rows": rows, "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out or ROOT / "results" / f"format_floors_{model.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps({"benchmark": "format_floors", "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
