"""Run reports: report.json (its format: docs/report-format.md), report.md and a self-contained
report.html. They open with the file to ship and why (:mod:`.recommend`), then every file in
one table with its Pareto frontier, the plan beside what was measured, the training curves and
predicted against measured on this machine (:mod:`.plots`). Every figure says measured or
predicted, and where. :mod:`.tables` holds the tables and sentences for people;
:mod:`.compare` puts several runs side by side."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.plan import candidate_table
from edgedistill.records import BenchRecord
from edgedistill.report.plots import png, pareto_plot, predicted_plot, training_plot
from edgedistill.report.recommend import (DEFAULT_TARGETS, advice, frontier, judge,
                                          kind_of, quality_text, recommend, row_id, timed)
from edgedistill.report.tables import (PTQ_TEXT, main_table, markdown_table, plan_md, ptq_rows,
                                       pvm_rows, stage_rows, training_text, verify_lines,
                                       verify_rows)
from edgedistill.runstate import atomic_write
from edgedistill.version import __version__

CURVE_POINTS = 400
"""Training-log rows kept in report.json (every validation row, the loss thinned to this)."""


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def training_curve(run_dir: Path) -> list[dict]:
    """train_log.jsonl's rows: every validation row, the rest thinned to CURVE_POINTS."""
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
    keep = max(1, len(rows) // CURVE_POINTS)
    return [r for i, r in enumerate(rows) if i % keep == 0 or i == len(rows) - 1
            or any(k.startswith("val_") for k in r)]


def _plan_section(plan: dict, rows: list[dict], kind: str, measured_on: str) -> dict:
    """The plan beside what was measured: the student's shape, the planner's explanation,
    its candidate table, and for the deployed format (or the nearest file the run made) the
    target's prediction, this machine's prediction and this machine's measurement, for the
    student and the teacher, each labelled with where it holds."""
    sec = {k: plan.get(k) for k in ("deployment", "requirements", "explanation")} | {
        "student_predicted": (plan.get("student") or {}).get("predicted"),
        "teacher_predicted": (plan.get("teacher") or {}).get("predicted")}
    if not plan.get("student") or not plan.get("teacher"):
        return sec
    s, t = plan["student"], plan["teacher"]
    sec["student"] = {"shape": s["shape"], "params": s["params"],
                      "params_ratio": s.get("params_ratio")}
    sec["teacher_params"] = t["params"]
    if plan.get("candidates"):
        head, cand = candidate_table(plan, top=8)
        sec["candidates"] = {"head": head, "rows": [[str(c) for c in r] for r in cand]}
    dep = plan.get("deployment") or {}
    key = "encoder_batch_ms" if kind == "encoder" else "decode_tokens_per_s"
    bkey = "batch_ms" if kind == "encoder" else "decode_tokens_per_s"
    unit = "ms per batch" if kind == "encoder" else "decode tokens/s"
    target = plan.get("target") or {}
    # the deployed format:quant, else the first file of its format the run exported, else
    # the first file timed here
    mine = [r for r in rows if r["role"] == "student" and not r.get("runtime")
            and r["format"] != "hf"]
    pick = next((r for r in mine if (r["format"], r["quant"]) == (dep.get("format"),
                                                                  dep.get("quant"))), None) \
        or next((r for r in mine if r["format"] == dep.get("format")), None) \
        or next((r for r in mine if timed(r)), None)
    pvm = []
    for role in ("student", "teacher") if pick else ():
        a = pick if role == "student" else next(
            (r for r in rows if r["role"] == "teacher" and not r.get("runtime")
             and (r["format"], r["quant"]) == (pick["format"], pick["quant"])), None)
        if a is None:
            continue
        there = (a.get("predicted") or {}).get("target") or {}
        here = (a.get("predicted") or {}).get("this_machine") or {}
        pvm.append({"role": role, "file": f"{a['format']}:{a['quant']}", "unit": unit,
                    "predicted_target": there.get(key),
                    "predicted_target_label": f"{there.get('label', 'predicted')}, for "
                                              f"{target.get('name')} ({target.get('device')})",
                    "predicted_here": here.get(key),
                    "predicted_here_label": f"{here.get('label', 'predicted')}, for "
                                            f"{measured_on}",
                    "measured_here": a["bench"].get(bkey) if timed(a) else None,
                    "measured_on": measured_on if timed(a) else None})
    sec["predicted_vs_measured"] = pvm
    return sec


def ptq_comparison(rows: list[dict], kind: str) -> list[dict]:
    """--compare-ptq: for each file of the quant-aware student (role ``student``) and the same
    student distilled without QAD (``student-ptq``), their quality against the teacher and
    speed, measured the same way; for causal LMs the recovered share of the quantization gap,
    1 - (KL_qad - KL_float) / (KL_ptq - KL_float), KL_float being the plain student's torch
    model (reported where the gap is positive)."""
    keys = (("cosine_to_teacher", "neighbour_overlap") if kind == "encoder" else
            ("kl_to_teacher", "top1_agreement", "loss"))
    speed = "sentences_per_s" if kind == "encoder" else "decode_tokens_per_s"

    def figs(a):
        q, b = a.get("quality") or {}, a.get("bench") or {}
        return {k: q.get(k) for k in keys} | {speed: b.get(speed)}

    ptq = {(a["format"], a["quant"], a.get("runtime")): a for a in rows
           if a["role"] == "student-ptq"}
    flt = next((a for a in ptq.values() if a["format"] == "hf"), None)
    kl_float = ((flt or {}).get("quality") or {}).get("kl_to_teacher")
    out = []
    for a in rows:
        b = ptq.get((a["format"], a["quant"], a.get("runtime")))
        if a["role"] != "student" or b is None:
            continue
        row = {"file": f"{a['format']}:{a['quant']}", "quant_aware": figs(a), "ptq": figs(b)}
        kq, kp = row["quant_aware"].get("kl_to_teacher"), row["ptq"].get("kl_to_teacher")
        if a["format"] != "hf" and None not in (kq, kp, kl_float) and kp > kl_float:
            row["recovered"] = 1 - (kq - kl_float) / (kp - kl_float)
        out.append(row)
    return out


def build_report(run_dir: str | Path) -> dict:
    """The report document of a run folder (report.json's content), from its bench.json
    (rows checked as :class:`BenchRecord`), plan.json, distill.json, train_log.jsonl and
    export.json files. Raises EdgeDistillError when the folder has no bench.json."""
    run_dir = Path(run_dir)
    bench_path = run_dir / "bench.json"
    if not bench_path.is_file():
        raise EdgeDistillError(f"{run_dir} has no bench.json.",
                               "run 'edgedistill bench RUN_DIR' (or the full 'export') first")
    records = [BenchRecord.from_dict(r) for r in json.loads(bench_path.read_text())]
    rows = [r.to_dict() for r in records]
    plan = _read(run_dir / "plan.json")
    verified = _read(run_dir / "plan_verify.json")  # plan --verify / --verify-plan, if run
    dist = _read(run_dir / "distill.json")
    # the first row that was timed here: NPU graphs, failed runtimes and rows that were never
    # benched carry no device
    measured_on = next((r.device for r in records if r.device), "this machine")
    target = plan.get("target", {})
    kind = kind_of(rows)
    targets = DEFAULT_TARGETS | (target.get("quality_targets") or {})
    judged = {row_id(a): judge(a, rows, kind, targets) for a in rows
              if a["format"] != "hf" or a["role"] == "student"}
    front = frontier(rows, kind)
    rec = recommend(rows, kind, targets, target.get("formats"), target.get("name", "the target"),
                    measured_on, (plan.get("teacher") or {}).get("meets_targets"))
    curve = training_curve(run_dir)
    teacher_val = {"loss": dist.get("teacher_val_loss")} if dist.get("teacher_val_loss") \
        is not None else {}
    training = ({k: dist.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_s",
                                          "aside_seconds",
                                          "device", "validation", "stages")}
                | {"teacher_validation": teacher_val, "curve": curve}) if dist or curve else {}
    target_pred = next((r.predicted["target"] for r in records
                        if r.predicted.get("target")), {})
    notes = [
        "Figures in bench columns are measured on this machine, each runtime in its own "
        "process (median of repeats after a warm-up). 'pred. target' figures are "
        f"{target_pred.get('label', 'predicted')} for the target device "
        f"({target_pred.get('basis', 'the planner')}), not measured.",
        "Quality is computed from each runtime's own outputs on held-out text; the teacher "
        "rows are the baseline: the teacher exported and quantized the same way.",
        "'frontier' marks the files on the Pareto frontier of speed against quality measured "
        "here: no other file is both faster and better. 'targets' says whether a file meets "
        f"the quality targets of {target.get('name', 'the target')} ("
        + ", ".join(f"{k} {v:g}" for k, v in rec["targets"].items()) + ").",
    ]
    if dist:
        v = dist.get("validation", {})
        if "loss" in v:
            notes.append(f"Distillation: {dist['steps']} steps, {dist['tokens']:,} tokens; "
                         f"held-out loss student {v['loss']:.4f} vs teacher "
                         f"{dist.get('teacher_val_loss', float('nan')):.4f} (torch).")
        elif "cosine" in v:
            notes.append(f"Distillation: {dist['steps']} steps; held-out embedding cosine to "
                         f"the teacher {v['cosine']:.4f} (torch).")
        if qa := dist.get("quant_aware"):
            notes.append(f"Distillation was quant-aware for {qa['format']}: the last "
                         f"{qa['steps']} steps trained {qa['tensors']} matrices through that "
                         "file's exact grids, and the student holds the rounded weights; each "
                         "file's note says whether it holds exactly the trained weights.")
        else:
            notes.append("Distillation was not quant-aware: every file is the float student "
                         "quantized afterwards.")
    checks: dict[str, list[str]] = {}
    for r in records:
        checks.setdefault(r.status, []).append(f"{r.role} {r.name}")
    notes.append("'check' is each file's verification against the torch model it came from "
                 "(float files: verify/parity.py; quantized GGUF and MatMulNBits files against "
                 "their own decoded weights: verify/own.py): passed meets the quality targets, "
                 "below-target runs but loses more than they allow, failed is broken and must "
                 "not be deployed." +
                 "".join(f" {label}: {', '.join(checks[k])}." for k, label in
                         (("below-target", "Below target"), ("failed", "FAILED"),
                          ("error", "Could not run")) if checks.get(k)))
    for role in ("student", "teacher"):
        done = _read(run_dir / "export" / role / "export.json")
        tp = done.get("tokenizer_parity") or {}
        if tp.get("normalization"):
            notes.append(f"GGUF tokenizer ({role}): {tp['normalization']['note']}.")
        notes += [f"{role} {n}." for n in done.get("notes", [])]
    for r in records:
        if "error" in r.bench:
            notes.append(f"{r.role} {r.name} could not be measured: {r.bench['error']}")
    return {"target": target, "measured_on": measured_on, "kind": kind,
            "recommendation": rec,
            "advice": advice(rows, kind, targets, rec, plan, dist, curve, measured_on),
            "frontier": front,
            "judged": {k: {"meets": j["meets"], "misses": j["misses"]} for k, j in judged.items()},
            "plan": _plan_section(plan, rows, kind, measured_on)
            | ({"verify": verified} if verified else {}),
            "training": training, "artifacts": rows, "notes": notes,
            **({"compare_ptq": cmp} if (cmp := ptq_comparison(rows, kind)) else {})}


