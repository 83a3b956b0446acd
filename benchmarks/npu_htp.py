"""Phone-NPU deployment measured on onnxruntime-qnn's HTP backend (x86 simulation).

    .venv/bin/python benchmarks/npu_htp.py [--encoder runs/demo/student]
        [--causal /tmp/edgedistill-bench/export_parity/llama-h256-l4-split-s4000-t256-lr0.002]

Exports a trained sentence-embedding student (default: the MiniLM student of `make demo`) and a
trained small causal LM (default: the model benchmarks/export_parity.py trains) for the
`phone-npu` profile: fixed-shape graphs, QDQ a16w8 / a8w8 / a16w4, each compiled for the HTP
(Snapdragon 8 Gen 3, v75) with CPU fallback disabled and run on held-out data. Writes
benchmarks/results/npu_htp.json: op coverage, compile seconds, and numerics against the float
model on the HTP and on onnxruntime's CPU provider, and the saved compiled graphs (EPContext: size,
load seconds, outputs against the compiled graph). Simulated run time is not phone latency and
is not reported as such.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_CAUSAL = "/tmp/edgedistill-bench/export_parity/llama-h256-l4-split-s4000-t256-lr0.002"


def summarise(res) -> list[dict]:
    rows = []
    for a in res.artifacts:
        f = a.verdict.figures
        rows.append({
            "quant": a.quant, "status": a.status, "file": a.path.name, "note": a.note,
            "size_bytes": a.path.stat().st_size if a.path.exists() else None,
            "runtime": f.get("runtime"),
            **{k: f[k] for k in ("cosine", "min_cosine", "top1_agreement", "kl",
                                 "decode_top1_agreement", "decode_kl", "tokens",
                                 "decode_tokens", "sentences", "cpu_qdq") if k in f},
            "graphs": f.get("htp"), "failures": a.verdict.failures,
        })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="runs/demo/student")
    ap.add_argument("--causal", default=DEFAULT_CAUSAL)
    ap.add_argument("--items", type=int, default=16, help="held-out items run on the HTP")
    ap.add_argument("--context", type=int, default=None,
                    help="KV slots of the causal graphs (default: the profile's)")
    ap.add_argument("--work", default="/tmp/edgedistill-bench/npu_htp")
    ap.add_argument("--out", default=str(ROOT / "results" / "npu_htp.json"))
    args = ap.parse_args()

    from edgedistill.data import stdlib_source_split
    from edgedistill.export import ExportConfig, export

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "npu_htp", "measured": True, "profile": "phone-npu",
           "device": f"{platform.machine()} host, 2 threads; HTP v75 / SoC 57 (SM8650) "
                     "simulated by onnxruntime-qnn 2.7.0",
           "latency": "not measured: simulated HTP time on x86 says nothing about the phone; "
                      "phone latency is the planner's prediction (labelled predicted)",
           "models": {}}
    for kind, model in (("encoder", args.encoder), ("causal", args.causal)):
        if not model or not (Path(model) / "config.json").is_file():
            doc["models"][kind] = {"skipped": f"no model folder at {model}"}
            continue
        data = None
        if kind == "causal":  # held-out files of the text it was trained on
            held = work / "heldout.txt"
            held.write_text(stdlib_source_split()[1])
            data = str(held)
        cfg = ExportConfig(data=data, eval_sequences=args.items, eval_sentences=64,
                           npu_eval_items=args.items, context=args.context, threads=2)
        t0 = time.time()
        res = export(model, "phone-npu", cfg, work / kind)
        doc["models"][kind] = {"model": str(model), "seconds": round(time.time() - t0, 1),
                               "artifacts": summarise(res)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
    for kind, m in doc["models"].items():
        for r in m.get("artifacts", []):
            fig = r.get("cosine", r.get("top1_agreement"))
            print(f"{kind:<8} {r['quant']:<10} {r['status']:<7} {fig:.4f}  "
                  f"cpu-qdq {r.get('cpu_qdq')}")
    print(json.dumps({"benchmark": "npu_htp", "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
