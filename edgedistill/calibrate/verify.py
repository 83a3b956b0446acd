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
from edgedistill.errors import EdgeDistillError
from edgedistill.plan import PlanConfig, failures, measurement, plan, requirements, shape_key
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
                log=_logger.info, rounds: int = 3) -> dict:
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
    (``requirements_measured``), and each candidate states its measured speedup.

    Then, with ``--target local``, the plan is made again from what was timed
    (``PlanConfig.measured``: measured shapes on their measured speeds, the others corrected
    by them), and the candidates of the new table not yet timed are timed, for up to
    ``rounds`` rounds, until the choice and the more capable rows beside it are all measured:
    the ``verified``
    choice is then the most capable candidate that meets the requirements measured, with the
    next more capable ones measured and missing them. ``verified.measured`` is what
    ``distill`` plans that same student from."""
    if k < 2:
        raise CalibrationError(f"--verify {k}: ranking needs at least 2 candidates.",
                               "use e.g. --verify 6")
    config = replace(config or PlanConfig(), top=k)
    pl = plan(teacher, target, config)
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
    rows: list[dict] = []
    measured: list[dict] = []  # PlanConfig.measured: the teacher and every candidate timed
    timed_keys: set[str] = set()
    shapes: dict = {}  # each timed row's shape, by its description
    work = Path(tempfile.mkdtemp(prefix="edgedistill-verify-"))
    bar = _bar(len(pl.table) + local, progress, "verify", "candidates")
    family = "bert" if encoder else "llama"
    vocab = int(pl.teacher.config.get("vocab_size", 1024))

    def timed(cfg, name, n=1):
        hf = _hf_folder(work, family, cfg, name)
        art = _artifact(work, hf, fmt, quant, threads)
        out = [_measure(art, fmt, encoder, threads, prompt, seq, batch, repeats,
                        int(cfg.get("vocab_size", 1024))) for _ in range(n)]
        shutil.rmtree(work / name, ignore_errors=True)
        return out

    def candidate(c, n_retimes: int, rnd: int) -> dict:
        """Time one candidate of a plan's table into a row (an error is a note in it)."""
        pred = predict_here(c.shape, fmt, quant)
        row = _row(c.shape, pred, keys) | {"chosen": c.shape == pl.student.shape,
                                           "planned_fits": c.fits, "round": rnd}
        rows.append(row)
        timed_keys.add(shape_key(c.shape))
        shapes[row["shape"]] = c.shape
        try:
            times = timed(config_for_shape(pl.teacher.config, c.shape), f"c{len(rows)}",
                          n_retimes)
        except Exception as e:  # one candidate failing is a note, not the end
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"verify: {row['shape']}: {row['error']}")
            return row
        _measured(row, times[0])
        measured.append(measurement(c.shape, fmt, quant, row["measured"]))
        if len(times) > 1:
            row["retimed"] = {w: abs(times[1][w] / v - 1) for w, v in times[0].items()}
        if local:  # the planner's own test, on the measured speeds (memory: the layout's)
            row["misses_measured"] = failures(replace(pred, **row["measured"]), req_measured)
            row["meets_requirements_measured"] = not row["misses_measured"]
            t_meas = (teacher_row or {}).get("measured")
            if t_meas:
                row["speedup_measured"] = _speedup(t_meas[keys[0]], row["measured"][keys[0]],
                                                   encoder)
        return row

    teacher_row, req_measured = None, pl.requirements
    verified: dict = {"applies": False}
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
                measured.append(measurement(pl.teacher.shape, fmt, quant,
                                            teacher_row["measured"]))
            except Exception as e:  # then the planned requirements stand, and it says so
                teacher_row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                log(f"verify: the teacher could not be timed: {teacher_row['error']}")
        for i, c in enumerate(pl.table):
            bar(i + local, f"{c.shape.describe()} {fmt}:{quant}")
            candidate(c, 2 if c.shape == pl.student.shape else 1, 0)
        bar(len(pl.table) + local, "done")
        if local and measured:
            verified = _replan(pl, config, measured, timed_keys, rounds, candidate, log)
        if verified.get("converged") and teacher_row and "measured" in teacher_row:
            # the machine drifts between rounds: time the teacher and the choice again,
            # alternating, for a speedup that compares like with like
            log(f"verify: confirming {verified['choice']} against the teacher, alternating")
            try:
                verified |= _confirm(
                    [_artifact(work, _hf_folder(work, family, cfg, name), fmt, quant, threads)
                     for cfg, name in ((t_cfg, "confirm_teacher"),
                                       (config_for_shape(pl.teacher.config,
                                                         shapes[verified["choice"]]),
                                        "confirm_choice"))],
                    lambda art: _figures(_measure(art, fmt, encoder, threads, prompt, seq,
                                                  batch, repeats, vocab))[keys[0]],
                    encoder, req_measured.get("speedup", 1.0))
            except Exception as e:
                verified["confirmed_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        bar(None, "")
        shutil.rmtree(work, ignore_errors=True)
    timed_rows = [r for r in rows if "measured" in r]
    quality = {}
    for key in keys:
        errs = [r["errors"][key] for r in timed_rows if key in r["errors"]]
        quality[key] = {
            "n": len(errs),
            "mape": statistics.mean(abs(e) for e in errs) if errs else None,
            "within_10pct": sum(abs(e) <= 0.1 for e in errs) / len(errs) if errs else None,
            "spearman": spearman([r["predicted"][key] for r in timed_rows],
                                 [r["measured"][key] for r in timed_rows]),
            "retiming_noise": next((r["retimed"][_WORKLOAD_OF[key]] for r in timed_rows
                                    if "retimed" in r), None)}
    for r in rows:
        r["verified_choice"] = r["shape"] == verified.get("choice")
    doc = {"teacher": str(pl.teacher.name), "target": pl.profile.name,
           "deployment": f"{fmt}:{quant}", "threads": threads, "repeats": repeats,
           "workload": ({"encoder_batch": batch, "encoder_seq_len": seq} if encoder else
                        {"prompt_tokens": prompt, "decode_tokens": DECODE_TOKENS}),
           "measured_on": f"{info.cpu_model}, {threads} threads (this machine)",
           "requirements": pl.requirements, "teacher_timed": teacher_row,
           "requirements_measured": req_measured, "candidates": rows,
           "prediction_quality": quality,
           "predicted_label": rows[0]["label"] if rows else None}
    chosen = next((r for r in timed_rows if r["chosen"]), None)
    if not local:
        doc["regret"] = {"applies": False,
                         "why": f"the target {pl.profile.name} is not this machine: its "
                                "requirements say nothing about speeds measured here"}
    elif chosen is None:
        doc["regret"] = {"applies": False, "why": "the chosen candidate could not be timed"}
    else:
        ok = [r for r in timed_rows if r["meets_requirements_measured"]]
        best = max(ok, key=lambda r: r["params"]) if ok else None
        doc["regret"] = {
            "applies": True, "chosen": chosen["shape"],
            "chosen_meets_requirements_measured": chosen["meets_requirements_measured"],
            "best_measured": best["shape"] if best else None,
            "capacity_regret": (best["params"] / chosen["params"] - 1) if best else None}
    v_row = next((r for r in rows if r["verified_choice"] and "measured" in r), None)
    if v_row is not None:
        main = keys[0]  # decode tok/s, or ms per encoder batch
        need = (verified.get("requirements") or req_measured).get(main)
        got = v_row["measured"][main]
        verified |= {"margin": _speedup(need, got, encoder) - 1 if need else None,
                     "retiming_noise": quality[main]["retiming_noise"],
                     "params": v_row["params"],
                     "speedup_measured": v_row.get("speedup_measured"),
                     "params_vs_predicted_choice": v_row["params"] / pl.student.shape.total_params()
                     - 1}
    doc["verified"] = verified
    return doc


def _speedup(teacher: float, student: float, encoder: bool) -> float:
    """How many times faster ``student`` is: ms per encoder batch, else decode tok/s."""
    return teacher / student if encoder else student / teacher


CONFIRM_PAIRS = 3
"""Teacher/choice timings, alternated, that confirm the verified choice's speedup."""


def _confirm(arts, figure, encoder: bool, speedup: float) -> dict:
    """The teacher's file and the choice's (``arts``) timed in turn CONFIRM_PAIRS times: the
    median of the pairs' speedups, against the speedup asked for."""
    ratios = []
    for _ in range(CONFIRM_PAIRS):
        t, c = figure(arts[0]), figure(arts[1])
        ratios.append(_speedup(t, c, encoder))
    med = statistics.median(ratios)
    return {"confirmed_speedups": ratios, "confirmed_speedup": med,
            "confirmed_meets_speedup": med >= speedup}


def _replan(pl, config, measured: list[dict], timed_keys: set[str], rounds: int, candidate,
            log) -> dict:
    """Plan again from the speeds timed so far and time the new table's candidates not yet
    timed, until none is left (converged) or ``rounds`` run out."""
    out: dict = {"applies": True, "converged": False, "rounds": 0, "choice": None}
    for rnd in range(1, rounds + 2):
        try:
            again = plan(pl.teacher, pl.profile, replace(config, measured=tuple(measured)))
        except EdgeDistillError as e:  # nothing fits on the measured speeds: that is the answer
            out["why"] = str(e)
            log(f"verify: re-planned on the measured speeds, nothing fits: {e}")
            break
        # the choice and the more capable rows beside it decide it: the smaller ones need not
        new = [c for c in again.table if shape_key(c.shape) not in timed_keys
               and c.rank_key() >= again.student.rank_key()]
        out |= {"choice": again.student.shape.describe(), "requirements": again.requirements,
                "bigger_measured_missing": [c.shape.describe() for c in again.table
                                            if c.rank_key() > again.student.rank_key()]}
        if not new:
            out["converged"] = True
            break
        if rnd > rounds:
            out["why"] = (f"after {rounds} rounds the choice or the more capable rows beside "
                          f"it still have {len(new)} candidates not timed")
            break
        out["rounds"] = rnd
        log(f"verify: round {rnd}: re-planned on the measured speeds, the choice is "
            f"{out['choice']}; timing {len(new)} candidates not timed yet")
        for c in new:
            candidate(c, 1, rnd)
    out["measured"] = list(measured)
    return out