def recommendation_lines(doc: dict) -> list[str]:
    """The recommendation as sentences, after the headline: its runner-up, the faster files
    passed over and why, then the advice."""
    rec = doc.get("recommendation") or {}
    lines = []
    f = rec.get("file") or rec.get("closest")
    vs = (f or {}).get("vs_teacher")
    if vs:
        lines.append(f"Against the teacher's {f['format']}:{f['quant']}: {vs['size_mib']:.1f} "
                     f"MiB, {vs['speed']:,.1f} {f['speed_unit']}, "
                     f"{quality_text({'figures': vs['quality']}, doc.get('kind', 'causal'))}"
                     f" (the student's: {f['size_mib']:.1f} MiB, {f['speed']:,.1f}).")
    ru = rec.get("runner_up")
    if ru:
        lines.append(f"Runner-up: {ru['id']}, {ru['why']}.")
    for p in rec.get("passed_over") or []:
        lines.append(f"Faster but passed over: {p['id']}: {p['why']}.")
    alt = rec.get("teacher_alternative")
    if alt:
        lines.append(f"The teacher's {alt['format']}:{alt['quant']} meets the quality targets, "
                     f"at {alt['speed']:,.1f} {alt['speed_unit']} ({alt['speed_basis']}); "
                     f"{alt['why']}.")
    if f and f.get("predicted_target") is not None and f["speed_basis"] == "measured":
        lines.append(f"On {doc.get('target', {}).get('name', 'the target')} it is predicted at "
                     f"{f['predicted_target']:,.1f} {f['speed_unit']} "
                     f"({f.get('predicted_label') or 'predicted'}, not measured).")
    return lines + list(doc.get("advice") or [])


