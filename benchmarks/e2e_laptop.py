"""The whole chain for the laptop on a small causal LM: student against teacher, both at
Q4_K_M in llama.cpp, with the decode speedup and the held-out loss.

    .venv/bin/python benchmarks/e2e_laptop.py [--steps 400] [--max-params 9000000]

Teacher: a llama (hidden 512, 6 layers, FFN 1024, vocabulary 4096: 18 M parameters) trained
here on the first 2 M characters of the standard library's source (reused if already trained).
Smaller teachers are dominated by llama.cpp's fixed per-token cost, which no student removes.
Pipeline: `edgedistill export --teacher T --target laptop --data D` with D = the next 1 M
characters. Goal: >= 2.5x the teacher's decode speed with held-out loss within 10% of the
teacher's. Writes benchmarks/results/e2e_laptop.json (measured on this machine; the laptop's
own figures in the report are predicted).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--speedup", type=float, default=None,
                    help="planner speedup (default: the planner's)")
    ap.add_argument("--max-params", type=int, default=9_000_000,
                    help="student size cap: the laptop profile's predicted per-token overhead "
                    "makes the planner settle for near-teacher students of teachers this small")
    ap.add_argument("--work", default="/tmp/edgedistill-bench")
    ap.add_argument("--out", default=str(ROOT / "results" / "e2e_laptop.json"))
    args = ap.parse_args()

    from edgedistill.bench import BenchConfig
    from edgedistill.data import stdlib_source
    from edgedistill.distill import DataConfig, DistillConfig, TrainConfig
    from edgedistill.export import ExportConfig
    from edgedistill.pipeline import RunConfig, run
    from edgedistill.plan import PlanConfig
    from edgedistill.toy import make_causal_lm

    work = Path(args.work)
    teacher = work / f"e2e-teacher-h512-l6-s{args.teacher_steps}"
    if not (teacher / "config.json").is_file():
        make_causal_lm(teacher, hidden=512, layers=6, heads=8, kv_heads=4, ffn=1024,
                       vocab=4096, steps=args.teacher_steps, seq_len=128, batch=8, lr=1e-3,
                       chars=2_000_000, log=lambda m: print(m, file=sys.stderr))
    data = work / "e2e_data.txt"
    data.write_text(stdlib_source(3_000_000)[2_000_000:])
    t0 = time.time()
    paths = run(teacher, "laptop", str(data), work / "e2e_laptop", RunConfig(
        plan=PlanConfig(speedup=args.speedup, max_params=args.max_params),
        distill=DistillConfig(train=TrainConfig(steps=args.steps, batch_size=8, lr=1e-3,
                                                eval_every=args.steps // 4,
                                                save_every=args.steps // 4),
                              data=DataConfig(seq_len=128)),
        export=ExportConfig(quants=("q4_k_m", "int8"), threads=2),
        bench=BenchConfig(threads=2, new_tokens=128, prompt_tokens=512, repeats=3,
                          data=str(data))))
    wall = time.time() - t0
    doc = json.loads(Path(paths["json"]).read_text())
    rows = {(a["role"], a["format"], a["quant"]): a for a in doc["artifacts"]}
    s, t = rows[("student", "gguf", "q4_k_m")], rows[("teacher", "gguf", "q4_k_m")]
    speedup = s["bench"]["decode_tokens_per_s"] / t["bench"]["decode_tokens_per_s"]
    loss_ratio = s["quality"]["loss"] / t["quality"]["loss"]
    summary = {
        "benchmark": "e2e_laptop", "measured": True, "measured_on": doc["measured_on"],
        "wall_seconds": round(wall, 1), "report": paths,
        "student_q4_k_m": {k: s["bench"].get(k) for k in (
            "decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "p50_ms", "p95_ms",
            "peak_rss_mb", "roofline_fraction")} | {"held_out_loss": s["quality"]["loss"],
                                                    "size_bytes": s["size_bytes"]},
        "teacher_q4_k_m": {k: t["bench"].get(k) for k in (
            "decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms", "p50_ms", "p95_ms",
            "peak_rss_mb", "roofline_fraction")} | {"held_out_loss": t["quality"]["loss"],
                                                    "size_bytes": t["size_bytes"]},
        "decode_speedup": speedup, "held_out_loss_ratio": loss_ratio,
        "roofline_fraction": {f"{a['role']} {a['format']}:{a['quant']}":
                              a["bench"].get("roofline_fraction") for a in doc["artifacts"]
                              if a["format"] != "hf"},
        "goals": {"decode_speedup >= 2.5": speedup >= 2.5,
                  "held_out_loss within 10%": loss_ratio <= 1.10},
    }
    print(f"decode speedup (llama.cpp Q4_K_M): {speedup:.2f}x; held-out loss student "
          f"{s['quality']['loss']:.4f} vs teacher {t['quality']['loss']:.4f} "
          f"({(loss_ratio - 1) * 100:+.1f}%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({"benchmark": "e2e_laptop", "goals": summary["goals"], "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
