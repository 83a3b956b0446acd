"""Where the main job's speed can come from: ONNX int8 variants of the student and teacher.

    .venv/bin/python benchmarks/encoder_speed.py [--run-dir runs/demo-bench]

Takes a finished demo run's float ONNX files (student and teacher) and makes, for both:

- ``int8``: as export writes it (onnxruntime dynamic int8, per channel, the FFN's output
  projection kept float for its activation outliers; re-made here, the same settings);
- ``int8-all``: every MatMul in int8, the output projections included;
- ``fused+int8``: onnxruntime's transformer optimizer first (Attention, SkipLayerNorm, BiasGelu
  fusions for BERT), then the same int8 as ``int8``;
- ``fused+int8-all``.

Each file is timed as the bench times it: 4 batches of 32 sentences (held-out training text
and general English in turn), each padded to its longest sentence, tokenizing included,
2 threads; student and teacher of one variant alternate in one process, 15 runs, medians.
Quality: mean cosine of each file's embeddings to the teacher's torch embeddings on 256
general-English sentences. Writes benchmarks/results/encoder_speed.json.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def make_variants(src: Path, out: Path, heads: int, hidden: int) -> tuple[dict, dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    import onnx

    out.mkdir(parents=True, exist_ok=True)
    fused = out / "fused.onnx"
    if not fused.exists():
        m = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden)
        m.save_model_to_file(str(fused))
    files = {}
    for base, name in ((src, "int8"), (fused, "fused+int8")):
        graph = onnx.load(str(base), load_external_data=False).graph
        # as quantize/onnx.py's _dynamic_int8: the FFN's output projections stay float
        down = [n.name for n in graph.node if n.op_type == "MatMul"
                and re.search(r"/layer\.\d+/output/dense/", n.name)]
        for suffix, exclude in (("", down), ("-all", [])):
            dst = out / f"{name}{suffix}.onnx"
            if not dst.exists():
                quantize_dynamic(base, dst, weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_exclude=exclude,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            files[f"{name}{suffix}"] = dst
    ops = {k: sorted({n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node
                      if n.op_type in ("Attention", "QAttention", "SkipLayerNormalization",
                                       "BiasGelu", "MatMulInteger", "DynamicQuantizeMatMul")})
           for k, p in files.items()}
    return files, ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/demo-bench")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "encoder_speed.json"))
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from edgedistill.bench import TIMED_BATCHES, length_mix
    from edgedistill.bench.quality import encoder_quality
    from edgedistill.data import eval_data
    from edgedistill.english import heldout_sentences
    from edgedistill.runtimes.outputs import ort_session, torch_sentence_embeddings
    from edgedistill.teacher import sentence_pooling

    run = Path(a.run_dir)
    roles = {}
    for role in ("student", "teacher"):
        exp = json.loads((run / "export" / role / "export.json").read_text())
        cfg = json.loads((Path(exp["model"]) / "config.json").read_text())
        src = run / "export" / role / "onnx" / "model.onnx"
        files, ops = make_variants(src, Path("/tmp/edgedistill-bench/encoder_speed") / role,
                                   cfg["num_attention_heads"], cfg["hidden_size"])
        roles[role] = {"model": exp["model"], "files": files, "ops": ops}
    teacher = Path(roles["teacher"]["model"])
    tok = AutoTokenizer.from_pretrained(teacher)
    held, _ = eval_data(tok, True)
    general = list(heldout_sentences()[:256])
    texts = length_mix(held, general, 32 * TIMED_BATCHES)
    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
    ref = torch_sentence_embeddings(teacher, general, sentence_pooling(teacher))

    def runner(path):
        sess = ort_session(path, a.threads, spin=False)
        names = {i.name for i in sess.get_inputs()}
        out_name = "sentence_embedding"

        def embed(b):
            enc = tok(b, padding=True, truncation=True, max_length=128, return_tensors="np")
            return sess.run([out_name], {k: v.astype(np.int64) for k, v in enc.items()
                                         if k in names})[0]
        return embed

    res = {}
    for variant in roles["student"]["files"]:
        fns = {r: runner(roles[r]["files"][variant]) for r in roles}
        quality = {}
        for r, fn in fns.items():
            e = np.concatenate([fn(general[i:i + 32]) for i in range(0, len(general), 32)])
            quality[r] = encoder_quality(e, ref)["cosine_to_teacher"]
        times = {r: [] for r in fns}
        for fn in fns.values():
            [fn(b) for b in batches]  # warm-up
        for _ in range(a.repeats):
            for r, fn in fns.items():
                t0 = time.perf_counter()
                for b in batches:
                    fn(b)
                times[r].append((time.perf_counter() - t0) / len(batches))
        med = {r: statistics.median(v) for r, v in times.items()}
        res[variant] = {r: {"batch_ms": 1e3 * med[r], "sentences_per_s": 32 / med[r],
                            "cosine_general_to_teacher": quality[r],
                            "ops": roles[r]["ops"][variant]} for r in fns}
        res[variant]["speedup"] = med["teacher"] / med["student"]
        print(variant, json.dumps({r: round(1e3 * med[r], 1) for r in med}),
              f"speedup {res[variant]['speedup']:.2f}", flush=True)
    base = res["int8"]["teacher"]["batch_ms"]
    for v in res.values():
        v["student_vs_teacher_int8"] = base / v["student"]["batch_ms"]
    doc = {"benchmark": "encoder_speed", "date": time.strftime("%Y-%m-%d"),
           "threads": a.threads, "repeats": a.repeats, "batches": len(batches),
           "run_dir": str(run), "variants": res}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: round(v["speedup"], 2) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
