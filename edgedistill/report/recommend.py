"""Which file to ship, and why: each file judged against the target's quality targets, the
Pareto frontier of speed against quality, the recommendation with its runner-up, and advice
when the student is far from the teacher. Works on report rows (BenchRecord dicts)."""
from __future__ import annotations

import math
from dataclasses import asdict

from edgedistill.profiles import QualityTargets

DEFAULT_TARGETS = asdict(QualityTargets())
"""The profiles' defaults, for a run whose plan.json predates them."""

# (figure, at least/at most, label) per kind of model
TARGETS = {"encoder": (("cosine_to_teacher", ">=", "cosine"),
                       ("neighbour_overlap", ">=", "top-10 overlap")),
           "causal": (("top1_agreement", ">=", "top-1 agreement"),
                      ("perplexity_ratio", "<=", "perplexity ratio"))}
GENERAL = (("general_cosine", "cosine_to_teacher"), ("general_overlap", "neighbour_overlap"))
"""An encoder's figures on held-out general English (bench's ``general_english``), each judged
against the same target as its in-domain figure: a file ships on what users embed too."""
CLOSE = 0.005
"""When no file meets the targets, files whose worst relative miss is within this of the
closest one's count as equally close, and the fastest of them is named: a quantization that
moves quality by less (the demo's onnx int8 against its gguf f16: 0.0016 cosine) is no reason
to name a file 4.8x slower."""
SPEED = {"encoder": ("sentences_per_s", "sentences/s"),
         "causal": ("decode_tokens_per_s", "decode tokens/s")}
QUALITY = {"encoder": ("cosine_to_teacher", "cosine to teacher", True),
           "causal": ("perplexity", "perplexity", False)}
"""The quality axis of the Pareto view: (figure, label, higher is better)."""


def kind_of(rows: list[dict]) -> str:
    """'encoder' when any row has an encoder's figures, else 'causal'."""
    enc = any("cosine_to_teacher" in (a.get("quality") or {}) for a in rows) or any(
        "batch_ms" in (a.get("bench") or {}) for a in rows)
    return "encoder" if enc else "causal"


def row_id(a: dict) -> str:
    """A row's name in the report: role, format:quant, and its GPU runtime if it has one."""
    rt = f" ({a['runtime']})" if a.get("runtime") else ""
    return f"{a['role']} {a['format']}:{a['quant']}{rt}"


def timed(a: dict) -> bool:
    b = a.get("bench") or {}
    return bool(b.get("measured")) and "error" not in b


def speed(a: dict, kind: str) -> tuple[float | None, str]:
    """(speed, basis): measured here when the row was timed, else the target's prediction
    ('predicted'), else (None, '')."""
    key, _ = SPEED[kind]
    b = a.get("bench") or {}
    if timed(a) and b.get(key) is not None:
        return float(b[key]), "measured"
    s = predicted_speed((a.get("predicted") or {}).get("target") or {}, kind)
    return (s, "predicted") if s is not None else (None, "")


def predicted_speed(pred: dict, kind: str) -> float | None:
    """A prediction's speed in the kind's unit (an encoder's batch time as sentences/s)."""
    key, _ = SPEED[kind]
    if pred.get(key) is not None:
        return float(pred[key])
    if kind == "encoder" and pred.get("encoder_batch_ms") and pred.get("encoder_batch"):
        return 1000.0 * pred["encoder_batch"] / pred["encoder_batch_ms"]
    return None


def teacher_perplexity(rows: list[dict]) -> float | None:
    """The teacher's own held-out perplexity: its torch row, else its best file."""
    hf = [a for a in rows if a["role"] == "teacher" and a["format"] == "hf"
          and (a.get("quality") or {}).get("perplexity")]
    pool = hf or [a for a in rows if a["role"] == "teacher"
                  and (a.get("quality") or {}).get("perplexity")]
    return min((a["quality"]["perplexity"] for a in pool), default=None)