def write_report(run_dir: str | Path, doc: dict) -> dict:
    """Write report.json, report.md and report.html into ``run_dir``. ``doc`` holds
    ``artifacts`` (bench records) plus context (target, plan, notes, recommendation, ...: as
    :func:`build_report` makes it). Returns the paths."""
    run_dir = Path(run_dir)
    doc = {"edgedistill_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           **doc}
    arts = doc["artifacts"]
    kind = doc.get("kind") or kind_of(arts)
    head, rows = main_table(arts, doc.get("frontier", []), doc.get("judged"))
    notes = doc.get("notes", [])
    target = doc.get("target", {})
    rec = doc.get("recommendation") or {}
    headline = rec.get("headline", "")
    more = recommendation_lines(doc)
    plan = doc.get("plan") or {}
    title = f"edgedistill report: {target.get('name', '')}"
    where = (f"Measured on: {doc.get('measured_on', 'this machine')}. Target: "
             f"{target.get('device', '')} (its figures are predicted).")
    md = [f"# {title}", "", f"**{headline}**" if headline else "", ""]
    md += [f"- {m}" for m in more] + ["", where, "", "## Files", "",
                                      markdown_table(head, rows), ""]
    if plan.get("student"):
        md += ["## Plan", ""] + plan_md(plan) + [""]
        if plan.get("predicted_vs_measured"):
            md += [markdown_table(*pvm_rows(plan)), ""]
        if plan.get("verify"):
            md += [f"- {x}" for x in verify_lines(plan["verify"])]
            md += ["", markdown_table(*verify_rows(plan["verify"])), ""]
    tr = doc.get("training") or {}
    if tr.get("steps"):
        md += ["## Training", "", training_text(tr), ""]
        if tr.get("stages"):
            md += ["Progressive chain:", "", markdown_table(*stage_rows(tr)), ""]
    if doc.get("compare_ptq"):
        md += ["## Quant-aware against distil-then-quantize", "", PTQ_TEXT, "",
               markdown_table(*ptq_rows(doc["compare_ptq"], kind)), ""]
    md += ["## Notes", ""] + [f"- {n}" for n in notes]
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md",
             "html": run_dir / "report.html"}
    atomic_write(paths["json"], doc)
    atomic_write(paths["md"], "\n".join(md) + "\n")
    atomic_write(paths["html"], _html(doc, title, where, headline, more, head, rows, kind))
    return {k: str(v) for k, v in paths.items()}


