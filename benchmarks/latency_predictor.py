"""How well does the calibrated latency predictor predict shapes it never saw?

    .venv/bin/python benchmarks/latency_predictor.py [--budget-s 1800] [--formats ...]

Runs ``edgedistill calibrate`` on this machine (llama.cpp F16/Q8_0/Q4_K_M and onnxruntime
fp32/int8 by default; decode and prefill of random-weight llama shapes), which fits the
predictor on three quarters of the designed shapes and holds the rest out. For every held-out
measurement it compares three predictions with the measured time:

- the calibrated predictor (the fit, as ``plan --target local`` uses it);
- the uncalibrated roofline with the laptop profile's default coefficients, but this
  machine's measured bandwidth and compute (what ``plan --target local`` said before);
- the same fitted terms refitted without the cache split (a plain bytes/layers/constant fit,
  the "3-term linear" baseline of issue #8).

With ``--deep`` it then builds held-out deep full-width shapes (hidden 1536-2048, 8-24 layers,
0.5-1.3B parameters: beyond the calibration's depth and size, within its width) in the GGUF
formats it fitted, times them, and compares the calibrated predictions: whether per-layer
costs add up, so that predictions for such shapes need not be flagged extrapolated.

Goal: MAPE <= 5% and every prediction within +-15%, per runtime x format x workload. The
"re-measured" column is how far a second timing of the same held-out file lands from the
first (the machine's own noise): no predictor can be more accurate than that.
Writes benchmarks/results/latency_predictor.json (the calibration's points included).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _roofline_errors(cal: dict, points: list[dict]) -> list[float]:
    from edgedistill.arch import shape_from_config
    from edgedistill.plan.costmodel import predict
    from edgedistill.profiles import Memory, load_profile

    m, w = cal["machine"], cal["workload"]
    base = load_profile("laptop")
    ratio = m["compute_tflops_fp32"] / base.peak_tflops("fp32")
    prof = dataclasses.replace(
        base, name="local", threads=m["threads"],
        memory=Memory(budget_gb=base.memory.budget_gb, bandwidth_gbps=m["bandwidth_gbps"]),
        compute_tflops={k: v * ratio for k, v in base.compute_tflops.items()},
        latency_targets=dataclasses.replace(base.latency_targets,
                                            prompt_tokens=w["prompt_tokens"],
                                            encoder_seq_len=w["encoder_seq_len"],
                                            encoder_batch=w["encoder_batch"]))
    errs = []
    for p in points:
        pr = predict(shape_from_config(p["config"]), prof, p["format"], p["quant"])
        t = {"decode": lambda: 1 / pr.decode_tokens_per_s,
             "generate": lambda: 1 / pr.generate_tokens_per_s,
             "prefill": lambda: pr.prefill_ms / 1e3,
             "encoder": lambda: pr.encoder_batch_ms / 1e3}[p["workload"]]()
        errs.append(t / p["seconds"] - 1)
    return errs


def _three_term_errors(train: list[dict], held: list[dict], llc: int) -> list[float]:
    """bytes (all of them, no cache split) + layers + constant, relative least squares."""
    from edgedistill.calibrate.fit import _nnls, _x

    def row(p):
        x = _x(p, llc)
        return [x[0], x[1], x[2] + x[3]]  # all bytes (decode) or all matmul work (the rest)
    coef = _nnls([row(p) for p in train], [p["seconds"] for p in train])
    return [sum(c * v for c, v in zip(coef, row(p))) / p["seconds"] - 1 for p in held]


DEEP = ((2048, 8), (1536, 16), (2048, 16), (2048, 24))
"""Held-out deep full-width llama shapes (vocabulary 32000): 0.51B, 0.53B, 0.89B and 1.26B
parameters. The calibration times widths up to 2048 with at most 12 layers (2 at full width);
if per-layer costs add up, the calibrated predictor gets these right without timing them."""


def _local(cal: dict):
    """The laptop profile as this machine at the calibration's workload ('local')."""
    from edgedistill.profiles import load_profile

    base = load_profile("laptop")
    return dataclasses.replace(base, name="local", threads=cal["fingerprint"]["threads"],
                               latency_targets=dataclasses.replace(
                                   base.latency_targets,
                                   prompt_tokens=cal["workload"]["prompt_tokens"]))


def _seconds(pred) -> dict:
    """A prediction as seconds per unit of each workload the deep shapes are timed for."""
    out = {"decode": 1 / pred.decode_tokens_per_s, "prefill": pred.prefill_ms / 1e3}
    if pred.generate_tokens_per_s:
        out["generate"] = 1 / pred.generate_tokens_per_s
    return out


