"""Is the planner's choice right when measured? ``plan --verify 6`` for two teachers.

    .venv/bin/python benchmarks/plan_verify.py [--k 6] [--repeats 5]

Teachers: SmolLM2-135M's architecture (its config.json values; random weights, as
``plan --verify`` builds every candidate) and the project's own trained llama (toy.py, the
4.2M-parameter model the tests train). For each, deployments GGUF Q4_K_M and ONNX int8, with
``--target local`` (this machine's calibration when the cache has one, else the laptop
roofline, labelled), ``--speedup 2``: the K candidates around the choice are built, written
in the format and timed in its runtime (calibrate.verify_plan). Reports per deployment:
Spearman's ρ and the share within ±10% of the predictions, the chosen file's re-timing
noise, the regret of the choice, and the teacher's shape timed the same way (the speedup is
relative to it), and the re-plan on the measured speeds (``verified``: the candidates
around each new choice timed until the choice and the more capable rows beside it are all
measured). Writes benchmarks/results/plan_verify.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SMOLLM2_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": True, "rope_theta": 100000, "hidden_act": "silu",
                "bos_token_id": 1, "eos_token_id": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--formats", default="gguf:q4_k_m,onnx:int8")
    ap.add_argument("--out", default=str(ROOT / "results" / "plan_verify.json"))
    args = ap.parse_args()
    from edgedistill.calibrate.verify import verify_plan
    from edgedistill.errors import EdgeDistillError
    from edgedistill.plan import PlanConfig
    from edgedistill.toy import make_causal_lm

    work = Path(tempfile.mkdtemp(prefix="plan-verify-"))
    smol = work / "smollm2-135m"
    smol.mkdir()
    (smol / "config.json").write_text(json.dumps(SMOLLM2_135M))
    toy = make_causal_lm(work / "trained-llama", log=print)
    runs = []
    for name, teacher in (("SmolLM2-135M (architecture)", smol), ("trained llama 4.2M", toy)):
        for fq in args.formats.split(","):
            t0 = time.time()
            try:
                doc = verify_plan(str(teacher), "local", PlanConfig(speedup=2.0, deploy=fq),
                                  args.k, threads=2, repeats=args.repeats, progress=False,
                                  log=print)
            except EdgeDistillError as e:  # the planner refusing is its answer: recorded
                runs.append({"teacher_name": name, "deployment": fq, "planner_refused": str(e)})
                print(f"{name} {fq}: the planner refused: {e}", flush=True)
                continue
            doc |= {"teacher_name": name, "seconds": time.time() - t0}
            runs.append(doc)
            q, g, t = doc["prediction_quality"], doc["regret"], doc.get("teacher_timed") or {}
            if "measured" in t:
                print(f"{name} {fq}: teacher decode predicted "
                      f"{t['predicted']['decode_tokens_per_s']:.1f}, measured "
                      f"{t['measured']['decode_tokens_per_s']:.1f} tok/s; speedups measured "
                      + ", ".join(f"{r['shape']} {r.get('speedup_measured', 0):.2f}x"
                                  for r in doc["candidates"]), flush=True)
            print(f"{name} {fq}: " + "; ".join(
                f"{k} rho {v['spearman'] if v['spearman'] is not None else float('nan'):.2f} "
                f"MAPE {v['mape'] or 0:.0%} noise {v['retiming_noise'] or 0:.0%}"
                for k, v in q.items()) + f"; regret {g}", flush=True)
            v = doc.get("verified") or {}
            if v.get("applies"):
                print(f"{name} {fq}: re-planned on the measured speeds ({v['rounds']} rounds, "
                      f"converged {v['converged']}): {v.get('choice')}, speedup measured "
                      f"{v.get('speedup_measured') or 0:.2f}x, parameters "
                      f"{v.get('params_vs_predicted_choice') or 0:+.1%} against the predicted "
                      f"choice; more capable rows measured too slow: "
                      f"{v.get('bigger_measured_missing')} {v.get('why', '')}", flush=True)
    out = {"benchmark": "plan_verify", "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/plan_verify.py " + " ".join(sys.argv[1:]),
           "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