def quality_figures(a: dict, rows: list[dict], kind: str) -> tuple[dict, str]:
    """The row's quality against the teacher as the targets name it, and where it comes from.
    An NPU graph is verified against the float model it came from, not scored against the
    teacher: its figures are that float model's (torch row of the same role) carried through
    the file's own agreement with it (top-1 agreement and cosines multiplied by the file's,
    perplexity by exp of its KL), and say so: an estimate, which keeps a file that loses
    most of its model from ranking as the model."""
    q = a.get("quality") or {}
    source = "the file's own outputs on held-out text"
    if "error" in q:
        return {}, ""
    fidelity = None
    if kind == "encoder" and "cosine_to_teacher" not in q or \
            kind == "causal" and "top1_agreement" in q and "perplexity" not in q:
        same = next((r for r in rows if r["role"] == a["role"] and r["format"] == "hf"
                     and (r.get("quality") or {})), None)
        if same is None:
            return {}, ""
        q = same["quality"]
        fidelity = a.get("parity") or {}
        source = (f"the float {a['role']} (torch), carried through the file's agreement with "
                  f"it (an estimate)")
    figs = {}
    if kind == "encoder":
        keep = (fidelity or {}).get("cosine")
        keep = 1.0 if keep is None else max(float(keep), 0.0)
        gen = q.get("general_english") or {}
        for key in ("cosine_to_teacher", "neighbour_overlap"):
            if q.get(key) is not None:
                figs[key] = float(q[key]) * (keep if key == "cosine_to_teacher" else 1.0)
        for g, key in GENERAL:
            if gen.get(key) is not None:
                figs[g] = float(gen[key]) * (keep if key == "cosine_to_teacher" else 1.0)
    else:
        top1 = (fidelity or {}).get("top1_agreement")
        kl = (fidelity or {}).get("kl")
        if q.get("top1_agreement") is not None:
            figs["top1_agreement"] = float(q["top1_agreement"]) * (
                1.0 if top1 is None else float(top1))
        ref = teacher_perplexity(rows)
        if q.get("perplexity") is not None and ref:
            figs["perplexity_ratio"] = float(q["perplexity"]) / ref * (
                1.0 if kl is None else math.exp(min(float(kl), 50.0)))
    return figs, source


def judge(a: dict, rows: list[dict], kind: str, targets: dict) -> dict:
    """{meets, misses, shortfall, figures, source}: a row against the quality targets.
    ``shortfall`` is the worst relative miss (0 when it meets them all)."""
    figs, source = quality_figures(a, rows, kind)
    misses, worst = [], 0.0
    for key, op, label in TARGETS[kind]:
        want = targets.get(key, DEFAULT_TARGETS[key])
        v = figs.get(key)
        if v is None:
            misses.append(f"no {label} figure")
            worst = max(worst, 1.0)
            continue
        miss = (want - v) / want if op == ">=" else (v - want) / want
        if miss > 1e-12:
            misses.append(f"{label} {v:.3f} {'<' if op == '>=' else '>'} {want:g}")
            worst = max(worst, miss)
    for g, key in GENERAL if kind == "encoder" else ():
        want, v = targets.get(key, DEFAULT_TARGETS[key]), figs.get(g)
        if v is not None and (want - v) / want > 1e-12:
            label = dict((k, lab) for k, _, lab in TARGETS[kind])[key]
            misses.append(f"general-English {label} {v:.3f} < {want:g}")
            worst = max(worst, (want - v) / want)
    return {"meets": not misses, "misses": misses, "shortfall": worst, "figures": figs,
            "source": source}


def frontier(rows: list[dict], kind: str) -> list[str]:
    """Row ids on the Pareto frontier of the files measured here: no other timed row is at
    least as fast and at least as good, and better in one."""
    key, _ = SPEED[kind]
    qkey, _, higher = QUALITY[kind]
    pts = [(a["bench"][key], a["quality"][qkey] if higher else -a["quality"][qkey], row_id(a))
           for a in rows if timed(a) and (a.get("bench") or {}).get(key) is not None
           and (a.get("quality") or {}).get(qkey) is not None]
    return [n for s, q, n in pts
            if not any(s2 >= s and q2 >= q and (s2 > s or q2 > q) for s2, q2, _ in pts)]


