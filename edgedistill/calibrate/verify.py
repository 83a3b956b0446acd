"""``plan --verify K`` / ``--verify-plan K``: the planner's choice, checked by timing the
candidates around it on this machine, with calibrate's builders and timers."""
from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from edgedistill.arch import config_for_shape
from edgedistill.calibrate import (DECODE_TOKENS, _artifact, _bar, _hf_folder, _logger,
                                   _measure, spearman)
from edgedistill.machine import machine_info
from edgedistill.plan import PlanConfig, failures, plan, requirements
from edgedistill.plan.predictor import CalibrationError, predictor_for
from edgedistill.profiles import local_profile

_WORKLOAD_OF = {"encoder_batch_ms": "encoder", "decode_tokens_per_s": "decode",
                "prefill_ms": "prefill", "generate_tokens_per_s": "generate"}
"""Each figure of a row and the calibration workload (``_measure``'s key) it is timed by."""


def _figures(workload_s: dict) -> dict:
    """``_measure``'s seconds per unit of work as the figures a Prediction states."""
    out = {"encoder_batch_ms": 1e3 * workload_s["encoder"]} if "encoder" in workload_s else {}
    if "decode" in workload_s:
        out |= {"decode_tokens_per_s": 1 / workload_s["decode"],
                "prefill_ms": 1e3 * workload_s["prefill"]}
    if "generate" in workload_s:  # GGUF: llama-cpp-python's generate loop
        out["generate_tokens_per_s"] = 1 / workload_s["generate"]
    return out


def _row(shape, pred, keys: list[str]) -> dict:
    """One timed model's row: its shape and this machine's prediction of ``keys``."""
    return {"shape": shape.describe(), "params": shape.total_params(),
            "predicted": {key: getattr(pred, key) for key in keys},
            "label": pred.label, "extrapolated": pred.extrapolated}


def _measured(row: dict, workload_s: dict) -> None:
    """Add ``_measure``'s timings to ``row``, and the prediction's error on each figure."""
    row["measured"] = _figures(workload_s)
    row["errors"] = {key: row["predicted"][key] / v - 1
                     for key, v in row["measured"].items() if row["predicted"][key]}


