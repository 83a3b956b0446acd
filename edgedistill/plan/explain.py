"""The words and the table of a plan: ``explain`` (the sentences of ``Plan.explanation``)
and ``candidate_table`` (what ``edgedistill plan`` prints, from a plan's JSON)."""
from __future__ import annotations

from edgedistill.plan.measured import from_measurement


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def explain(pl, bigger: list) -> list[str]:
    """The plan in sentences: the teacher against the targets, the requirements, the choice
    and why nothing more capable was chosen, and how the figures were made. ``pl`` is a
    planner.Plan, ``bigger`` its Candidates more capable than the choice (planner imports
    this module, so the types are not imported here)."""
    t, s, prof, req = pl.teacher, pl.student, pl.profile, pl.requirements
    lines = []
    tp = pl.teacher_prediction
    if t.shape.is_encoder:
        speed = f"{tp.encoder_batch_ms:.1f} ms per batch of {req['encoder_batch']}"
    else:
        speed = f"{tp.decode_tokens_per_s:.1f} tok/s decode, {tp.prefill_ms:.0f} ms prefill"
    if pl.teacher_meets_targets:
        lines.append(f"The teacher already meets {prof.name}'s targets at {pl.format}:"
                     f"{pl.quant} (predicted {speed}, {tp.memory_gb:.2f} GB)" +
                     (f"; the student is planned for a {req['speedup']:g}x speedup over it "
                      "(--speedup)." if req["speedup"] > 1 else "."))
    else:
        lines.append(f"The teacher misses {prof.name}'s targets at {pl.format}:{pl.quant}: "
                     f"{'; '.join(pl.teacher_failures)}.")
    if t.shape.is_encoder:
        need = (f"at most {req['encoder_batch_ms']:.1f} ms per batch of {req['encoder_batch']} "
                f"x {req['encoder_seq_len']} tokens")
        basis = prof.latency_targets.encoder_batch_ms
        binding = "the target" if req["encoder_batch_ms"] == basis else \
            f"{req['speedup']:g}x the teacher"
    else:
        need = (f"decode at least {req['decode_tokens_per_s']:.1f} tok/s, prefill of "
                f"{req['prompt_tokens']} tokens within {req['prefill_ms']:.0f} ms")
        basis = prof.latency_targets.decode_tokens_per_s
        binding = "the target" if req["decode_tokens_per_s"] == basis else \
            f"{req['speedup']:g}x the teacher"
    lines.append(f"Requirements: {need} (speed set by {binding}), memory within "
                 f"{req['memory_gb']:.2f} GB at context {prof.context_length}.")
    sp = s.prediction
    what = (f"{sp.encoder_batch_ms:.1f} ms per batch ({sp.sentences_per_s:.0f} sentences/s)"
            if t.shape.is_encoder else
            f"{sp.decode_tokens_per_s:.1f} tok/s decode, {sp.prefill_ms:.0f} ms prefill")
    lines.append(
        f"Chosen: {s.shape.describe()} ({_fmt_params(s.shape.total_params())} params, "
        f"{s.shape.total_params() / t.shape.total_params():.0%} of the teacher): the most "
        f"capable of {pl.n_feasible} feasible candidates (of {pl.n_candidates}); predicted "
        f"{what}, {sp.memory_gb:.2f} GB of {req['memory_gb']:.2f} GB.")
    if bigger:
        c = bigger[-1]
        lines.append(f"The next more capable candidate, {c.shape.describe()}, fails: "
                     f"{'; '.join(c.failures)}.")
    if s.alignment < 256 and pl.format == "gguf":
        lines.append(f"Rows are multiples of {s.alignment}, not 256: "
                     f"{sp.fallback_note or 'k-quants store some matrices in wider types'}.")
    if prof.constraints.static_shapes and t.shape.is_encoder:
        lines.append(f"Static shapes: one graph for batches of {req['encoder_batch']} x "
                     f"{req['encoder_seq_len']} tokens; widths are multiples of {s.alignment}.")
    elif prof.constraints.static_shapes:
        lines.append(f"Static shapes: prefill graph of {prof.constraints.prefill_chunk} tokens, "
                     f"decode graph of 1 token, KV cache fixed at {prof.context_length}; widths "
                     f"are multiples of {s.alignment}.")
    if from_measurement(sp.label):  # planned with plan --verify's timings (PlanConfig.measured)
        lines.append(f"The student's speed is {sp.label} on this machine (plan --verify); "
                     f"shapes not timed carry the predictor's figures ({sp.basis}) corrected by "
                     "the timed shapes around them. Memory is the arithmetic of the layout "
                     "(weights, KV cache, runtime buffers).")
    else:
        lines.append(f"All figures are {sp.label}, not measured: {sp.basis}. Memory is the "
                     "arithmetic of the layout (weights, KV cache, runtime buffers).")
    far = [p for p in [tp, sp] + [c.prediction for c in pl.table] if p.extrapolated]
    if far:
        who = ("the student" if sp.extrapolated else "") + (
            (" and " if sp.extrapolated else "") + "the teacher" if tp.extrapolated else "")
        lines.append(f"Extrapolated: {who or 'some candidates'} (marked in the table) lie "
                     "outside the shapes the calibration measured, so those speeds carry the "
                     "fit beyond its data. Calibrate a larger design, or time the file with "
                     "bench.")
    return lines


def _speed(pred: dict) -> str:
    mark = " (extrapolated)" if pred.get("extrapolated") else ""
    if pred.get("encoder_batch_ms") is not None:
        return f"{pred['encoder_batch_ms']:.1f} ms/batch{mark}"
    return f"{pred['decode_tokens_per_s']:.1f} tok/s{mark}"


def candidate_table(doc: dict, top: int | None = None) -> tuple[list[str], list[list]]:
    """The candidate table as ``edgedistill plan`` prints it (header, rows) from a plan's
    JSON (``Plan.to_dict()`` or plan.json): the teacher, then the first ``top`` candidates,
    the chosen one marked ``*``."""
    t, s = doc["teacher"], doc["student"]
    encoder = s["predicted"].get("encoder_batch_ms") is not None
    rows = [["teacher", "", t["shape"]["num_layers"], t["shape"]["hidden_size"],
             t["shape"]["intermediate_size"], f"{t['params'] / 1e6:.1f}M",
             f"{t['predicted']['memory_gb']:.3f}", _speed(t["predicted"]),
             "meets targets" if t["meets_targets"] else "; ".join(t["failures"])]]
    for c in doc["candidates"][:top]:
        mark = "*" if (c["layers"], c["hidden_size"], c["intermediate_size"]) == (
            s["shape"]["num_layers"], s["shape"]["hidden_size"],
            s["shape"]["intermediate_size"]) else ""
        rows.append([mark, "" if c["fits"] else "no", c["layers"], c["hidden_size"],
                     c["intermediate_size"], f"{c['params'] / 1e6:.1f}M",
                     f"{c['predicted']['memory_gb']:.3f}", _speed(c["predicted"]),
                     "fits" if c["fits"] else "; ".join(c["failures"])])
    return (["", "fits", "layers", "hidden", "ffn", "params", "mem GB",
             "ms/batch" if encoder else "decode tok/s", "why"], rows)