def _deployable(a: dict, formats: dict | None) -> bool:
    if a["format"] == "hf":
        return False
    return not formats or a["quant"] in formats.get(a["format"], [])


def quality_text(j: dict, kind: str) -> str:
    f = j["figures"]
    if kind == "encoder":
        parts = [f"cosine {f['cosine_to_teacher']:.3f} to the teacher"
                 if "cosine_to_teacher" in f else "",
                 f"top-10 neighbour overlap {f['neighbour_overlap']:.2f}"
                 if "neighbour_overlap" in f else ""]
        if "general_cosine" in f:
            parts[-1] += (f" (on general English: cosine {f['general_cosine']:.3f}, overlap "
                          f"{f.get('general_overlap', float('nan')):.2f})")
    else:
        parts = [f"top-1 agreement {f['top1_agreement']:.0%} with the teacher"
                 if "top1_agreement" in f else "",
                 f"perplexity {f['perplexity_ratio']:.2f}x the teacher's"
                 if "perplexity_ratio" in f else ""]
    return ", ".join(p for p in parts if p)


def _fmt_speed(v: float, kind: str) -> str:
    return f"{v:,.0f} {SPEED[kind][1]}" if v >= 100 else f"{v:,.1f} {SPEED[kind][1]}"


def _ranked(rows: list[dict], role: str, kind: str, targets: dict, formats: dict | None):
    """(row, speed, basis, judgement) of the role's deployable files with a speed: timed here
    first, fastest first, then the rest by the target's prediction."""
    cands = []
    for a in rows:
        if a["role"] != role or not _deployable(a, formats):
            continue
        s, basis = speed(a, kind)
        if s is not None:
            cands.append((a, s, basis, judge(a, rows, kind, targets)))
    return sorted(cands, key=lambda c: (c[2] != "measured", -c[1]))


