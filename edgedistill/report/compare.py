"""``edgedistill report --compare RUN [RUN ...]``: runs side by side, from their report.json
files (written first where a run has only bench.json): each run's recommended file, then each
student format:quant that more than one run made, in one table and one plot."""
from __future__ import annotations

import html
import json
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.report import build_report, markdown_table, write_report
from edgedistill.report.plots import compare_plot, png
from edgedistill.report.recommend import QUALITY, SPEED, quality_text, speed
from edgedistill.runstate import atomic_write


def _load(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        if not (run_dir / "bench.json").is_file():
            raise EdgeDistillError(f"{run_dir} has no report.json or bench.json.",
                                   "pass run folders made by 'edgedistill export' (or "
                                   "'edgedistill bench')")
        write_report(run_dir, build_report(run_dir))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgeDistillError(f"{path} is not valid JSON ({e.msg}).",
                               f"rewrite it with 'edgedistill report {run_dir}'") from None


def _names(dirs: list[Path]) -> list[str]:
    """Short unique names: the folder names, with their parents where two share one."""
    names = [d.name or str(d) for d in dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    return names


def compare(run_dirs: list[str | Path]) -> dict:
    """The comparison document (compare.json's content) of two or more run folders."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise EdgeDistillError("--compare needs at least two run folders.",
                               "write e.g. 'edgedistill report --compare runs/a runs/b'")
    for d in dirs:
        if not d.is_dir():
            raise EdgeDistillError(f"run folder {d} does not exist.", "check the path")
    docs = [_load(d) for d in dirs]
    kinds = {doc.get("kind") for doc in docs}
    if len(kinds) > 1:
        raise EdgeDistillError(f"these runs mix model kinds ({', '.join(sorted(map(str, kinds)))})"
                               ": their quality figures do not compare.",
                               "compare runs of encoders with encoders, causal LMs with "
                               "causal LMs")
    kind = kinds.pop() or "causal"
    qkey, qlabel, _ = QUALITY[kind]
    runs = []
    for d, name, doc in zip(dirs, _names(dirs), docs):
        rec = doc.get("recommendation") or {}
        f = rec.get("file") or rec.get("closest") or {}
        plan = doc.get("plan") or {}
        runs.append({"name": name, "path": str(d), "target": (doc.get("target") or {}).get("name"),
                     "measured_on": doc.get("measured_on"),
                     "student_params": (plan.get("student") or {}).get("params"),
                     "speedup_asked": (plan.get("requirements") or {}).get("speedup"),
                     "steps": (doc.get("training") or {}).get("steps"),
                     "recommended": f.get("id"), "meets_targets": rec.get("meets_targets"),
                     "recommendation": f, "rows": doc.get("artifacts", [])})
    shared = {}
    for run in runs:
        for a in run["rows"]:
            if a["role"] == "student" and a["format"] != "hf" and not a.get("runtime"):
                shared.setdefault(f"{a['format']}:{a['quant']}", {})[run["name"]] = a
    formats = {}
    for name, per_run in sorted(shared.items()):
        if len(per_run) < 2:
            continue
        formats[name] = {r: {"speed": speed(a, kind)[0], "speed_basis": speed(a, kind)[1],
                             "quality": (a.get("quality") or {}).get(qkey),
                             "check": (a.get("parity") or {}).get("status"),
                             "size_mib": (a.get("size_bytes") or 0) / 2**20}
                         for r, a in per_run.items()}
    return {"kind": kind, "speed_unit": SPEED[kind][1], "quality": qlabel,
            "runs": runs, "formats": formats}


def compare_tables(doc: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the comparison's tables for people."""
    unit, qlabel = doc["speed_unit"], doc["quality"]
    head = ["run", "target", "student params", "steps", "recommended", unit, "vs teacher",
            "quality against the teacher", "MiB", "meets targets", "measured on"]
    rows = []
    for r in doc["runs"]:
        f = r["recommendation"] or {}
        qtxt = quality_text({"figures": f.get("quality") or {}}, doc["kind"])
        rows.append([r["name"], r["target"] or "", f"{r['student_params'] / 1e6:.1f}M"
                     if r["student_params"] else "", str(r["steps"] or ""),
                     f"{f.get('role', '')} {f.get('format', '')}:{f.get('quant', '')}"
                     if f else "none", _num(f.get("speed")) + ("" if f.get("speed_basis")
                                                               in (None, "measured")
                                                               else " (predicted)"),
                     f"{f['vs_teacher']['speedup']:.2f}x" if f.get("vs_teacher") else "",
                     qtxt, _num(f.get("size_mib")),
                     "yes" if r["meets_targets"] else "no", r["measured_on"] or ""])
    tables = [("Recommended file of each run", head, rows)]
    names = [r["name"] for r in doc["runs"]]
    if doc["formats"]:
        fhead = ["file"] + [f"{n}: {unit} / {qlabel}" for n in names]
        frows = []
        for fmt, per in doc["formats"].items():
            frows.append([fmt] + [
                (f"{_num(per[n]['speed'])} / {_num(per[n]['quality'], '.4f')}"
                 + ("" if per[n]["check"] in (None, "passed") else f" ({per[n]['check']})"))
                if n in per else "" for n in names])
        tables.append(("Student files each format:quant", fhead, frows))
    return tables


def _num(v, spec=",.1f") -> str:
    return "" if v is None else format(v, spec)


def write_compare(out: str | Path, doc: dict) -> dict:
    """Write compare.json, compare.md and compare.html into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = compare_tables(doc)
    md = ["# edgedistill: runs compared", ""]
    for title, head, rows in tables:
        md += [f"## {title}", "", markdown_table(head, rows), ""]
    md.append("Each run's speed is measured on its own machine (see 'measured on'); compare "
              "speeds only between runs measured on the same one.")
    e = html.escape
    body = "".join(f"<h2>{e(t)}</h2><div class='scroll'><table><tr>"
                   + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                             for r in rows) + "</table></div>" for t, head, rows in tables)
    fig = compare_plot(doc["runs"], doc["kind"])
    if fig is not None:
        body += ("<h2>Quality against speed</h2><img alt='runs compared' "
                 f"src='data:image/png;base64,{png(fig)}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>edgedistill: runs "
            "compared</title><style>body{font-family:sans-serif;margin:1.5em auto;"
            "max-width:1200px;padding:0 1em}.scroll{overflow-x:auto}table{border-collapse:"
            "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px}th{background:"
            "#f0f0f0}img{max-width:100%;height:auto}</style></head><body>"
            f"<h1>edgedistill: runs compared</h1>{body}<p>{e(md[-1])}</p></body></html>")
    paths = {"json": out / "compare.json", "md": out / "compare.md", "html": out / "compare.html"}
    atomic_write(paths["json"], {k: v for k, v in doc.items()} | {
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in doc["runs"]]})
    atomic_write(paths["md"], "\n".join(md) + "\n")
    atomic_write(paths["html"], page)
    return {k: str(v) for k, v in paths.items()}