def verify_plan(teacher=None, target="local", config=None, k: int = 6,
                threads: int | None = None, repeats: int = 5, progress: bool = True,
                log=_logger.info) -> dict:
    """Check the planner's choice by measurement. The K candidates of the plan's table (the
    more capable ones it turned down, the chosen one, the next smaller ones) are built with
    random weights in the teacher's family, written in the plan's format and quantization,
    and timed in the real runtime on this machine (the fastest of ``repeats`` runs, as
    ``calibrate`` times). Against this machine's predictions: the errors, the share within
    ±10% and Spearman's rank correlation; the chosen candidate is timed twice, for the
    re-timing noise. With ``--target local`` the plan's requirements apply here, so the
    regret of the choice is measured too: how much more capable the most capable candidate
    that meets them measured is than the chosen one (0 when the choice was right). The
    teacher's own shape is timed as well (random weights, the same format): a speedup is
    relative to it, so the requirements are re-derived from its measured speed
    (``requirements_measured``), and each candidate states its measured speedup."""
    if k < 2:
        raise CalibrationError(f"--verify {k}: ranking needs at least 2 candidates.",
                               "use e.g. --verify 6")
    pl = plan(teacher, target, replace(config or PlanConfig(), top=k))
    info = machine_info()
    threads = min(threads or info.physical_cores, info.logical_cpus)
    encoder = pl.teacher.shape.is_encoder
    keys = ["encoder_batch_ms"] if encoder else ["decode_tokens_per_s", "prefill_ms"]
    fmt, quant = pl.format, pl.quant
    if fmt == "gguf" and not encoder:
        keys.append("generate_tokens_per_s")
    lt = pl.profile.latency_targets
    # a prompt the model's context holds with the decoded tokens after it (tiny test models)
    max_pos = int(pl.teacher.config.get("max_position_embeddings", 1 << 20))
    prompt = max(8, min(lt.prompt_tokens, max_pos - DECODE_TOKENS - 8))
    seq, batch = lt.encoder_seq_len, lt.encoder_batch
    here = local_profile(threads)
    here = replace(here, latency_targets=replace(here.latency_targets, prompt_tokens=prompt,
                                                 encoder_seq_len=seq, encoder_batch=batch))
    predict_here = predictor_for(here)  # predicted for the workload timed here
    local = pl.profile.name == "local"
    rows = []
    work = Path(tempfile.mkdtemp(prefix="edgedistill-verify-"))
    bar = _bar(len(pl.table) + local, progress, "verify", "candidates")
    family = "bert" if encoder else "llama"

    def timed(cfg, name, n=1):
        hf = _hf_folder(work, family, cfg, name)
        art = _artifact(work, hf, fmt, quant, threads)
        out = [_measure(art, fmt, encoder, threads, prompt, seq, batch, repeats,
                        int(cfg.get("vocab_size", 1024))) for _ in range(n)]
        shutil.rmtree(work / name, ignore_errors=True)
        return out
    teacher_row, req_measured = None, pl.requirements
    try:
        if local:  # the speedup is relative to the teacher: time it, not only predict it
            bar(0, f"teacher {pl.teacher.shape.describe()} {fmt}:{quant}")
            tp = predict_here(pl.teacher.shape, fmt, quant)
            teacher_row = _row(pl.teacher.shape, tp, keys)
            try:
                t_cfg = config_for_shape(pl.teacher.config, pl.teacher.shape)
                _measured(teacher_row, timed(t_cfg, "teacher")[0])
                req_measured = requirements(replace(tp, **teacher_row["measured"]),
                                            pl.profile, encoder,
                                            pl.requirements.get("speedup", 1.0))
            except Exception as e:  # then the planned requirements stand, and it says so
                teacher_row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                log(f"verify: the teacher could not be timed: {teacher_row['error']}")
        for i, c in enumerate(pl.table):
            cfg = config_for_shape(pl.teacher.config, c.shape)
            chosen = c.shape == pl.student.shape
            pred = predict_here(c.shape, fmt, quant)
            row = _row(c.shape, pred, keys) | {"chosen": chosen, "planned_fits": c.fits}
            rows.append(row)
            bar(i + local, f"{row['shape']} {fmt}:{quant}")
            try:
                times = timed(cfg, f"c{i}", 2 if chosen else 1)
            except Exception as e:  # one candidate failing is a note, not the end
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                log(f"verify: {row['shape']}: {row['error']}")
                continue
            _measured(row, times[0])
            if len(times) > 1:
                row["retimed"] = {w: abs(times[1][w] / v - 1) for w, v in times[0].items()}
            if local:  # the planner's own test, on the measured speeds (memory: the layout's)
                row["misses_measured"] = failures(replace(pred, **row["measured"]),
                                                  req_measured)
                row["meets_requirements_measured"] = not row["misses_measured"]
                t_meas = (teacher_row or {}).get("measured")
                if t_meas:
                    row["speedup_measured"] = (
                        t_meas["encoder_batch_ms"] / row["measured"]["encoder_batch_ms"]
                        if encoder else row["measured"]["decode_tokens_per_s"]
                        / t_meas["decode_tokens_per_s"])
        bar(len(pl.table) + local, "done")
    finally:
        bar(None, "")
        shutil.rmtree(work, ignore_errors=True)
    timed = [r for r in rows if "measured" in r]
    quality = {}
    for key in keys:
        errs = [r["errors"][key] for r in timed if key in r["errors"]]
        quality[key] = {
            "n": len(errs),
            "mape": statistics.mean(abs(e) for e in errs) if errs else None,
            "within_10pct": sum(abs(e) <= 0.1 for e in errs) / len(errs) if errs else None,
            "spearman": spearman([r["predicted"][key] for r in timed],
                                 [r["measured"][key] for r in timed]),
            "retiming_noise": next((r["retimed"][_WORKLOAD_OF[key]] for r in timed
                                    if "retimed" in r), None)}
    doc = {"teacher": str(pl.teacher.name), "target": pl.profile.name,
           "deployment": f"{fmt}:{quant}", "threads": threads, "repeats": repeats,
           "workload": ({"encoder_batch": batch, "encoder_seq_len": seq} if encoder else
                        {"prompt_tokens": prompt, "decode_tokens": DECODE_TOKENS}),
           "measured_on": f"{info.cpu_model}, {threads} threads (this machine)",
           "requirements": pl.requirements, "teacher_timed": teacher_row,
           "requirements_measured": req_measured, "candidates": rows,
           "prediction_quality": quality,
           "predicted_label": rows[0]["label"] if rows else None}
    chosen = next((r for r in timed if r["chosen"]), None)
    if not local:
        doc["regret"] = {"applies": False,
                         "why": f"the target {pl.profile.name} is not this machine: its "
                                "requirements say nothing about speeds measured here"}
    elif chosen is None:
        doc["regret"] = {"applies": False, "why": "the chosen candidate could not be timed"}
    else:
        ok = [r for r in timed if r["meets_requirements_measured"]]
        best = max(ok, key=lambda r: r["params"]) if ok else None
        doc["regret"] = {
            "applies": True, "chosen": chosen["shape"],
            "chosen_meets_requirements_measured": chosen["meets_requirements_measured"],
            "best_measured": best["shape"] if best else None,
            "capacity_regret": (best["params"] / chosen["params"] - 1) if best else None}
    return doc
