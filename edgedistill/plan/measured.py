"""Speeds measured on this machine, folded into a plan's predictions (``plan --verify``).

``plan --verify`` times the candidates around the planner's choice. When the choice misses
the requirements measured (or a more capable candidate meets them), it plans again with what
it measured: a measured shape is judged on its measured figures, and every other shape's
predicted figure is scaled by the measured/predicted ratio of the measured shapes around it.
Pure Python: the timing lives in ``calibrate/verify.py``; this module only does arithmetic
on the records it returns, so ``distill`` can plan the same student from them."""
from __future__ import annotations

import dataclasses
import json
import math

from edgedistill.arch import ModelShape
from edgedistill.errors import PlanError
from edgedistill.plan.costmodel import Prediction

FIGURES = ("decode_tokens_per_s", "prefill_ms", "encoder_batch_ms", "generate_tokens_per_s")
"""The figures a measurement may carry (Prediction's fields, this machine's units)."""
_SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelShape))
MEASURED, CORRECTED = "measured", "corrected by measurement"
"""Labels of a timed shape's figures, and the suffix of a prediction corrected by them."""


def from_measurement(label: str) -> bool:
    """Whether a Prediction's label says its figures came from ``with_measurements``."""
    return label == MEASURED or label.endswith(CORRECTED)


def shape_key(shape: ModelShape) -> str:
    """One string per shape (every field), to find a measured shape again."""
    return json.dumps(dataclasses.asdict(shape), sort_keys=True)


def measurement(shape: ModelShape, fmt: str, quant: str, figures: dict) -> dict:
    """The record of one shape timed in ``fmt:quant`` on this machine: what
    ``PlanConfig.measured`` holds (plain JSON, so that plan_verify.json can keep it)."""
    return {"shape": dataclasses.asdict(shape), "deployment": f"{fmt}:{quant}",
            "figures": {k: float(v) for k, v in figures.items() if k in FIGURES and v}}


def _shape(record: dict) -> ModelShape:
    try:
        return ModelShape(**{k: record["shape"][k] for k in _SHAPE_FIELDS})
    except (KeyError, TypeError) as e:
        raise PlanError(f"a measured speed in the plan's configuration has no usable shape "
                        f"({e}).", "re-run plan --verify to measure it again") from None


def _interp(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through ``points`` (sorted by x), flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def _with_figures(p: Prediction, figures: dict, label: str) -> Prediction:
    """``p`` with ``figures`` replaced, the figures derived from them kept consistent."""
    out = dict(figures)
    if "prefill_ms" in figures and p.prefill_ms and p.prefill_tokens_per_s:
        out["prefill_tokens_per_s"] = p.prefill_tokens_per_s * p.prefill_ms / figures["prefill_ms"]
    if "encoder_batch_ms" in figures and p.encoder_batch_ms and p.sentences_per_s:
        out["sentences_per_s"] = p.sentences_per_s * p.encoder_batch_ms / figures["encoder_batch_ms"]
    return dataclasses.replace(p, **out, label=label)


def with_measurements(predict_on, measured, fmt: str, quant: str):
    """``predict_on`` (shape, fmt, quant -> Prediction) corrected by ``measured``, the
    records of :func:`measurement` for the deployment ``fmt:quant`` (others are ignored).
    A measured shape gets its measured figures (label ``measured``). Any other shape gets
    each predicted figure times the measured/predicted ratio of the measured shapes,
    interpolated in the log of the predicted figure between the two around it and flat
    beyond them (label ``... corrected by measurement``): a shape between two timed ones
    inherits their error, not the predictor's."""
    mine = [m for m in measured or () if m.get("deployment") == f"{fmt}:{quant}"]
    if not mine:
        return predict_on
    exact: dict[str, dict] = {}
    ratios: dict[str, list[tuple[float, float]]] = {}
    for m in mine:
        shape = _shape(m)
        exact[shape_key(shape)] = m["figures"]
        p = predict_on(shape, fmt, quant)
        for k, v in m["figures"].items():
            pred = getattr(p, k, None)
            if pred and v > 0:
                ratios.setdefault(k, []).append((math.log(pred), math.log(v / pred)))
    for pts in ratios.values():
        pts.sort()

    def predict(shape: ModelShape, f: str, q: str) -> Prediction:
        p = predict_on(shape, f, q)
        if (f, q) != (fmt, quant):
            return p
        figures = exact.get(shape_key(shape))
        if figures is not None:
            return dataclasses.replace(
                _with_figures(p, {k: v for k, v in figures.items() if getattr(p, k, None)},
                              MEASURED), extrapolated=False)
        fixed = {k: getattr(p, k) * math.exp(_interp(pts, math.log(getattr(p, k))))
                 for k, pts in ratios.items() if getattr(p, k, None)}
        return _with_figures(p, fixed, f"{p.label}, {CORRECTED}")
    return predict