def _deep(cal: dict, threads: int, repeats: int) -> dict:
    """Build, time and predict the DEEP shapes in each GGUF format the calibration fitted."""
    import shutil
    import tempfile

    from edgedistill.arch import shape_from_config
    from edgedistill.calibrate import _artifact, _config, _hf_folder, _measure
    from edgedistill.plan.predictor import predict

    w, local = cal["workload"], _local(cal)
    fmts = sorted({tuple(k.split(":")[:2]) for k in cal["fits"] if k.startswith("gguf:")})
    rows, work = [], Path(tempfile.mkdtemp(prefix="latency-deep-"))
    try:
        for h, L in DEEP:
            cfg = _config("llama", h, L, 2.75, 32000)
            shape = shape_from_config(cfg)
            hf = _hf_folder(work, "llama", cfg, f"deep-h{h}-L{L}")
            for fmt, quant in fmts:
                art = _artifact(work, hf, fmt, quant, threads)
                got = _measure(art, fmt, False, threads, w["prompt_tokens"], 0, 0, repeats)
                pred = predict(shape, local, fmt, quant, cal)
                want = _seconds(pred)
                for wl, sec in got.items():
                    if wl in want:
                        rows.append({"hidden": h, "layers": L, "params": shape.total_params(),
                                     "format": f"{fmt}:{quant}", "workload": wl,
                                     "measured_s": sec, "predicted_s": want[wl],
                                     "error": want[wl] / sec - 1,
                                     "extrapolated": pred.extrapolated, "label": pred.label})
                        print(f"deep h{h} L{L} {shape.total_params() / 1e9:.2f}B {fmt}:{quant} "
                              f"{wl}: measured {sec * 1e3:.1f} ms, predicted "
                              f"{want[wl] * 1e3:.1f} ms ({rows[-1]['error']:+.1%})"
                              f"{' EXTRAPOLATED' if pred.extrapolated else ''}", flush=True)
            shutil.rmtree(work / f"deep-h{h}-L{L}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"shapes": [{"hidden": h, "layers": L} for h, L in DEEP], "rows": rows,
            "summary": _deep_summary(rows)}


def _stats(errs: list[float]) -> dict:
    return {"mape": statistics.mean(abs(e) for e in errs), "worst": max(errs, key=abs),
            "within_15pct": sum(abs(e) <= 0.15 for e in errs) / len(errs)} if errs else {}


def _deep_repredict(cal: dict, deep: dict) -> dict:
    """The stored deep-shape timings of an earlier run, predicted by ``cal``'s fits."""
    from edgedistill.arch import shape_from_config
    from edgedistill.calibrate import _config
    from edgedistill.plan.predictor import predict

    local = _local(cal)
    rows = []
    for r in deep["rows"]:
        shape = shape_from_config(_config("llama", r["hidden"], r["layers"], 2.75, 32000))
        pred = predict(shape, local, *r["format"].split(":"), cal)
        want = _seconds(pred)
        sec = want.get(r["workload"], want["decode"])  # the loop is at least the step
        rows.append(dict(r, predicted_s=sec, error=sec / r["measured_s"] - 1,
                         extrapolated=pred.extrapolated, label=pred.label))
    return {"shapes": deep["shapes"], "rows": rows, "summary": _deep_summary(rows)}


