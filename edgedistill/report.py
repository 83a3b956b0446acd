"""Run reports: report.json (its format: docs/report-format.md), report.md and a self-contained
report.html with matplotlib plots (quality against speed for every artifact and baseline, and
predicted against measured speed). Every figure says measured or predicted, and where."""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.records import BenchRecord
from edgedistill.version import __version__


def _is_encoder(arts: list[dict]) -> bool:
    return any("cosine_to_teacher" in (a.get("quality") or {}) for a in arts) or any(
        "batch_ms" in (a.get("bench") or {}) for a in arts)


def _fmt(x, spec=".1f") -> str:
    return "" if x is None else format(x, spec)


def main_table(arts: list[BenchRecord | dict]) -> tuple[list[str], list[list[str]]]:
    """The report's main table (header, rows) for people, from records or their dicts."""
    arts = [a.to_dict() if isinstance(a, BenchRecord) else a for a in arts]
    enc = _is_encoder(arts)
    if enc:
        head = ["role", "artifact", "runtime", "MiB", "check", "ms/batch", "sent/s",
                "p95 ms", "RSS MB", "cosine→teacher", "top-10 overlap", "pred. target ms"]
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
            rows.append([a["role"], name, b.get("runtime", ""), _fmt((a.get("size_bytes") or 0)
                         / 2**20), check, "failed: " + b["error"][:60]] +
                        [""] * (len(head) - 6))
            continue
        if enc:
            rows.append([a["role"], name, b.get("runtime", ""),
                         _fmt((a.get("size_bytes") or 0) / 2**20), check, _fmt(b.get("batch_ms")),
                         _fmt(b.get("sentences_per_s"), ".0f"), _fmt(b.get("p95_ms")),
                         _fmt(b.get("peak_rss_mb"), ".0f"), _fmt(q.get("cosine_to_teacher"),
                                                                 ".4f"),
                         _fmt(q.get("neighbour_overlap"), ".3f"),
                         _fmt(pred.get("encoder_batch_ms"))])
        else:
            rows.append([a["role"], name, b.get("runtime", ""),
                         _fmt((a.get("size_bytes") or 0) / 2**20), check,
                         _fmt(b.get("decode_tokens_per_s")), _fmt(b.get("prefill_tokens_per_s"),
                                                                  ".0f"),
                         _fmt(b.get("ttft_ms")),
                         f"{_fmt(b.get('p50_ms'), '.2f')}/{_fmt(b.get('p95_ms'), '.2f')}",
                         _fmt(b.get("peak_rss_mb"), ".0f"), _fmt(b.get("roofline_fraction"),
                                                                 ".2f"),
                         _fmt(q.get("perplexity"), ".2f"), _fmt(q.get("kl_to_teacher"), ".4f"),
                         _fmt(q.get("top1_agreement"), ".3f"),
                         _fmt(pred.get("decode_tokens_per_s"))])
    return head, rows


