"""The consumer-GPU runtimes measured on a real GPU: torch eager vs static cache vs CUDA graphs,
onnxruntime's CUDA provider and llama.cpp's CUDA backend, beside llama.cpp on 2 CPU threads.

    .venv/bin/python benchmarks/gpu_runtimes.py [--hidden 512 --layers 6] [--work DIR]

Needs a CUDA GPU and torch's CUDA build (exit 2 with the reason otherwise); onnxruntime-gpu
and a CUDA build of llama-cpp-python are measured when installed and listed as skipped (with
the reason) when not. Builds a ~28M-parameter llama (the size of the issue's test teacher),
trains it briefly on standard-library source (so greedy decoding does not repeat one token),
exports it for the consumer-gpu profile, and benchmarks every artifact in every runtime
here. Figures for the profile's own card (an 8 GB RTX 4060 class) are predicted: scaled from
the measurement (bench.scaled_to_card states the basis). Then the bundled all-MiniLM-L6-v2
sentence encoder the same way (batches of the profile's size; no card prediction for
encoders), unless --no-encoder. Writes benchmarks/results/gpu_runtimes_<gpu>.json.

In parts, on a machine where a runtime is still being built: ``--formats onnx`` first, then
``--formats gguf --runtimes llama.cpp-cuda --merge`` adds the GGUF rows to the same JSON (the
model is trained once and reused; each format exports into its own folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=150,
                    help="training steps (on the GPU when there is one)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/gpu_runtimes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-encoder", action="store_true", help="skip the MiniLM encoder part")
    ap.add_argument("--formats", default="gguf,onnx", help="export formats (comma list)")
    ap.add_argument("--runtimes", default=None,
                    help="GPU runtimes (comma list; default: every one usable here)")
    ap.add_argument("--merge", action="store_true",
                    help="add to the output JSON's rows instead of replacing the file")
    ap.add_argument("--conditions", default=None,
                    help="what else the machine was doing, recorded on each row of this run")
    args = ap.parse_args()
    formats = tuple(f for f in args.formats.split(",") if f)

    from edgedistill.bench import BenchConfig, bench
    from edgedistill.records import BenchRecord
    from edgedistill.runtimes.cuda import cuda_device, gpu_bandwidth_gbps, runtime_status
    from edgedistill.export import ExportConfig, export
    from edgedistill.machine import cpu_model
    from edgedistill.toy import make_causal_lm

    status = runtime_status()
    gpu = cuda_device()
    if status["torch-cuda"] or not gpu:
        print(f"gpu_runtimes: no CUDA GPU here: {status['torch-cuda']}. Fix: run it on a "
              "machine with an NVIDIA GPU and torch's CUDA build.", file=sys.stderr)
        return 2
    work = Path(args.work)
    model = work / f"llama-h{args.hidden}-l{args.layers}-v{args.vocab}-s{args.steps}"
    t0 = time.time()
    trained = not (model / "config.json").is_file()  # else an earlier part trained it
    if trained:
        make_causal_lm(model, hidden=args.hidden, layers=args.layers, heads=args.hidden // 64,
                       kv_heads=max(1, args.hidden // 128), ffn=3 * args.hidden,
                       vocab=args.vocab, steps=args.steps, seq_len=256, batch=8, lr=2e-3,
                       chars=4_000_000, device="cuda",
                       log=lambda m: print(m, file=sys.stderr))
    train_s = time.time() - t0
    quants = {"gguf": ("f16", "q8_0", "q4_k_m"), "onnx": ("fp16", "int4")}
    t0 = time.time()
    res = export(model, "consumer-gpu",
                 ExportConfig(formats=formats, threads=2,
                              quants=tuple(q for f in formats for q in quants[f])),
                 work / ("export-" + "-".join(formats)))
    export_s = time.time() - t0
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    runtimes = tuple(args.runtimes.split(",")) if args.runtimes else \
        tuple(r for r, why in status.items() if why is None)
    t0 = time.time()
    recs = bench(arts, model, "consumer-gpu",
                 BenchConfig(threads=2, new_tokens=args.new_tokens, repeats=args.repeats,
                             runtimes=runtimes))
    bench_s = time.time() - t0
    params = _params(model)
    rows = []
    for r in recs:
        b = r.bench
        rows.append({
            "artifact": f"{r.format}:{r.quant}", "runtime": b["runtime"],
            "device": b.get("device"), "parity": r.status,
            **{k: b.get(k) for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms",
                                     "p50_ms", "p95_ms", "warmup_s", "tokens_match_eager",
                                     "cudagraph_skips", "note", "error")},
            "predicted_card": r.predicted.get("target"),  # labelled
            **({"conditions": args.conditions} if args.conditions else {}),
        })
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = Path(args.out or ROOT / "results" / f"gpu_runtimes_{slug}.json")
    before = json.loads(out.read_text()) if args.merge and out.is_file() else {}
    if before:  # a row measured now replaces the same (runtime, artifact) measured before
        now = {(x["runtime"], x["artifact"]) for x in rows}
        rows = [x for x in before["rows"] if (x["runtime"], x["artifact"]) not in now] + rows
    by = {(x["runtime"], x["artifact"]): x for x in rows}

    def tps(rt, art):
        return (by.get((rt, art)) or {}).get("decode_tokens_per_s")

    eager, graphs = tps("torch-cuda eager", "hf:fp16"), tps("torch-cuda CUDA graphs", "hf:fp16")
    static = tps("torch-cuda static cache", "hf:fp16")
    measured = {x["runtime"].split()[0] for x in rows}  # "torch-cuda eager" -> torch-cuda
    skipped = {r: why for r, why in {**before.get("runtimes_skipped", {}), **status}.items()
               if why and r not in measured}  # by every part of this benchmark
    doc = {
        "benchmark": "gpu_runtimes", "measured": True, "gpu": gpu,
        "gpu_copy_bandwidth_gbps": gpu_bandwidth_gbps(),
        "host": f"{cpu_model()}, {os.cpu_count()} threads", "software": _software(),
        "seconds": {**(before.get("seconds") or {}),
                    **{f"export {'+'.join(formats)}": round(export_s, 1),
                       f"bench {'+'.join(formats)}": round(bench_s, 1)}},
        "runtimes_skipped": skipped,
        "model": {"family": "llama", "hidden": args.hidden, "layers": args.layers,
                  "vocab": args.vocab, "params": params, "train_steps": args.steps,
                  "train_seconds": round(train_s, 1) if trained or not before
                  else before["model"]["train_seconds"]},
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "cuda_graphs_effect": {
            "eager_tokens_per_s": eager, "static_cache_tokens_per_s": static,
            "cuda_graphs_tokens_per_s": graphs,
            "graphs_over_eager": graphs / eager if eager and graphs else None,
            "graphs_over_static": graphs / static if static and graphs else None},
        "rows": rows,
        "encoder": (before.get("encoder") if args.no_encoder
                    else _encoder(work, runtimes, args.repeats)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"{'runtime':<26} {'artifact':<12} {'decode tok/s':>12} {'prefill tok/s':>13} "
          f"{'card (pred.)':>12}")
    for x in rows:
        card = (x["predicted_card"] or {}).get("decode_tokens_per_s")
        print(f"{x['runtime']:<26} {x['artifact']:<12} "
              f"{_f(x['decode_tokens_per_s']):>12} {_f(x['prefill_tokens_per_s']):>13} "
              f"{_f(card):>12}  {x['error'] or ''}")
    print(json.dumps({"benchmark": "gpu_runtimes", "gpu": gpu, "out": str(out),
                      "cuda_graphs_effect": doc["cuda_graphs_effect"]}))
    return 0


def _encoder(work: Path, runtimes: tuple, repeats: int) -> dict:
    """all-MiniLM-L6-v2 (bundled) exported for consumer-gpu and benched in every runtime."""
    from edgedistill.bench import BenchConfig, bench
    from edgedistill.records import BenchRecord
    from edgedistill.export import ExportConfig, export
    from edgedistill.teacher import load_teacher

    model = load_teacher(None).path
    res = export(model, "consumer-gpu", ExportConfig(quants=("fp16", "int4", "f16", "q8_0"),
                                                     threads=2), work / "minilm")
    arts = [BenchRecord.from_export(a, model) for a in res.artifacts]
    recs = bench(arts, model, "consumer-gpu",
                 BenchConfig(threads=2, repeats=max(repeats, 10), runtimes=runtimes))
    rows = [{"artifact": f"{r.format}:{r.quant}", "runtime": r.bench["runtime"],
             "device": r.bench.get("device"),
             **{k: r.bench.get(k) for k in ("batch_ms", "sentences_per_s", "p95_ms",
                                            "batch", "seq_len", "error")},
             "cosine_to_teacher": r.quality.get("cosine_to_teacher")}
            for r in recs]
    print(f"{'encoder runtime':<26} {'artifact':<12} {'ms/batch':>9} {'sent/s':>8}")
    for x in rows:
        print(f"{x['runtime']:<26} {x['artifact']:<12} {_f(x['batch_ms']):>9} "
              f"{_f(x['sentences_per_s']):>8}  {x['error'] or ''}")
    return {"model": "all-MiniLM-L6-v2 (bundled)", "rows": rows}


def _software() -> dict:
    import torch

    from edgedistill.machine import package_version

    names = ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "llama-cpp-python")
    return {"python": platform.python_version(), "torch_cuda": torch.version.cuda,
            **{n: v for n in names if (v := package_version(n))}}


def _params(model: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
