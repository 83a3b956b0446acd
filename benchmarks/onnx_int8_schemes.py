"""ONNX int8 of a causal LM: onnxruntime's dynamic int8 against 8-bit MatMulNBits blocks.

    .venv/bin/python benchmarks/onnx_int8_schemes.py --model "$(.venv/bin/python \\
        benchmarks/smollm2_folder.py)" [--repeats 5]

Exports the model to ONNX, then quantizes it two ways: onnxruntime's ``quantize_dynamic``
(per-channel int8 weights, one activation scale per tensor at run time, FFN down projections
float: edgedistill's int8 before), and ``quantize_onnx(..., "int8")`` (8-bit blocks of 32,
activations quantized per block at run time: edgedistill's int8 now). Each is checked against
torch on held-out standard-library text (top-1 agreement, KL) and timed in onnxruntime on this
CPU, interleaved, decode and prefill medians over ``--repeats`` rounds. Writes
benchmarks/results/onnx_int8_schemes.json. Figures: measured, this machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a causal-LM HF folder")
    ap.add_argument("--work", default="/tmp/edgedistill-bench/onnx_int8_schemes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "onnx_int8_schemes.json"))
    args = ap.parse_args()

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgedistill.runtimes.runners import time_artifact
    from edgedistill.bench.timing import summarize_causal
    from edgedistill.data import stdlib_source_split
    from edgedistill.export import ExportConfig, verify_artifact
    from edgedistill.convert.onnx import export_onnx
    from edgedistill.quantize.onnx import quantize_onnx

    model, work = Path(args.model), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    held = work / "heldout.txt"
    held.write_text(stdlib_source_split()[1])
    fp32 = work / "onnx" / "model.onnx"
    if not fp32.is_file():
        export_onnx(model, work / "onnx")
    dynamic = fp32.with_name("model.dynamic-int8.onnx")
    if not dynamic.is_file():
        graph = onnx.load(str(fp32), load_external_data=False).graph
        down = [n.name for n in graph.node if n.op_type == "MatMul" and "down_proj" in n.name]
        quantize_dynamic(fp32, dynamic, weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=down)
    files = {"fp32": fp32, "dynamic_int8": dynamic, "blockwise_int8": quantize_onnx(fp32, "int8")}

    cfg = ExportConfig(data=str(held), eval_sequences=32, threads=args.threads)
    rows = {}
    for name, path in files.items():
        f = verify_artifact(model, path, "onnx", "int8", cfg).figures
        rows[name] = {"size_mib": round(path.stat().st_size / 2**20, 1),
                      "top1_agreement": f["top1_agreement"], "kl": f["kl"], "decode": [],
                      "prefill": []}
    prompt = list(range(100, 228))
    for _ in range(args.repeats):
        for name, path in files.items():
            r = time_artifact(path, "onnx", threads=args.threads, prompt=prompt, new_tokens=32,
                              repeats=1)
            s = summarize_causal(r["runs"], len(prompt), 32)
            rows[name]["decode"].append(s["decode_tokens_per_s"])
            rows[name]["prefill"].append(s["prefill_tokens_per_s"])
    for row in rows.values():
        row["decode_tokens_per_s_median"] = statistics.median(row.pop("decode"))
        row["prefill_tokens_per_s_median"] = statistics.median(row.pop("prefill"))
    d, b = rows["dynamic_int8"], rows["blockwise_int8"]
    doc = {"benchmark": "onnx_int8_schemes", "measured": True,
           "device": f"{platform.processor() or platform.machine()} ({platform.node()}), "
                     f"{args.threads} threads",
           "runtime": "onnxruntime CPU", "model": str(model),
           "heldout": "32 x 128 tokens of held-out standard-library files",
           "timing": f"prompt {len(prompt)} tokens + 32 decoded, medians of {args.repeats} "
                     "interleaved rounds",
           "rows": rows,
           "blockwise_vs_dynamic": {
               "decode_speedup": b["decode_tokens_per_s_median"] / d["decode_tokens_per_s_median"],
               "prefill_speedup": (b["prefill_tokens_per_s_median"]
                                   / d["prefill_tokens_per_s_median"])}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    for name, row in rows.items():
        print(f"{name:<15} {row['size_mib']:7.1f} MiB  top-1 {row['top1_agreement']:.4f}  "
              f"KL {row['kl']:.2g}  decode {row['decode_tokens_per_s_median']:.1f} tok/s  "
              f"prefill {row['prefill_tokens_per_s_median']:.0f} tok/s")
    print(json.dumps({"benchmark": "onnx_int8_schemes", "out": args.out,
                      **doc["blockwise_vs_dynamic"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
