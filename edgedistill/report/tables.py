"""The report's tables and sentences for people (report.md, report.html, the CLI's tables):
every file in one table, the plan's check, predicted against measured, the training's stages
and --compare-ptq's pairs."""
from __future__ import annotations

from edgedistill.records import BenchRecord
from edgedistill.report.recommend import kind_of, row_id


def fmt(x, spec=".1f") -> str:
    return "" if x is None else format(x, spec)


def main_table(arts: list[BenchRecord | dict], front: list[str] | None = None,
               judged: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """The report's main table (header, rows) for people, from records or their dicts. With
    ``front`` (row ids on the Pareto frontier) and ``judged`` (row id -> its judgement
    against the quality targets) it adds a 'frontier' and a 'targets' column."""
    arts = [a.to_dict() if isinstance(a, BenchRecord) else a for a in arts]
    enc = kind_of(arts) == "encoder"
    if enc:
        head = ["role", "artifact", "runtime", "MiB", "check", "ms/batch", "sent/s",
                "p95 ms", "RSS MB", "cosine→teacher", "top-10 overlap", "general cosine",
                "general top-10", "pred. target ms"]
    else:
        head = ["role", "artifact", "runtime", "MiB", "check", "decode tok/s", "prefill tok/s",
                "TTFT ms", "p50/p95 ms", "RSS MB", "roofline", "ppl", "KL→teacher",
                "top-1→teacher", "pred. target tok/s"]
    rows = []
    for a in arts:
        b, q = a.get("bench") or {}, a.get("quality") or {}
        par = a.get("parity") or {}
        check = par.get("status", "reference" if a["format"] == "hf" else "")
        pred = ((a.get("predicted") or {}).get("target") or {})
        name = f"{a['format']}:{a['quant']}"
        if "error" in b:
            rows.append([a["role"], name, b.get("runtime", ""), fmt((a.get("size_bytes") or 0)
                         / 2**20), check, "failed: " + b["error"][:60]] +
                        [""] * (len(head) - 6))
            continue
        if enc:
            rows.append([a["role"], name, b.get("runtime", ""),
                         fmt((a.get("size_bytes") or 0) / 2**20), check, fmt(b.get("batch_ms")),
                         fmt(b.get("sentences_per_s"), ".0f"), fmt(b.get("p95_ms")),
                         fmt(b.get("peak_rss_mb"), ".0f"),
                         fmt(q.get("cosine_to_teacher"), ".4f"),
                         fmt(q.get("neighbour_overlap"), ".3f"),
                         fmt((q.get("general_english") or {}).get("cosine_to_teacher"), ".4f"),
                         fmt((q.get("general_english") or {}).get("neighbour_overlap"), ".3f"),
                         fmt(pred.get("encoder_batch_ms"))])
        else:
            rows.append([a["role"], name, b.get("runtime", ""),
                         fmt((a.get("size_bytes") or 0) / 2**20), check,
                         fmt(b.get("decode_tokens_per_s")),
                         fmt(b.get("prefill_tokens_per_s"), ".0f"),
                         fmt(b.get("ttft_ms")),
                         f"{fmt(b.get('p50_ms'), '.2f')}/{fmt(b.get('p95_ms'), '.2f')}",
                         fmt(b.get("peak_rss_mb"), ".0f"),
                         fmt(b.get("roofline_fraction"), ".2f"),
                         fmt(q.get("perplexity"), ".2f"), fmt(q.get("kl_to_teacher"), ".4f"),
                         fmt(q.get("top1_agreement"), ".3f"),
                         fmt(pred.get("decode_tokens_per_s"))])
    if front is not None or judged is not None:
        head = head + ["frontier", "targets"]
        for a, r in zip(arts, rows):
            j = (judged or {}).get(row_id(a))
            r += ["★" if row_id(a) in (front or ()) else "",
                  "" if j is None else "meets" if j["meets"] else "misses"]
    return head, rows


def markdown_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def ptq_rows(cmp: list[dict], kind: str) -> tuple[list[str], list[list[str]]]:
    """--compare-ptq's table for people: each figure for QAD, then PTQ."""
    cols = ([("cosine→teacher", "cosine_to_teacher", ".4f"),
             ("top-10 overlap", "neighbour_overlap", ".3f"),
             ("sent/s", "sentences_per_s", ".0f")] if kind == "encoder" else
            [("KL→teacher", "kl_to_teacher", ".4f"),
             ("top-1→teacher", "top1_agreement", ".3f"),
             ("held-out loss", "loss", ".4f"),
             ("decode tok/s", "decode_tokens_per_s", ".1f")])
    head = ["file"] + [f"{c} {w}" for c, _, _ in cols for w in ("QAD", "PTQ")]
    if kind != "encoder":
        head.insert(3, "gap recovered")
    rows = []
    for r in cmp:
        cells = [r["file"]] + [fmt(r[w].get(k), f) for _, k, f in cols
                               for w in ("quant_aware", "ptq")]
        if kind != "encoder":
            cells.insert(3, f"{r['recovered']:.0%}" if "recovered" in r else "")
        rows.append(cells)
    return head, rows


PTQ_TEXT = ("The same student distilled for the same steps with quant-aware training (QAD) "
            "and without it, then quantized (PTQ), each file measured the same way here. "
            "'gap recovered': 1 - (KL_QAD - KL_float) / (KL_PTQ - KL_float), KL_float being "
            "the plain student's float model.")


def verify_rows(v: dict) -> tuple[list[str], list[list[str]]]:
    """plan_verify.json (``plan --verify`` / ``--verify-plan``) as a table: each candidate,
    predicted against measured for this machine."""
    enc = "encoder_batch_ms" in (v.get("prediction_quality") or {})
    keys = ["encoder_batch_ms"] if enc else ["decode_tokens_per_s", "prefill_ms"]
    rows = []
    for r in v.get("candidates") or []:
        got = [f"{r['predicted'][k]:,.1f} / " + (f"{r['measured'][k]:,.1f} "
                                                 f"({r['errors'][k]:+.0%})"
                                                 if "measured" in r else "not timed")
               for k in keys]
        mark = ("*" if r["chosen"] else "") + ("v" if r.get("verified_choice") else "")
        rows.append([mark, str(r.get("round", 0)), r["shape"], f"{r['params'] / 1e6:.1f}M",
                     "yes" if r["planned_fits"] else "no", *got,
                     f"{r['speedup_measured']:.2f}x" if "speedup_measured" in r else "-",
                     {True: "yes", False: "no"}.get(r.get("meets_requirements_measured"), "-")])
    return (["", "round", "candidate", "params", "planned fits",
             *[f"{k} predicted / measured" for k in keys], "speedup measured",
             "meets measured"], rows)


def verify_lines(v: dict) -> list[str]:
    """The check of the plan in sentences: prediction quality and regret."""
    out = [f"The planner's choice, checked by measurement: {len(v.get('candidates') or [])} "
           f"candidates in {v.get('deployment')} timed on {v.get('measured_on')} (fastest of "
           f"{v.get('repeats')} runs), against this machine's predictions "
           f"({v.get('predicted_label')})."]
    for k, q in (v.get("prediction_quality") or {}).items():
        if q.get("n"):
            rho = "n/a" if q.get("spearman") is None else f"{q['spearman']:.2f}"
            noise = ("" if q.get("retiming_noise") is None else
                     f"; the chosen file re-timed {q['retiming_noise']:.1%} apart")
            out.append(f"{k}: MAPE {q['mape']:.1%}, {q['within_10pct']:.0%} within ±10%, "
                       f"Spearman {rho}{noise}.")
    t = v.get("teacher_timed") or {}
    if "measured" in t:
        k = "encoder_batch_ms" if "encoder_batch_ms" in t["measured"] else "decode_tokens_per_s"
        out.append(f"The teacher's shape ({t['shape']}), timed the same way: {k} predicted "
                   f"{t['predicted'][k]:,.1f}, measured {t['measured'][k]:,.1f} "
                   f"({t['errors'][k]:+.0%}){' (extrapolated)' if t.get('extrapolated') else ''}"
                   "; the requirements measured are derived from it.")
    elif t.get("error"):
        out.append(f"The teacher's shape could not be timed ({t['error']}); the planned "
                   "requirements stand.")
    g = v.get("regret") or {}
    if not g.get("applies"):
        out.append(f"Regret not measured: {g.get('why', 'unknown')}.")
    elif g.get("best_measured") is None:
        out.append("No candidate met the requirements measured here, the chosen one included.")
    else:
        r = g["capacity_regret"]
        out.append("Regret 0: the chosen candidate is the most capable one that meets the "
                   "requirements measured." if r == 0 else
                   f"Regret {r:.0%}: {g['best_measured']} meets the requirements measured "
                   f"and has {r:.0%} more parameters than the chosen one." if r > 0 else
                   f"The chosen candidate misses the requirements measured; the most capable "
                   f"one that meets them, {g['best_measured']}, has {-r:.0%} fewer "
                   "parameters.")
    return out + _verified_lines(v.get("verified") or {}, g.get("chosen"))


def _verified_lines(v: dict, predicted: str | None) -> list[str]:
    """The re-plan on the measured speeds (``verified``): the choice it settles on."""
    if not v.get("applies"):
        return []
    more = (f" after {v['rounds']} round{'s' * (v['rounds'] != 1)} of timing the candidates "
            "around each new choice" if v.get("rounds") else "")
    if not v.get("choice"):
        return [f"Re-planned on the measured speeds{more}: nothing fits ({v.get('why')})."]
    if not v.get("converged"):
        return [f"Re-planned on the measured speeds{more}: {v['choice']} is the choice, but "
                f"not verified: {v.get('why')}."]
    what = ("the choice stands" if v["choice"] == predicted else
            f"the choice moves from {predicted} to {v['choice']} "
            f"({v['params_vs_predicted_choice']:+.0%} parameters)")
    speed = (f", {v['speedup_measured']:.2f}x the teacher measured"
             if v.get("speedup_measured") else "")
    if v.get("margin") is not None and v.get("retiming_noise") is not None:
        speed += (f" ({v['margin']:.1%} inside the requirement, "
                  + ("within" if v["margin"] < v["retiming_noise"] else "beyond")
                  + f" the re-timing noise of {v['retiming_noise']:.1%})")
    if v.get("confirmed_speedup"):
        n = len(v.get("confirmed_speedups") or [])
        speed += (f"; timed again alternating with the teacher ({n} pairs), median "
                  f"{v['confirmed_speedup']:.2f}x"
                  + ("" if v.get("confirmed_meets_speedup") else ", short of the speedup asked"))
    bigger = v.get("bigger_measured_missing") or []
    why = (f"; the more capable {', '.join(bigger)} measured short of the requirements"
           if bigger else "")
    return [f"Re-planned on the measured speeds{more}: {what}{speed}. Verified: it meets the "
            f"requirements measured{why}. The whole chain (--verify-plan) distils this "
            "student."]


def plan_md(sec: dict) -> list[str]:
    out = []
    st = sec.get("student")
    if st:
        sh = st["shape"]
        out.append(f"Student: {sh['num_layers']} layers, hidden {sh['hidden_size']}, FFN "
                   f"{sh['intermediate_size']}, {sh['num_heads']} heads ({sh['num_kv_heads']} "
                   f"KV), {st['params'] / 1e6:.1f}M parameters"
                   + (f", {st['params_ratio']:.0%} of the teacher's "
                      f"{sec['teacher_params'] / 1e6:.1f}M." if st.get("params_ratio") else "."))
    out += [f"- {e}" for e in sec.get("explanation") or []]
    return out


def pvm_rows(sec: dict) -> tuple[list[str], list[list[str]]]:
    """Predicted against measured for the deployed format, one column per machine, each
    header naming the machine and how its figure was made."""
    pvm = sec.get("predicted_vs_measured") or []
    if not pvm:
        return [], []
    p0 = pvm[0]
    head = ["role", "file", f"predicted: {p0['predicted_target_label']}",
            f"predicted: {p0['predicted_here_label']}",
            f"measured: {p0['measured_on'] or 'not timed here'}"]
    rows = [[p["role"], p["file"]]
            + ["" if v is None else f"{v:,.1f} {p['unit']}"
               for v in (p["predicted_target"], p["predicted_here"], p["measured_here"])]
            for p in pvm]
    return head, rows


def training_text(tr: dict) -> str:
    v = tr.get("validation") or {}
    tv = (tr.get("teacher_validation") or {}).get("loss")
    fig = ", ".join(f"{k} {x:.4f}" for k, x in v.items() if isinstance(x, (int, float)))
    return (f"{tr['steps']} steps, {tr.get('tokens') or 0:,} tokens in "
            f"{(tr.get('seconds') or 0) / 60:.1f} min on {tr.get('device') or 'cpu'}"
            f" ({tr.get('tokens_per_s') or 0:,.0f} tokens/s). Held-out at the end: {fig}"
            + (f"; the teacher's own validation loss {tv:.4f}." if tv is not None else "."))


def stage_rows(tr: dict) -> tuple[list[str], list[list[str]]]:
    """A progressive chain, one row per stage: its student, what it was cut from and
    distilled by, its share of the steps and its held-out figures."""
    head = ["stage", "student", "params", "fewer than before", "steps", "distilled by",
            "held-out loss", "KL to its teacher"]
    rows = [[str(s["stage"]), s["shape"], f"{s['params'] / 1e6:.2f}M", f"{s['drop']:.0%}",
             str(s["steps"]), "the stage before" if s["stage"] > 1 and s["teacher"] ==
             s.get("pruned_from") else "the original teacher",
             fmt((s.get("validation") or {}).get("loss"), ".4f"),
             fmt((s.get("validation") or {}).get("kl"), ".4f")]
            for s in tr.get("stages") or []]
    return head, rows
