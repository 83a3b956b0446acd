"""The report's plots, as base64 PNGs: quality against speed with its Pareto frontier,
predicted against measured on this machine, and the training curves. Labels sit in a column
beside the axes, spread so that none overlaps another (:func:`spread`)."""
from __future__ import annotations

import base64
import io

from edgedistill.report.recommend import QUALITY, SPEED, row_id, timed


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def spread(ys: list[float], gap: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """Label positions near ``ys`` (axes fractions) with at least ``gap`` between neighbours,
    inside [lo, hi], order kept: pushed down from the top, then up from the bottom."""
    if not ys:
        return []
    order = sorted(range(len(ys)), key=lambda i: -ys[i])
    gap = min(gap, (hi - lo) / max(1, len(ys) - 1)) if len(ys) > 1 else gap
    pos = [min(hi, ys[i]) for i in order]
    for k in range(1, len(pos)):
        pos[k] = min(pos[k], pos[k - 1] - gap)
    if pos[-1] < lo:
        pos[-1] = lo
        for k in range(len(pos) - 2, -1, -1):
            pos[k] = max(pos[k], pos[k + 1] + gap)
    out = [0.0] * len(ys)
    for k, i in enumerate(order):
        out[i] = pos[k]
    return out


def _labelled(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Label each (x, y, text, colour) point in a column right of the axes, with a leader."""
    if not points:
        return
    ax.figure.canvas.draw()
    to_axes = ax.transAxes.inverted()
    frac = [to_axes.transform(ax.transData.transform((x, y)))[1] for x, y, _, _ in points]
    height_in = ax.get_position().height * ax.figure.get_figheight()
    gap = (7.5 / 72) / height_in  # one 7-point line
    for (x, y, text, colour), ty in zip(points, spread(frac, gap)):
        ax.annotate(text, (x, y), xytext=(1.03, ty), textcoords="axes fraction",
                    fontsize=7, va="center", color=colour, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.4, "alpha": 0.5})


def pareto_plot(rows: list[dict], kind: str, front: list[str], measured_on: str):
    """Quality against speed of every file timed here, students and teachers as two series,
    the frontier drawn through its files; None when nothing was timed with a quality."""
    plt = _plt()
    skey, sunit = SPEED[kind]
    qkey, qlabel, higher = QUALITY[kind]
    ok = [a for a in rows if timed(a) and a["bench"].get(skey) is not None
          and (a.get("quality") or {}).get(qkey) is not None]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    fig.subplots_adjust(right=0.66)
    labels = []
    for role, marker, colour in (("student", "o", "C0"), ("teacher", "s", "C1")):
        pts = [a for a in ok if a["role"] == role]
        if not pts:
            continue
        ax.scatter([a["bench"][skey] for a in pts], [a["quality"][qkey] for a in pts],
                   marker=marker, color=colour, label=f"{role} files", s=36, zorder=3)
        labels += [(a["bench"][skey], a["quality"][qkey],
                    f"{'★ ' if row_id(a) in front else ''}{row_id(a)}", colour) for a in pts]
    fr = sorted((a for a in ok if row_id(a) in front), key=lambda a: a["bench"][skey])
    if fr:
        ax.plot([a["bench"][skey] for a in fr], [a["quality"][qkey] for a in fr], "k--",
                lw=1, zorder=2, label="Pareto frontier (★)")
    ax.set_xlabel(f"{sunit}, measured on {measured_on}")
    ax.set_ylabel(f"{qlabel} ({'higher' if higher else 'lower'} is better)")
    ax.set_title("Quality against speed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _labelled(ax, labels)
    return fig


def predicted_plot(rows: list[dict], kind: str):
    """Predicted against measured, like with like: this machine's predictions (the local
    profile, calibrated when a calibration exists) against this machine's measurements."""
    plt = _plt()
    key, pkey = ("batch_ms", "encoder_batch_ms") if kind == "encoder" else \
        ("decode_tokens_per_s",) * 2
    pairs = [(a["predicted"]["this_machine"][pkey], a["bench"][key], a) for a in rows
             if timed(a) and ((a.get("predicted") or {}).get("this_machine") or {}).get(pkey)
             and a["bench"].get(key) is not None]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    fig.subplots_adjust(right=0.66)
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    for role, colour in (("student", "C0"), ("teacher", "C1")):
        sel = [p for p in pairs if p[2]["role"] == role]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=colour, s=30,
                       label=f"{role} files", zorder=3)
    lo, hi = min(xs + ys) * 0.8, max(xs + ys) * 1.25
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = measurement")
    # the band the field states accuracy in: measurement within ±10% of the prediction
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.5",
                    alpha=0.15, lw=0, label="within ±10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    unit = "ms per batch" if kind == "encoder" else "decode tokens/s"
    this = pairs[0][2]["predicted"]["this_machine"]
    ax.set_xlabel(f"predicted {unit} for this machine ({this.get('label', 'predicted')})")
    ax.set_ylabel(f"measured {unit}, this machine")
    ax.set_title("Predicted against measured, same machine", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    _labelled(ax, [(x, y, row_id(a), "C0" if a["role"] == "student" else "C1")
                   for x, y, a in pairs])
    return fig


def training_plot(curve: list[dict], teacher_val: dict):
    """Training loss per step, and each validation figure at its steps against the
    teacher's own (a horizontal line); None without a curve."""
    plt = _plt()
    steps = [r["step"] for r in curve if r.get("loss") is not None]
    if len(steps) < 2:
        return None
    vals = sorted({k for r in curve for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 1 + bool(vals), figsize=(9.6, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [r["loss"] for r in curve if r.get("loss") is not None], lw=0.8,
            label="training loss")
    if "val_loss" in vals:
        pts = [(r["step"], r["val_loss"]) for r in curve if "val_loss" in r]
        ax.plot(*zip(*pts), "o-", color="C2", label="validation loss")
        if teacher_val.get("loss") is not None:
            ax.axhline(teacher_val["loss"], color="C1", ls="--", lw=1,
                       label="teacher's validation loss")
    starts = [r["step"] for a, r in zip([None] + curve, curve)
              if a is not None and r.get("stage") != a.get("stage")]
    for i, x in enumerate(starts):  # progressive stages
        for a in fig.axes:
            a.axvline(x - 0.5, color="grey", ls=":", lw=1,
                      label="next stage" if i == 0 and a is ax else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if vals:
        ax2 = axes[0][1]
        shown = [k for k in vals if k != "val_loss" and k != "val_ppl"] or ["val_loss"]
        for i, k in enumerate(shown):
            pts = [(r["step"], r[k]) for r in curve if k in r]
            ax2.plot(*zip(*pts), "o-", color=f"C{i + 3}", label=k[4:].replace("_", " "))
        if "val_cosine" in shown:
            ax2.axhline(1.0, color="C1", ls="--", lw=1, label="teacher (cosine 1 to itself)")
        if "val_kl" in shown:
            ax2.axhline(0.0, color="C1", ls="--", lw=1, label="teacher (KL 0 to itself)")
        ax2.set_xlabel("step")
        ax2.set_title("Validation, held out, against the teacher", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def compare_plot(runs: list[dict], kind: str):
    """Quality against speed across runs: each run's student files as one series, its
    recommended file circled; None when nothing was timed."""
    plt = _plt()
    skey, sunit = SPEED[kind]
    qkey, qlabel, higher = QUALITY[kind]
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    fig.subplots_adjust(right=0.66)
    labels, any_point = [], False
    for i, run in enumerate(runs):
        pts = [a for a in run["rows"] if a["role"] == "student" and timed(a)
               and a["bench"].get(skey) is not None
               and (a.get("quality") or {}).get(qkey) is not None]
        if not pts:
            continue
        any_point = True
        colour = f"C{i % 10}"
        ax.scatter([a["bench"][skey] for a in pts], [a["quality"][qkey] for a in pts],
                   color=colour, s=30, label=run["name"], zorder=3)
        rec = next((a for a in pts if row_id(a) == run.get("recommended")), None)
        if rec is not None:
            ax.scatter([rec["bench"][skey]], [rec["quality"][qkey]], s=160,
                       facecolors="none", edgecolors=colour, lw=1.5, zorder=4)
            labels.append((rec["bench"][skey], rec["quality"][qkey],
                           f"{run['name']}: {rec['format']}:{rec['quant']} (recommended)",
                           colour))
    if not any_point:
        plt.close(fig)
        return None
    ax.set_xlabel(f"{sunit} (measured, each run on its own machine)")
    ax.set_ylabel(f"{qlabel} ({'higher' if higher else 'lower'} is better)")
    ax.set_title("Runs compared: student files", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _labelled(ax, labels)
    return fig