def recommend(rows: list[dict], kind: str, targets: dict, formats: dict | None,
              target_name: str, measured_on: str, teacher_fits: bool | None = None) -> dict:
    """The file to ship: the fastest of the student's files in a format:quant the profile
    lists whose verdict is ``passed`` and whose quality meets ``targets``. When none does, the
    ``closest`` is named from the files whose check passed, else from those below target; a
    file whose check failed is never named (``closest`` is None and ``failed`` lists them).
    Files timed here
    rank by that speed, before files that were not (NPU graphs), which rank by the target's
    prediction. The teacher's files are the baseline; when no student file meets the targets
    and one of the teacher's does, it is named as ``teacher_alternative`` (with whether the
    plan predicted the teacher meets the target's speed: ``teacher_fits``). Returns
    report.json's ``recommendation``."""
    cands = _ranked(rows, "student", kind, targets, formats)
    teachers = _ranked(rows, "teacher", kind, targets, formats)

    def status(a):
        return (a.get("parity") or {}).get("status")

    def why_not(a, j):
        out = [] if status(a) == "passed" else [f"its check is {status(a) or 'missing'}"]
        return out + j["misses"]

    def entry(a, s, basis, j):
        pred = ((a.get("predicted") or {}).get("target") or {})
        return {"id": row_id(a), "role": a["role"], "format": a["format"], "quant": a["quant"],
                "path": a.get("path"), "runtime": (a.get("bench") or {}).get("runtime"),
                "size_mib": (a.get("size_bytes") or 0) / 2**20, "speed": s,
                "speed_unit": SPEED[kind][1], "speed_basis": basis,
                "measured_on": measured_on if basis == "measured" else None,
                "predicted_target": predicted_speed(pred, kind),
                "predicted_label": pred.get("label"), "quality": j["figures"],
                "quality_source": j["source"], "check": status(a)} | _versus(a, s, basis)

    def _versus(a, s, basis):
        """The teacher's file at the same format:quant, timed (or predicted) the same way."""
        same = next((c for c in teachers if a["role"] == "student"
                     and (c[0]["format"], c[0]["quant"]) == (a["format"], a["quant"])
                     and c[2] == basis), None)
        if same is None:
            return {}
        return {"vs_teacher": {"id": row_id(same[0]), "speed": same[1],
                               "speedup": s / same[1],
                               "size_mib": (same[0].get("size_bytes") or 0) / 2**20,
                               "quality": same[3]["figures"]}}

    ok = [c for c in cands if status(c[0]) == "passed" and c[3]["meets"]]
    doc: dict = {"targets": {k: targets.get(k, DEFAULT_TARGETS[k]) for k, _, _ in TARGETS[kind]},
                 "kind": kind, "candidates": len(cands)}
    if not cands:
        doc |= {"file": None, "meets_targets": False,
                "headline": "No student file in a format the target deploys has a speed, "
                            "measured or predicted: nothing to recommend."}
        return doc
    if ok:
        a, s, basis, j = ok[0]
        best = entry(a, s, basis, j)
        doc |= {"file": best, "meets_targets": True}
        passed_over = [{"id": row_id(c[0]), "why": "; ".join(why_not(c[0], c[3]))}
                       for c in cands[:cands.index(ok[0])]]
        if len(ok) > 1:
            a2, s2, b2, j2 = ok[1]
            why = (f"{s / s2:.2f}x slower ({_fmt_speed(s2, kind)}, {b2})" if b2 == basis
                   else f"not timed here (predicted {_fmt_speed(s2, kind)} on the target)")
            doc["runner_up"] = entry(a2, s2, b2, j2) | {"why": why}
        doc["passed_over"] = passed_over
    else:
        # nothing meets the targets: the closest file that passed its check, else one below
        # its target; a file whose check failed (broken against the model it came from) is
        # never named. Of those about as close (CLOSE), the fastest (measured first).
        pool = ([c for c in cands if status(c[0]) == "passed"]
                or [c for c in cands if status(c[0]) == "below-target"])
        doc |= {"file": None, "closest": None, "meets_targets": False}
        if pool:
            least = min(c[3]["shortfall"] for c in pool)
            a, s, basis, j = next(c for c in pool if c[3]["shortfall"] <= least + CLOSE)
            doc["closest"] = entry(a, s, basis, j) | {"misses": why_not(a, j)}
        else:
            doc["failed"] = [{"id": row_id(c[0]), "check": status(c[0]) or "missing"}
                             for c in cands]
        alt = next((c for c in teachers if status(c[0]) == "passed" and c[3]["meets"]), None)
        if alt is not None:
            fits = ("the plan predicted it meets the target's speed" if teacher_fits else
                    "the plan predicted it too slow for the target" if teacher_fits is False
                    else "the plan did not say whether it is fast enough for the target")
            doc["teacher_alternative"] = entry(*alt) | {"why": fits}
    doc["headline"] = _headline(doc, kind, target_name)
    return doc


def _headline(doc: dict, kind: str, target_name: str) -> str:
    f = doc["file"] or doc["closest"]
    if f is None:
        return (f"Nothing to ship for {target_name}: every student file failed its check "
                f"against the model it came from ({', '.join(x['id'] for x in doc['failed'])})."
                " Ship a higher-precision format, or train quant-aware for this one.")
    where = (f"measured on {f['measured_on']}" if f["speed_basis"] == "measured"
             else f"predicted for {target_name} ({f.get('predicted_label') or 'predicted'}), "
                  "not timed here")
    qual = quality_text({"figures": f["quality"]}, kind)
    src = "" if f["quality_source"].startswith("the file's own") else \
        f" (quality of {f['quality_source']})"
    vs = f.get("vs_teacher")
    if vs:
        ratio = (f"{vs['speedup']:.2f}x faster" if vs["speedup"] >= 1
                 else f"{1 / vs['speedup']:.2f}x slower")
        speed_txt = (f"{ratio} than the teacher's {f['format']}:{f['quant']}"
                     f" ({_fmt_speed(f['speed'], kind)} against {_fmt_speed(vs['speed'], kind)},"
                     f" {where})")
    else:
        speed_txt = f"{_fmt_speed(f['speed'], kind)} ({where})"
    body = (f"{f['role']} {f['format']}:{f['quant']} ({f['runtime'] or f['format']}, "
            f"{f['size_mib']:.1f} MiB): {speed_txt}, {qual}{src}")
    if doc["meets_targets"]:
        return f"Ship the {body}."
    return (f"No file meets {target_name}'s quality targets. The closest is the {body}; it "
            f"misses: {'; '.join(f['misses'])}.")