def markdown_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _plots(arts: list[dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for the Pareto view and predicted vs measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc = _is_encoder(arts)
    speed, quality = ("sentences_per_s", "cosine_to_teacher") if enc else \
        ("decode_tokens_per_s", "perplexity")
    # only rows with both figures: an NPU graph (not timed), a runtime that failed or a row
    # with no quality has no point on the plot
    ok = [a for a in arts if (a.get("bench") or {}).get(speed) is not None
          and (a.get("quality") or {}).get(quality) is not None]
    figs = []
    if not ok:  # nothing timed here (a phone-NPU run): no plot rather than empty axes
        return figs
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for role, marker in (("student", "o"), ("teacher", "s")):
        pts = [a for a in ok if a["role"] == role]
        if not pts:
            continue
        xs = [a["bench"][speed] for a in pts]
        ys = [a["quality"][quality] for a in pts]
        ax.scatter(xs, ys, marker=marker, label=role, s=40)
        for a, x, y in zip(pts, xs, ys):
            ax.annotate(f"{a['format']}:{a['quant']}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    ax.set_xlabel(("sentences/s" if enc else "decode tokens/s") + " (measured, this machine)")
    ax.set_ylabel("cosine to teacher (higher is better)" if enc
                  else "held-out perplexity (lower is better)")
    ax.set_title("Quality against speed: every artifact and baseline")
    ax.grid(alpha=0.3)
    ax.legend()
    figs.append(("Quality against speed (Pareto view)", _png(fig)))
    key, pkey = ("batch_ms", "encoder_batch_ms") if enc else ("decode_tokens_per_s",) * 2
    pairs = [(a["predicted"]["this_machine"][pkey], a["bench"][key], a) for a in ok
             if (a.get("predicted") or {}).get("this_machine", {}).get(pkey)
             and a["bench"].get(key) is not None]
    if pairs:
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        ax.scatter(xs, ys, c=["C0" if p[2]["role"] == "student" else "C1" for p in pairs])
        lo, hi = min(xs + ys) * 0.8, max(xs + ys) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = measurement")
        for x, y, a in pairs:
            ax.annotate(f"{a['role'][0]} {a['quant']}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
        ax.set_xscale("log")
        ax.set_yscale("log")
        unit = "ms per batch" if enc else "decode tokens/s"
        label = pairs[0][2]["predicted"]["this_machine"].get("label", "predicted")
        ax.set_xlabel(f"predicted {unit} ({label})")
        ax.set_ylabel(f"measured {unit}")
        ax.set_title("Predicted against measured, this machine")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        figs.append(("Predicted against measured", _png(fig)))
    return figs


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def build_report(run_dir: str | Path) -> dict:
    """The report document of a run folder (report.json's content), from its bench.json
    (rows checked as :class:`BenchRecord`), plan.json, distill.json and export.json files.
    Raises EdgeDistillError when the folder has no bench.json."""
    run_dir = Path(run_dir)
    bench_path = run_dir / "bench.json"
    if not bench_path.is_file():
        raise EdgeDistillError(f"{run_dir} has no bench.json.",
                               "run 'edgedistill bench RUN_DIR' (or the full 'export') first")
    records = [BenchRecord.from_dict(r) for r in json.loads(bench_path.read_text())]
    plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").is_file() \
        else {}
    dist = json.loads((run_dir / "distill.json").read_text()) \
        if (run_dir / "distill.json").is_file() else {}
    # the first row that was timed here: NPU graphs, failed runtimes and rows that were never
    # benched carry no device
    measured_on = next((r.device for r in records if r.device), "this machine")
    target_pred = next((r.predicted["target"] for r in records
                        if r.predicted.get("target")), {})
    notes = [
        "Figures in bench columns are measured on this machine, each runtime in its own "
        "process (median of repeats after a warm-up). 'pred. target' figures are "
        f"{target_pred.get('label', 'predicted')} for the target device "
        f"({target_pred.get('basis', 'the planner')}), not measured.",
        "Quality is computed from each runtime's own outputs on held-out text; the teacher "
        "rows are the baseline: the teacher exported and quantized the same way.",
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
    checks: dict[str, list[str]] = {}
    for r in records:
        checks.setdefault(r.status, []).append(f"{r.role} {r.name}")
    notes.append("'check' is each file's verification against the torch model it came from "
                 "(verify/parity.py): passed meets the quality targets, below-target runs but "
                 "loses more than they allow, failed is broken and must not be deployed." +
                 "".join(f" {label}: {', '.join(checks[k])}." for k, label in
                         (("below-target", "Below target"), ("failed", "FAILED"),
                          ("error", "Could not run")) if checks.get(k)))
    for role in ("student", "teacher"):
        exp = run_dir / "export" / role / "export.json"
        done = json.loads(exp.read_text()) if exp.is_file() else {}
        tp = done.get("tokenizer_parity") or {}
        if tp.get("normalization"):
            notes.append(f"GGUF tokenizer ({role}): {tp['normalization']['note']}.")
        notes += [f"{role} {n}." for n in done.get("notes", [])]
    for r in records:
        if "error" in r.bench:
            notes.append(f"{r.role} {r.name} could not be measured: {r.bench['error']}")
    doc = {"target": plan.get("target", {}), "measured_on": measured_on,
           "plan": {k: plan.get(k) for k in ("deployment", "requirements", "explanation")}
           | {"student_predicted": (plan.get("student") or {}).get("predicted"),
              "teacher_predicted": (plan.get("teacher") or {}).get("predicted")},
           "artifacts": [r.to_dict() for r in records], "notes": notes}
    return doc


def write_report(run_dir: str | Path, doc: dict) -> dict:
    """Write report.json, report.md and report.html into ``run_dir``. ``doc`` holds
    ``artifacts`` (bench records) plus context (target, plan, notes). Returns the paths."""
    run_dir = Path(run_dir)
    doc = {"edgedistill_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           **doc}
    arts = doc["artifacts"]
    head, rows = main_table(arts)
    notes = doc.get("notes", [])
    title = f"edgedistill report: {doc.get('target', {}).get('name', '')}"
    md = [f"# {title}", "", f"Measured on: {doc.get('measured_on', 'this machine')}. "
          f"Target: {doc.get('target', {}).get('device', '')} (its figures are predicted).", "",
          markdown_table(head, rows), ""] + [f"- {n}" for n in notes]
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md",
             "html": run_dir / "report.html"}
    _atomic(paths["json"], json.dumps(doc, indent=2, default=str))
    _atomic(paths["md"], "\n".join(md) + "\n")
    plots = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' "
                    f"src='data:image/png;base64,{b}'>" for t, b in _plots(arts))
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in rows) + "</table>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;
font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
th{{background:#f0f0f0}}img{{max-width:100%;border:1px solid #eee}}</style></head><body>
<h1 id="title">{html.escape(title)}</h1>
<p>Measured on: <b>{html.escape(str(doc.get('measured_on', 'this machine')))}</b>.
Target device: {html.escape(str(doc.get('target', {}).get('device', '')))}: its figures are
<b>predicted</b> by the planner, not measured.</p>
{table}<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>{plots}</body></html>"""
    _atomic(paths["html"], page)
    return {k: str(v) for k, v in paths.items()}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
