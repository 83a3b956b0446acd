"""Fitting the latency predictor to measurements: per format, quantization and workload, a
non-negative physical sum and a log-linear model (leave-one-out picks one), decode fits at the
cache size that cross-validates best; held-out errors stated as MAPE, share within ±10% and
Spearman's rank correlation. The terms are plan/predictor.py's; calibrate/ measures."""
from __future__ import annotations

import math
import statistics

from edgedistill.arch import shape_from_config
from edgedistill.plan.predictor import FEATURES, evaluate, features, fit_key

MIN_TRAIN = 7
"""Training shapes a format:quant:workload needs before it is fitted."""


def _nnls(rows: list[list[float]], y: list[float]) -> list[float]:
    """Non-negative least squares of relative error (rows and targets divided by y), by an
    active set: fit, drop the most negative coefficient, refit."""
    import numpy as np

    A = np.array(rows, dtype=float) / np.array(y)[:, None]
    b = np.ones(len(y))
    active = list(range(A.shape[1]))
    while active:
        coef, *_ = np.linalg.lstsq(A[:, active], b, rcond=None)
        if (coef >= 0).all():
            out = [0.0] * A.shape[1]
            for i, c in zip(active, coef):
                out[i] = float(c)
            return out
        active.pop(int(np.argmin(coef)))
    return [0.0] * A.shape[1]


def _loglinear(rows: list[list[float]], y: list[float]) -> list[float]:
    import numpy as np

    X = np.array([[1.0] + [math.log(max(v, 1e-6)) for v in r[1:]] for r in rows])
    w, *_ = np.linalg.lstsq(X, np.log(np.array(y)), rcond=1e-6)
    return [float(v) for v in w]


def _errors(fit: dict, rows, y, model=None) -> list[float]:
    return [evaluate(fit, x, model) / t - 1 for x, t in zip(rows, y)]


def fit(rows: list[list[float]], y: list[float]) -> dict:
    """Both models on (rows, y); the one with the lower leave-one-out MAPE is chosen."""
    full = {"physical": _nnls(rows, y), "loglinear": _loglinear(rows, y)}
    loo = {"physical": [], "loglinear": []}
    for i in range(len(y)):
        r, t = rows[:i] + rows[i + 1:], y[:i] + y[i + 1:]
        part = {"physical": _nnls(r, t), "loglinear": _loglinear(r, t)}
        for m in loo:
            loo[m].append(abs(evaluate(part, rows[i], m) / y[i] - 1))
    cv = {m: statistics.mean(v) for m, v in loo.items()}
    full["chosen"] = min(cv, key=cv.get)
    full["cv_mape"] = cv
    full["train_mape"] = statistics.mean(abs(e) for e in _errors(full, rows, y))
    full["n_train"] = len(y)
    return full


def cache_sizes(llc: int) -> list[int]:
    """The cache sizes a decode fit tries (bytes): 4 MiB up to the size the CPU reports."""
    return sorted({m << 20 for m in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
                   if m << 20 < llc} | {llc})


CACHE_DECAYS = (1.0, 2.0, 4.0, 6.0, 8.0)
"""How fast the cache's share of a decode step falls past the cache (plan.predictor.
cached_share): the exponents a decode fit tries."""


def _fit_decode(train: list[dict], llc: int) -> dict:
    """A decode fit at the cache size and decay that cross-validate best: the split of a
    step's bytes between cache and DRAM is at the cache a process really gets, which on a
    shared VM is a fraction of what the CPU reports (measured here: 48 MiB of a reported
    480 MiB halved the held-out error of F16 and Q4_K_M decode), and the decay says how fast
    the cache stops helping past it. On ties (within 0.1 point of MAPE) the smaller cache
    and decay."""
    y = [p["seconds"] for p in train]
    best = None
    for size in cache_sizes(llc):
        for decay in CACHE_DECAYS:
            f = fit([_x(p, size, decay) for p in train], y) | {"llc_bytes": size,
                                                               "cache_decay": decay}
            if best is None or (min(f["cv_mape"].values())
                                < min(best["cv_mape"].values()) - 1e-3):
                best = f
    return best


def fit_all(points: list[dict], llc: int) -> dict:
    """One fit per format:quant:workload from the training points; held-out errors added.
    Decode fits choose their effective cache size (``llc_bytes``, at most ``llc``)."""
    groups: dict = {}
    for p in points:
        groups.setdefault(fit_key(p["format"], p["quant"], p["workload"]), []).append(p)
    fits = {}
    for key, pts in sorted(groups.items()):
        train = [p for p in pts if p["split"] == "train"]
        if len(train) < MIN_TRAIN:
            continue
        if pts[0]["workload"] in ("decode", "generate"):
            f = _fit_decode(train, llc)
        else:
            f = fit([_x(p, llc) for p in train], [p["seconds"] for p in train])
        f["features"] = FEATURES[pts[0]["workload"]]
        size, decay = f.get("llc_bytes", llc), f.get("cache_decay", 1.0)
        held = [p for p in pts if p["split"] == "holdout"]
        if held:
            measured = [p["seconds"] for p in held]
            errs = _errors(f, [_x(p, size, decay) for p in held], measured)
            f["holdout"] = {"n": len(held), "mape": statistics.mean(abs(e) for e in errs),
                            "worst": max(errs, key=abs),
                            "within_10pct": sum(abs(e) <= 0.1 for e in errs) / len(errs),
                            "spearman": spearman([m * (1 + e) for m, e in zip(measured, errs)],
                                                 measured),
                            "speed_span": max(measured) / min(measured),
                            "errors": [round(e, 4) for e in errs]}
            rep = [p["repeat_seconds"] / p["seconds"] - 1 for p in held if "repeat_seconds" in p]
            if rep:
                f["repeatability"] = {"n": len(rep), "mape": statistics.mean(abs(e) for e in rep),
                                      "worst": max(rep, key=abs)}
        fits[key] = f
    return fits


def _ranks(v: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(v)), key=v.__getitem__)
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (None under 3 points, or when
    either is constant): how well predictions order what was measured."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else None


def _x(p: dict, llc: int, decay: float = 1.0) -> list[float]:
    return features(p["workload"], shape_from_config(p["config"]), p["format"], p["quant"],
                    llc_bytes=llc, context=p.get("prompt", 0), prompt=p.get("prompt", 0),
                    seq=p.get("seq", 0), batch=p.get("batch", 0), cache_decay=decay)


def summary_rows(cal: dict) -> list[list]:
    rows = []
    for key, f in cal["fits"].items():
        h = f.get("holdout", {})
        r = f.get("repeatability", {})
        rho = h.get("spearman")
        cache = (f"{f['llc_bytes'] / 2**20:.0f} MiB k{f.get('cache_decay', 1.0):g}"
                 if f.get("llc_bytes") else "-")
        rows.append([key, f["n_train"], h.get("n", 0), f["chosen"], cache,
                     f"{f['cv_mape']['physical']:.1%}", f"{f['cv_mape']['loglinear']:.1%}",
                     f"{h['mape']:.1%}" if h else "-", f"{h['worst']:+.1%}" if h else "-",
                     f"{h['within_10pct']:.0%}" if "within_10pct" in h else "-",
                     f"{rho:.3f}" if rho is not None else "-",
                     f"{r['mape']:.1%}" if r else "-"])
    return rows


SUMMARY_HEAD = ["runtime format:quant:workload", "train", "held out", "model", "cache",
                "CV physical",
                "CV log-linear", "held-out MAPE", "worst", "within ±10%", "Spearman ρ",
                "re-measured"]