def advice(rows: list[dict], kind: str, targets: dict, rec: dict, plan: dict, dist: dict,
           curve: list[dict], measured_on: str) -> list[str]:
    """What would bring the student closer to the teacher, when it is far from it: the gap,
    then more steps (from the validation figures over the run's second half), a larger
    student (when this machine measured far more speedup than the plan asked), a GPU, or a
    higher-precision format (when the loss is in the quantization)."""
    float_student = next((a for a in rows if a["role"] == "student" and a["format"] == "hf"
                          and (a.get("quality") or {})), None)
    if float_student is None:
        return []
    jf = judge(float_student, rows, kind, targets)
    shipped = rec.get("file") or rec.get("closest")
    out = domain_gap(float_student["quality"]) if kind == "encoder" else []
    if jf["meets"] and rec.get("meets_targets"):
        return out
    q = float_student["quality"]
    ref = teacher_perplexity(rows)
    if kind == "causal" and q.get("perplexity") and ref:
        out.append(f"The student is far from the teacher: held-out perplexity "
                   f"{q['perplexity']:.1f} against the teacher's {ref:.1f} "
                   f"({q['perplexity'] / ref:.1f}x), top-1 agreement "
                   f"{q.get('top1_agreement', float('nan')):.0%} (float student, torch).")
    elif kind == "encoder" and q.get("cosine_to_teacher") is not None:
        out.append(f"The student is far from the teacher: cosine {q['cosine_to_teacher']:.3f}, "
                   f"top-10 overlap {q.get('neighbour_overlap', float('nan')):.2f} "
                   "(float student, torch).")
    if jf["meets"] and shipped and not rec.get("meets_targets"):
        out.append(f"The float student meets the targets and its files do not: the loss is in "
                   f"the quantization. Ship a higher-precision format (e.g. "
                   f"{_higher_precision(rows, shipped)}) or train quant-aware.")
        return out
    out += _more_steps(curve, dist)
    asked = (plan.get("requirements") or {}).get("speedup")
    got = (shipped or {}).get("vs_teacher", {}).get("speedup")
    if asked and got and got > 1.25 * asked:
        lower = max(1.0, asked * asked / got)
        out.append(f"The plan asked {asked:g}x on the target; {measured_on} measured {got:.1f}x "
                   f"for the shipped format. A lower --speedup (e.g. {lower:.1f}) plans a "
                   "larger student, which keeps more of the teacher.")
    if dist and dist.get("device", "cpu") == "cpu":
        out.append(f"Distillation ran on the CPU ({dist.get('tokens_per_s', 0):,.0f} tokens/s); "
                   "a GPU makes many more steps affordable.")
    return out


DOMAIN_GAP = (0.03, 0.10)
"""In-domain minus general-English cosine, and top-10 overlap, beyond which the report says
the student learned its training text's domain rather than the teacher."""


def domain_gap(q: dict) -> list[str]:
    """A sentence when an encoder does well on held-out text of its training data and clearly
    worse on general English it never saw (the float student's figures)."""
    g = q.get("general_english") or {}
    if q.get("cosine_to_teacher") is None or g.get("cosine_to_teacher") is None:
        return []
    dc = q["cosine_to_teacher"] - g["cosine_to_teacher"]
    do = q.get("neighbour_overlap", 0) - g.get("neighbour_overlap", 0)
    if dc <= DOMAIN_GAP[0] and do <= DOMAIN_GAP[1]:
        return []
    return [f"The student holds up less well outside its training text: cosine "
            f"{q['cosine_to_teacher']:.3f} and top-10 overlap {q.get('neighbour_overlap', 0):.2f} "
            f"on held-out text of the training data, {g['cosine_to_teacher']:.3f} and "
            f"{g.get('neighbour_overlap', 0):.2f} on general English it never saw "
            f"({g.get('source', 'held-out news')}; float student, torch). Distil on text like "
            "what it will embed (--data), or on more varied text."]


