"""The phone NPU's a16w4 file with the S4C grid's per-channel int4 scales against onnxruntime's.

    .venv/bin/python benchmarks/a16w4_scales.py [--teacher DIR]

A student trained quant-aware for qdq_a16w4 gets its 4-bit weights written on the S4C grid
(quantgrid.s4c: s = max|x| / 7 per output channel, q in [-7, 7]), because onnxruntime's own
symmetric int4 range ([-8, 7], s = max|x| / 7.5) has no fixed point: a trained grid could
not survive it. Any other model keeps onnxruntime's scales. This measures what the grid
costs a model that was not trained for it: the same model (default: the 4.2M llama of
benchmarks/qad.py) exported for phone-npu at qdq_a16w4 both ways, each file's fixed prefill graph run by onnxruntime's CPU provider on 32
held-out standard-library sequences, against the float model in torch: KL, top-1 agreement,
held-out loss. Writes benchmarks/results/a16w4_scales.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from qad import compare, npu_file_logits  # noqa: E402  (qad.py's figures, the same way)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="/tmp/edgedistill-bench/export_parity/"
                    "llama-h256-l4-s3000-lr0.001", help="a causal-LM HF folder (default: the "
                    "4.2M llama benchmarks/qad.py builds)")
    ap.add_argument("--eval-sequences", type=int, default=32)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edgedistill-bench/a16w4-scales")
    ap.add_argument("--out", default=str(ROOT / "results" / "a16w4_scales.json"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from edgedistill.convert import npu
    from edgedistill.data import eval_data, stdlib_source_split
    from edgedistill.export import ExportConfig, export
    from edgedistill.profiles import load_profile
    from edgedistill.quantize import qdq
    from edgedistill.runtimes.outputs import torch_causal_logits

    model = Path(args.teacher)
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model}: not an HF folder (run benchmarks/qad.py once to build "
                         "the default)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    heldout = work / "heldout.txt"
    heldout.write_text(stdlib_source_split()[1])
    held, _ = eval_data(AutoTokenizer.from_pretrained(model), False, str(heldout),
                        sequences=args.eval_sequences)
    ref = torch_causal_logits(model, held)
    graphs = npu.graph_shapes(False, load_profile("phone-npu"), args.context)
    plain = qdq.quantize_graph

    def on_s4c(fixed, quant, feeds, trained_grid=False):  # as for a model trained on it
        return plain(fixed, quant, feeds, trained_grid=True)

    rows, t0 = {}, time.time()
    for name, folder, quantize_graph in (
            ("onnxruntime's scales (untrained models)", "onnxruntime", plain),
            ("s4c (quant-aware students)", "s4c", on_s4c)):
        qdq.quantize_graph = quantize_graph
        try:
            res = export(model, "phone-npu",
                         ExportConfig(quants=("qdq_a16w4",), context=args.context,
                                      eval_sequences=2, npu_eval_items=2, resume=False),
                         work / folder)
        finally:
            qdq.quantize_graph = plain
        art = next(a for a in res.artifacts if a.quant == "qdq_a16w4")
        got = npu_file_logits(art, held, graphs, args.threads)
        rows[name] = compare(ref, got, held) | {"check": art.status}
        print(name, {k: round(v, 4) if isinstance(v, float) else v
                     for k, v in rows[name].items()}, file=sys.stderr)
    doc = {"benchmark": "a16w4_scales", "measured": True,
           "device": f"{platform.machine()}, {args.threads} threads",
           "runtime": "onnxruntime CPU provider, the phone NPU's fixed prefill graph",
           "model": str(model), "heldout": {"sequences": len(held),
                                            "data": "standard-library files held out"},
           "context": args.context, "files": rows, "seconds": time.time() - t0}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"benchmark": "a16w4_scales", "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