def _table_html(head, rows, cls="") -> str:
    return (f"<div class='scroll'><table class='{cls}'><tr>"
            + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                      for r in rows) + "</table></div>")


def _img(fig, alt: str) -> str:
    return "" if fig is None else \
        f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png(fig)}'>"


def _html(doc, title, where, headline, more, head, rows, kind) -> str:
    e = html.escape
    arts = doc["artifacts"]
    plan = doc.get("plan") or {}
    tr = doc.get("training") or {}
    rec = doc.get("recommendation") or {}
    ok = "ok" if rec.get("meets_targets") else "miss"
    parts = [f"<h1 id='title'>{e(title)}</h1>",
             f"<section id='recommendation' class='{ok}'><p id='headline'>{e(headline)}</p>"
             + ("<ul>" + "".join(f"<li>{e(m)}</li>" for m in more) + "</ul>" if more else "")
             + "</section>",
             f"<p>{e(where)}</p>",
             "<section id='files'><h2>Files</h2>" + _table_html(head, rows, "files")
             + "</section>"]
    pareto = pareto_plot(arts, kind, doc.get("frontier", []),
                         doc.get("measured_on", "this machine"))
    if pareto is not None:
        parts.append("<section id='pareto'><h2>Quality against speed</h2>"
                     + _img(pareto, "quality against speed") + "</section>")
    if plan.get("student"):
        body = "".join(f"<p>{e(line)}</p>" if not line.startswith("- ") else "" for line in
                       plan_md(plan)) + "<ul>" + "".join(
            f"<li>{e(x)}</li>" for x in plan.get("explanation") or []) + "</ul>"
        if plan.get("candidates"):
            body += ("<h3>Candidates (the planner's table, top rows; * chosen)</h3>"
                     + _table_html(plan["candidates"]["head"], plan["candidates"]["rows"]))
        if plan.get("predicted_vs_measured"):
            body += "<h3>Predicted against measured</h3>" + _table_html(*pvm_rows(plan))
        if plan.get("verify"):
            body += ("<h3 id='plan-verify'>The choice, checked by measurement</h3><ul>"
                     + "".join(f"<li>{e(x)}</li>" for x in verify_lines(plan["verify"]))
                     + "</ul>" + _table_html(*verify_rows(plan["verify"])))
        parts.append(f"<section id='plan'><h2>Plan</h2>{body}</section>")
    if tr.get("curve"):
        parts.append("<section id='training'><h2>Training</h2>"
                     f"<p>{e(training_text(tr)) if tr.get('steps') else ''}</p>"
                     + ("<h3>Progressive chain</h3>" + _table_html(*stage_rows(tr))
                        if tr.get("stages") else "")
                     + _img(training_plot(tr["curve"], tr.get("teacher_validation") or {}),
                            "training curves") + "</section>")
    pred = predicted_plot(arts, kind)
    if pred is not None:
        parts.append("<section id='predicted'><h2>Predicted against measured, this machine"
                     "</h2>" + _img(pred, "predicted against measured") + "</section>")
    if doc.get("compare_ptq"):
        parts.append("<section id='compare-ptq'><h2>Quant-aware against distil-then-quantize"
                     f"</h2><p>{e(PTQ_TEXT)}</p>"
                     + _table_html(*ptq_rows(doc["compare_ptq"], kind)) + "</section>")
    parts.append("<section id='notes'><h2>Notes</h2><ul>"
                 + "".join(f"<li>{e(n)}</li>" for n in doc.get("notes", [])) + "</ul></section>")
    style = ("body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em}"
             "#recommendation{border-left:6px solid #2a7;background:#f3fbf6;padding:.6em 1em}"
             "#recommendation.miss{border-color:#c62;background:#fdf5f0}"
             "#headline{font-size:1.15em;font-weight:bold}"
             ".scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px;text-align:right;"
             "white-space:nowrap}th{background:#f0f0f0;white-space:normal;max-width:22em}"
             "img{max-width:100%;height:auto;border:1px solid #eee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