def _higher_precision(rows: list[dict], shipped: dict) -> str:
    fmt = shipped["format"]
    order = ("q8_0", "q6_k", "f16") if fmt == "gguf" else ("qdq_a16w8", "int8", "fp16", "fp32")
    have = {a["quant"] for a in rows if a["format"] == fmt}
    return next((f"{fmt}:{q}" for q in order if q in have and q != shipped["quant"]),
                f"{fmt}:{order[0]}")


VAL_GAIN = {"cosine": 0.005, "kl": 0.03, "loss": 0.03}
"""Gain over a run's second half beyond which the report says more steps should help: the
validation cosine's rise (absolute), or the validation KL's or loss's fall (relative)."""


def val_trend(curve: list[dict]) -> tuple[str, int, float, int, float] | None:
    """(validation figure, step at about half the run, its value there, last step, its value
    there) from the training log's validation records; None with fewer than two. The figure is
    the student's cosine to the teacher (encoders), else its KL to the teacher, else its loss.
    Unlike the training loss, which flattens at the end of any run whose learning rate decays,
    these show whether the run was still improving."""
    for key in ("val_cosine", "val_kl", "val_loss"):
        recs = [r for r in curve if isinstance(r.get(key), (int, float))
                and math.isfinite(r[key])]
        if len(recs) >= 2:
            end = recs[-1]
            mid = max((r for r in recs[:-1] if r["step"] <= end["step"] / 2),
                      key=lambda r: r["step"], default=recs[0])
            return key[4:], mid["step"], mid[key], end["step"], end[key]
    return None


def _more_steps(curve: list[dict], dist: dict) -> list[str]:
    """Whether more steps should close part of the gap: from the validation figures over the
    run's second half, else from the training loss's last quarter."""
    steps = dist.get("steps", "?")
    vt = val_trend(curve)
    if vt is not None:
        name, s0, v0, s1, v1 = vt
        gain = (v1 - v0) if name == "cosine" else ((v0 - v1) / v0 if v0 else 0.0)
        moved = f"{v0:.4g} at step {s0}, {v1:.4g} at step {s1}"
        if gain > VAL_GAIN[name]:
            way = "rising" if name == "cosine" else "falling"
            return [f"The validation {name} was still {way} over the second half of the run "
                    f"({moved}): more --steps (now {steps}) should close part of the gap. (The "
                    "training loss flattens at the end either way: the learning rate decays.)"]
        return [f"The validation {name} had flattened over the second half of the run "
                f"({moved}): more steps alone will close little."]
    trend = loss_trend(curve)
    if trend is None:
        return []
    drop, span = trend
    if drop > 0.03:
        return [f"The training loss was still falling ({drop:.0%} over the last {span} steps): "
                f"more --steps (now {steps}) should close part of the gap."]
    return [f"The training loss had flattened ({drop:.1%} over the last {span} steps): more "
            "steps alone will close little."]


def loss_trend(curve: list[dict]) -> tuple[float, int] | None:
    """(relative drop of the training loss over the last quarter of steps, that span), from
    means of the first and last tenth of that quarter; None with under 20 logged steps."""
    losses = [r["loss"] for r in curve if r.get("loss") is not None and math.isfinite(r["loss"])]
    if len(losses) < 20:
        return None
    tail = losses[-max(8, len(losses) // 4):]
    k = max(2, len(tail) // 10)
    first, last = sum(tail[:k]) / k, sum(tail[-k:]) / k
    return ((first - last) / first if first else 0.0), len(tail)