def _deep_summary(rows: list[dict]) -> dict:
    from edgedistill.calibrate import spearman

    summary = {}
    for key in sorted({(r["format"], r["workload"]) for r in rows}):
        rs = [r for r in rows if (r["format"], r["workload"]) == key]
        errs = [r["error"] for r in rs]
        summary[":".join(key)] = {
            "n": len(rs), "mape": statistics.mean(abs(e) for e in errs),
            "worst": max(errs, key=abs),
            "within_10pct": sum(abs(e) <= 0.1 for e in errs) / len(errs),
            "spearman": spearman([r["predicted_s"] for r in rs], [r["measured_s"] for r in rs]),
            "flagged_extrapolated": sum(r["extrapolated"] for r in rs)}
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=1800)
    ap.add_argument("--formats", default="gguf:f16,gguf:q8_0,gguf:q4_k_m,onnx:fp32,onnx:int8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calibration", default=None,
                    help="evaluate this calibration JSON instead of making a new one")
    ap.add_argument("--refit", default=None, metavar="JSON",
                    help="re-fit the measurements stored in JSON (a calibration, or a result "
                    "this script wrote) with this version's predictor, and judge it on their "
                    "held-out shapes: a new model on the same timings, nothing re-timed")
    ap.add_argument("--deep", action="store_true",
                    help="also time held-out deep full-width shapes (0.5-1.3B parameters) in "
                    "the calibrated GGUF formats: do per-layer costs add up?")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "latency_predictor.json"))
    args = ap.parse_args()

    from edgedistill.calibrate import CalibrateConfig, calibrate

    t0 = time.time()
    if args.refit:
        from edgedistill.calibrate import fit_all

        cal = json.loads(Path(args.refit).read_text())
        cal.setdefault("seconds", cal.get("calibration_seconds"))
        cal.setdefault("key", "refit")
        cal["fits"] = fit_all(cal["points"], cal["machine"]["llc_bytes"])
        cal["refit_of"] = args.refit
    elif args.calibration:
        cal = json.loads(Path(args.calibration).read_text())
    else:
        cal = calibrate(CalibrateConfig("local", args.formats, args.budget_s, args.threads,
                                        repeats=args.repeats))
    rows = {}
    for key, fit in sorted(cal["fits"].items()):
        llc = fit.get("llc_bytes") or cal["machine"]["llc_bytes"]
        fmt, quant, work = key.split(":")
        pts = [p for p in cal["points"] if (p["format"], p["quant"], p["workload"]) ==
               (fmt, quant, work)]
        held = [p for p in pts if p["split"] == "holdout"]
        train = [p for p in pts if p["split"] == "train"]
        h = fit.get("holdout", {})
        rows[key] = {
            "runtime": "llama.cpp" if fmt == "gguf" else "onnxruntime",
            "n_train": len(train), "n_holdout": len(held), "model": fit["chosen"],
            "calibrated": {"mape": h.get("mape"), "worst": h.get("worst"),
                           "within_10pct": h.get("within_10pct"),
                           "spearman": h.get("spearman"), "speed_span": h.get("speed_span"),
                           "within_15pct": (sum(abs(e) <= 0.15 for e in h.get("errors", []))
                                            / max(1, len(h.get("errors", []))))},
            "roofline_uncalibrated": _stats(_roofline_errors(cal, held)),
            "three_term_fit": _stats(_three_term_errors(train, held, llc)),
            "cv_mape": fit["cv_mape"], "cache_bytes": llc,
            "cache_decay": fit.get("cache_decay"),
            "repeatability": fit.get("repeatability"),
        }
        rows[key]["goal_met"] = bool(h and h["mape"] <= 0.05 and abs(h["worst"]) <= 0.15)
        noise = (fit.get("repeatability") or {}).get("mape")
        rows[key]["rank_goal"] = {  # issue 28's goals: rank, and error against the noise floor
            "spearman_ge_0.95": bool(h.get("spearman") is not None and h["spearman"] >= 0.95
                                     and len(held) >= 15 and (h.get("speed_span") or 0) >= 4),
            "mape_le_1.2x_noise": bool(h and noise and h["mape"] <= 1.2 * noise)}
    doc = {"benchmark": "latency_predictor", "date": time.strftime("%Y-%m-%d"),
           "machine": cal["machine"], "fingerprint": cal["fingerprint"],
           "workload": cal["workload"], "calibration_seconds": cal["seconds"],
           "goal": "held-out MAPE <= 5% and every prediction within +-15%",
           "results": rows, "refit_of": cal.get("refit_of"),
           # a re-fit points at the timings it re-judged instead of copying them
           "points": None if args.refit else cal["points"],
           "command": "python benchmarks/latency_predictor.py " + " ".join(sys.argv[1:]),
           "wall_seconds": time.time() - t0}
    if args.refit and cal.get("deep"):
        doc["deep"] = _deep_repredict(cal, cal["deep"])
    elif args.deep:
        doc["deep"] = _deep(cal, cal["fingerprint"]["threads"], args.repeats)
        doc["wall_seconds"] = time.time() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"{'format:quant:workload':<24} {'train':>5} {'held':>4}  {'MAPE':>6} {'worst':>7} "
          f"{'±10%':>5} {'rho':>6} {'roofline':>8} {'3-term':>7} {'re-meas.':>8}  goal")
    for key, r in rows.items():
        c = r["calibrated"]
        print(f"{key:<24} {r['n_train']:>5} {r['n_holdout']:>4}  "
              f"{c['mape'] or 0:>6.1%} {c['worst'] or 0:>+7.1%} "
              f"{c['within_10pct'] or 0:>5.0%} {c['spearman'] or 0:>6.3f} "
              f"{r['roofline_uncalibrated'].get('mape', 0):>8.1%} "
              f"{r['three_term_fit'].get('mape', 0):>7.1%} "
              f"{(r['repeatability'] or {}).get('mape', 0):>8.1%}  "
              f"{'met' if r['goal_met'] else 'NOT met'}")
    for key, s in (doc.get("deep") or {}).get("summary", {}).items():
        print(f"deep (held out, 0.5-1.3B) {key:<22} n {s['n']}  MAPE {s['mape']:.1%}  "
              f"worst {s['worst']:+.1%}  within ±10% {s['within_10pct']:.0%}  "
              f"rho {s['spearman'] or 0:.3f}  flagged extrapolated {s['flagged_extrapolated']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
