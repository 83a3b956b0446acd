"""Which student shapes of the main job's MiniLM teacher reach which speed, measured, against
what the laptop profile's cost model predicts for them.

    .venv/bin/python benchmarks/encoder_shapes.py [--run-dir runs/demo-bench]
        [--shapes 3x1024,3x768,3x512,2x1536,2x1024,4x512,6x1024x256,4x1024x256]

A shape is LAYERSxFFN or LAYERSxFFNxHIDDEN (heads of 32 dimensions, as the teacher's). Each is
built with random weights and the teacher's tokenizer, written as the export writes ONNX int8
(dynamic, per channel, the FFN output projection kept float) and timed as the bench times the
demo's files: the teacher's int8 file from a finished demo run (``--run-dir``) and every shape
in turn in one onnxruntime process, 2 threads, 15 runs cycling through 5 batches of 32
sentences (held-out training text and news in turn, each padded to its longest sentence,
tokenizing included), medians. The demo's own trained student is timed beside them (weights
do not change an int8 file's speed).

Then the laptop profile's cost model predicts each shape's speedup over the teacher at the
bench's padded length, without and with its ONNX encoder overhead terms
(``cost_model.encoder_token_us``, ``encoder_layer_token_us``), and a least-squares fit of
measured = k x predicted (roofline only) + per-token + per-token-per-layer overheads says
what those terms should be, in the profile's own time scale (divided by k). Writes
benchmarks/results/encoder_shapes.json. Everything is measured on this machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_SHAPES = "3x1024,3x768,3x512,2x1536,2x1024,4x512,6x1024x256,4x1024x256"


def shape_config(tcfg: dict, name: str) -> dict:
    layers, ffn, *hidden = (int(v) for v in name.split("x"))
    cfg = dict(tcfg, num_hidden_layers=layers, intermediate_size=ffn)
    if hidden:
        cfg |= {"hidden_size": hidden[0], "num_attention_heads": hidden[0] // 32}
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/demo-bench")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--work", default="runs/encoder-shapes")
    ap.add_argument("--out", default=str(ROOT / "results" / "encoder_shapes.json"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from edgedistill.arch import shape_from_config
    from edgedistill.bench import TIMED_BATCHES, _time_encoders, length_mix
    from edgedistill.calibrate import _artifact
    from edgedistill.data import eval_data
    from edgedistill.english import EVAL_SENTENCES, heldout_sentences
    from edgedistill.plan.costmodel import predict
    from edgedistill.profiles import resolve_profile
    from edgedistill.student import build_student

    run, work = Path(args.run_dir), Path(args.work)
    teacher_int8 = run / "export" / "teacher" / "onnx" / "model.int8.onnx"
    if not teacher_int8.is_file():
        sys.exit(f"error: no {teacher_int8}. Fix: run benchmarks/demo_minilm.py (or make "
                 f"demo DEMO_OUT={run}) first")
    teacher = Path(json.loads((run / "plan.json").read_text())["teacher"]["path"])
    tcfg = json.loads((teacher / "config.json").read_text())
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    arts = [{"name": "teacher", "path": str(teacher_int8), "format": "onnx",
             "model_dir": str(teacher), "config": tcfg},
            {"name": "demo student (trained)", "format": "onnx",
             "path": str(run / "export" / "student" / "onnx" / "model.int8.onnx"),
             "model_dir": str(run / "student"),
             "config": json.loads((run / "student" / "config.json").read_text())}]
    for name in names:
        cfg = shape_config(tcfg, name)
        hf = work / name / "hf"
        if not (hf / "config.json").is_file():
            build_student(teacher, cfg, hf, init="random")
        arts.append({"name": name, "path": str(_artifact(work, hf, "onnx", "int8", 2)),
                     "format": "onnx", "model_dir": str(hf), "config": cfg})

    tok = AutoTokenizer.from_pretrained(teacher)
    held, _ = eval_data(tok, True, None, sequences=8, seq_len=128)
    texts = length_mix(list(held), list(heldout_sentences()[:EVAL_SENTENCES]),
                       32 * TIMED_BATCHES)
    lens = [len(x) for x in tok(texts, truncation=True, max_length=128)["input_ids"]]
    padded = round(statistics.mean(max(lens[i:i + 32]) for i in range(0, len(lens), 32)))
    raw = _time_encoders(arts, list(range(len(arts))), 2, 15, texts, 128, 32, 900)
    ms = [statistics.median(raw[k]["batch_s"]) * 1e3 for k in range(len(arts))]

    prof = resolve_profile("laptop")
    lt = dataclasses.replace(prof.latency_targets, encoder_seq_len=padded)
    bare = dataclasses.replace(prof.cost_model, encoder_token_us=0.0, encoder_layer_token_us=0.0)
    with_terms = dataclasses.replace(prof, latency_targets=lt)
    without = dataclasses.replace(with_terms, cost_model=bare)

    def pred(cfg, p):
        return predict(shape_from_config(cfg), p, "onnx", "int8").encoder_batch_ms

    rows = []
    for a, m in zip(arts, ms):
        rows.append({"shape": a["name"], "layers": a["config"]["num_hidden_layers"],
                     "ffn": a["config"]["intermediate_size"],
                     "hidden": a["config"]["hidden_size"],
                     "batch_ms": round(m, 2), "speedup": round(ms[0] / m, 3),
                     "predicted_speedup_roofline": round(
                         pred(tcfg, without) / pred(a["config"], without), 3),
                     "predicted_speedup": round(
                         pred(tcfg, with_terms) / pred(a["config"], with_terms), 3)})
        print(json.dumps(rows[-1]), flush=True)
    fit_rows = [r for r in rows if r["shape"] != "demo student (trained)"]
    tokens = 32 * padded
    A = np.array([[pred(a["config"], without), tokens, tokens * a["config"]["num_hidden_layers"]]
                  for a in arts if a["name"] != "demo student (trained)"])
    y = np.array([r["batch_ms"] for r in fit_rows])
    (k, per_tok, per_tok_layer), *_ = np.linalg.lstsq(A, y, rcond=None)
    fitted = A @ np.array([k, per_tok, per_tok_layer])
    doc = {"benchmark": "encoder_shapes", "machine": platform.processor() or platform.machine(),
           "threads": 2, "repeats": 15, "batches": TIMED_BATCHES, "padded_len": padded,
           "run_dir": str(run), "rows": rows,
           "fit": {"k": float(k),
                   "encoder_token_us": float(per_tok / k * 1e3),
                   "encoder_layer_token_us": float(per_tok_layer / k * 1e3),
                   "max_rel_error": float(np.max(np.abs(fitted / y - 1))),
                   "note": "measured ms = k x roofline ms + tokens x (a + layers x b); the "
                           "profile's terms are a / k and b / k (its own time scale)"},
           "profile_terms": {"encoder_token_us": prof.cost_model.encoder_token_us,
                             "encoder_layer_token_us": prof.cost_model.encoder_layer_token_us}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    print(json.dumps(doc["fit"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
