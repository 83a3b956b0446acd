"""Plan a student that fits a device: enumerate shapes, predict, choose, explain.

Pure Python (no torch): it needs only the teacher's config.json and a device profile.

The student keeps the teacher's family, vocabulary and head_dim (so it can be initialised from
the teacher by layer selection and head/channel pruning). Widths are multiples of the profile's
``dim_multiple`` (256 suits k-quants, 64 NPUs), or of 64 where the teacher is too narrow for
that, plus the teacher's own width (layer-pruned students). Among the candidates that fit the
memory budget and meet the latency targets (and the requested speedup over the teacher), the
most capable one wins: the most non-embedding parameters, then the better row alignment, then
the deeper one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from edgedistill.arch import ModelShape, config_for_shape
from edgedistill.errors import PlanError
from edgedistill.formats import RUNTIMES
from edgedistill.plan.costmodel import Prediction, row_alignment
from edgedistill.plan.explain import explain
from edgedistill.plan.measured import with_measurements
from edgedistill.plan.predictor import predictor_for
from edgedistill.profiles import DeviceProfile, resolve_profile
from edgedistill.teacher import Teacher, load_teacher

DEFAULT_SPEEDUP = 2.0
"""Decode (encoders: throughput) speedup over the teacher that a plan asks for by default."""
_FFN_RATIOS = (1.0, 0.75, 0.5)
"""FFN sizes tried, as fractions of the teacher's FFN/hidden ratio."""


@dataclass(frozen=True)
class PlanConfig:
    speedup: float | None = None
    """Required speedup over the teacher on the target (decode tok/s; encoders: batch time).
    None: ask for DEFAULT_SPEEDUP, and fall back to the targets alone (with a note) when fixed
    overheads put that out of reach. A value given by the user is a hard requirement."""
    max_params: int | None = None
    """Cap on the student's total parameters."""
    deploy: str | None = None
    """``format:quant`` to size for; default: the profile's preferred runtime and quant."""
    top: int = 8
    """Rows in the explanation table."""
    calibration: str | None = None
    """A calibration file of this machine; default: the cache entry, if any (plan/predictor.py)."""
    measured: tuple = ()
    """Speeds timed on this machine (``plan --verify``; records of plan/measured.py's
    ``measurement``): a measured shape is judged on them, every other shape's prediction is
    corrected by the measured shapes around it. ``--target local`` only."""

    def __post_init__(self):
        if self.speedup is not None and not self.speedup >= 1:
            raise PlanError(f"--speedup {self.speedup:g} asks for a student slower than the "
                            "teacher.", "use --speedup 1 or more (the default asks for "
                            f"{DEFAULT_SPEEDUP:g}x), or deploy the teacher itself")
        if self.max_params is not None and self.max_params < 1:
            raise PlanError(f"--max-params {self.max_params} leaves no room for a student.",
                            "use a positive count, e.g. --max-params 50M")
        if self.top < 1:
            raise PlanError(f"--top {self.top}: the table needs at least one row.",
                            "use --top 8")


@dataclass
class Candidate:
    shape: ModelShape
    prediction: Prediction
    failures: list[str]
    alignment: int

    @property
    def fits(self) -> bool:
        return not self.failures

    def rank_key(self) -> tuple:
        return (self.shape.non_embedding_params(), self.alignment, self.shape.num_layers)

    def to_dict(self) -> dict:
        s = self.shape
        return {
            "layers": s.num_layers, "hidden_size": s.hidden_size,
            "intermediate_size": s.intermediate_size, "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim,
            "params": s.total_params(), "non_embedding_params": s.non_embedding_params(),
            "row_alignment": self.alignment, "fits": self.fits, "failures": self.failures,
            "predicted": self.prediction.to_dict(),
        }


@dataclass
class Plan:
    teacher: Teacher
    profile: DeviceProfile
    runtime: str
    format: str
    quant: str
    requirements: dict
    teacher_prediction: Prediction
    teacher_failures: list[str]
    student: Candidate
    student_config: dict
    student_by_quant: dict[str, Prediction]
    table: list[Candidate]
    n_candidates: int
    n_feasible: int
    explanation: list[str] = field(default_factory=list)

    @property
    def teacher_meets_targets(self) -> bool:
        return not self.teacher_failures

    def to_dict(self) -> dict:
        t, s, p = self.teacher, self.student, self.profile
        return {
            "target": {"name": p.name, "kind": p.kind, "device": p.device,
                       "source": p.source, "measured": p.measured,
                       "formats": p.formats,
                       "quality_targets": dataclasses.asdict(p.quality_targets)},
            "deployment": {"runtime": self.runtime, "format": self.format, "quant": self.quant},
            "requirements": self.requirements,
            "teacher": {
                "name": t.name, "path": str(t.path) if t.path else None,
                "family": t.shape.family, "shape": t.shape.to_dict(),
                "params": t.shape.total_params(), "config": t.config,
                "predicted": self.teacher_prediction.to_dict(),
                "meets_targets": self.teacher_meets_targets,
                "failures": self.teacher_failures,
            },
            "student": {
                "family": s.shape.family, "shape": s.shape.to_dict(),
                "params": s.shape.total_params(),
                "params_ratio": s.shape.total_params() / t.shape.total_params(),
                "row_alignment": s.alignment,
                "config": self.student_config,
                "predicted": s.prediction.to_dict(),
                "predicted_by_quant": {q: v.to_dict() for q, v in self.student_by_quant.items()},
            },
            "candidates": [c.to_dict() for c in self.table],
            "counts": {"candidates": self.n_candidates, "feasible": self.n_feasible},
            "explanation": self.explanation,
        }


# -- candidates ------------------------------------------------------------------------------

def _widths(t: ModelShape, preferred: int) -> list[int]:
    """Hidden sizes to try.

    Multiples of lcm(preferred, head_dim * group) up to the teacher's width (whole heads, whole
    KV groups); where that leaves fewer than three, multiples of lcm(preferred, head_dim), then
    of lcm(64, head_dim). The teacher's own width is always tried (layer-pruned students)."""
    if t.is_encoder:
        # A sentence embedder's student keeps the teacher's width: its embeddings stay in the
        # teacher's space, so an index built with the teacher still works (and cosine to the
        # teacher is measurable). It shrinks in depth and FFN size.
        return [t.hidden_size]
    group = max(1, t.num_heads // t.num_kv_heads)
    ws: list[int] = []
    for m, g in ((preferred, group), (preferred, 1), (64, group), (64, 1)):
        step = math.lcm(m, t.head_dim * g)
        ws = list(range(step, t.hidden_size + 1, step))
        if len(ws) >= 3:
            break
    return sorted(set(ws) | {t.hidden_size})


def _ffn_sizes(t: ModelShape, hidden: int, preferred: int) -> list[int]:
    ratio = t.intermediate_size / t.hidden_size
    if hidden == t.hidden_size:
        out = {t.intermediate_size}
    else:
        out = set()
    for r in _FFN_RATIOS:
        want = ratio * r * hidden
        for m in (preferred, 64):
            f = int(want // m) * m
            if f >= m:
                out.add(min(f, t.intermediate_size))
                break
    return sorted(out)


def _kv_heads(t: ModelShape, heads: int) -> int:
    """Keep the teacher's grouping (heads per KV head) where it divides; else the nearest
    divisor of ``heads`` that groups at least as much."""
    group = max(1, t.num_heads // t.num_kv_heads)
    for kv in range(max(1, heads // group), 0, -1):
        if heads % kv == 0:
            return kv
    return 1


def enumerate_candidates(t: ModelShape, profile: DeviceProfile) -> list[ModelShape]:
    """Every student shape to consider: strictly smaller than the teacher, same family,
    vocabulary and head_dim."""
    pref = profile.constraints.dim_multiple
    out = []
    for h in _widths(t, pref):
        heads = h // t.head_dim
        kv = heads if t.is_encoder else _kv_heads(t, heads)
        for f in _ffn_sizes(t, h, pref):
            for n in range(1, t.num_layers + 1):
                s = dataclasses.replace(t, hidden_size=h, num_heads=heads, num_kv_heads=kv,
                                        intermediate_size=f, num_layers=n)
                if s.total_params() < t.total_params():
                    out.append(s)
    return out


# -- requirements ----------------------------------------------------------------------------

def requirements(t_pred: Prediction, profile: DeviceProfile, encoder: bool,
                  speedup: float) -> dict:
    lt = profile.latency_targets
    req = {"memory_gb": profile.memory.budget_gb, "speedup": speedup}
    if encoder:
        req["encoder_batch_ms"] = min(lt.encoder_batch_ms, t_pred.encoder_batch_ms / speedup)
        req["encoder_seq_len"], req["encoder_batch"] = lt.encoder_seq_len, lt.encoder_batch
    else:
        req["decode_tokens_per_s"] = max(lt.decode_tokens_per_s,
                                         t_pred.decode_tokens_per_s * speedup)
        req["prefill_ms"], req["prompt_tokens"] = lt.prefill_ms, lt.prompt_tokens
    return req


def failures(p: Prediction, req: dict) -> list[str]:
    """Which requirements ``p`` misses, each with the numbers involved."""
    out = []
    if p.memory_gb > req["memory_gb"]:
        out.append(f"memory {p.memory_gb:.2f} GB > budget {req['memory_gb']:.2f} GB "
                   f"({p.memory_gb / req['memory_gb']:.2f}x)")
    if "decode_tokens_per_s" in req and p.decode_tokens_per_s < req["decode_tokens_per_s"]:
        out.append(f"decode {p.decode_tokens_per_s:.1f} tok/s < required "
                   f"{req['decode_tokens_per_s']:.1f} "
                   f"(needs {req['decode_tokens_per_s'] / p.decode_tokens_per_s:.2f}x faster)")
    if "prefill_ms" in req and p.prefill_ms > req["prefill_ms"]:
        out.append(f"prefill {p.prefill_ms:.0f} ms > target {req['prefill_ms']:.0f} ms for "
                   f"{req['prompt_tokens']} tokens ({p.prefill_ms / req['prefill_ms']:.2f}x)")
    if "encoder_batch_ms" in req and p.encoder_batch_ms > req["encoder_batch_ms"]:
        out.append(f"batch {p.encoder_batch_ms:.1f} ms > required "
                   f"{req['encoder_batch_ms']:.1f} ms "
                   f"({p.encoder_batch_ms / req['encoder_batch_ms']:.2f}x)")
    return out


def _targets_only(req: dict, profile: DeviceProfile) -> dict:
    """The profile's own targets (no speedup): what 'the teacher meets the targets' means."""
    lt = profile.latency_targets
    out = dict(req)
    if "decode_tokens_per_s" in out:
        out["decode_tokens_per_s"] = lt.decode_tokens_per_s
    if "encoder_batch_ms" in out:
        out["encoder_batch_ms"] = lt.encoder_batch_ms
    return out


def _speedup_only(req: dict, t_pred: Prediction, speedup: float) -> dict:
    """``req`` without the profile's product targets: the speedup over the teacher and the
    memory budget alone."""
    out = dict(req)
    if "decode_tokens_per_s" in out:
        out["decode_tokens_per_s"] = t_pred.decode_tokens_per_s * speedup
        out["prefill_ms"] = max(out["prefill_ms"], t_pred.prefill_ms / speedup)
    if "encoder_batch_ms" in out:
        out["encoder_batch_ms"] = t_pred.encoder_batch_ms / speedup
    return out


def deployment(profile: DeviceProfile, encoder: bool, deploy: str | None) -> tuple[str, str, str]:
    """(runtime, format, quant) that the plan sizes for."""
    if deploy:
        fmt, _, quant = deploy.partition(":")
        allowed = [f"{f}:{q}" for f, qs in profile.formats.items() for q in qs]
        if fmt not in profile.formats or quant not in profile.formats[fmt]:
            raise PlanError(f"--deploy {deploy!r} is not allowed by profile {profile.name!r}.",
                            f"use one of: {', '.join(allowed)}")
        runtime = next((r for r in profile.runtimes if RUNTIMES[r].format == fmt), fmt)
        return runtime, fmt, quant
    if encoder:
        # Sentence embedders are deployed through onnxruntime where the device allows it.
        for r in profile.runtimes:
            if RUNTIMES[r].format == "onnx" and "onnx" in profile.formats_for(True):
                return r, "onnx", profile.formats_for(True)["onnx"][0]
    return profile.primary_runtime, profile.primary_format, profile.primary_quant


def plan(teacher: str | Teacher | None = None, target: str | DeviceProfile = "laptop",
         config: PlanConfig = PlanConfig()) -> Plan:
    """Choose the most capable student of ``teacher`` that fits ``target``.

    Returns a :class:`Plan`; raises PlanError (with the failed constraint and by how much)
    when no candidate fits, TeacherError / ProfileError for bad inputs.
    """
    t = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
    prof = resolve_profile(target)
    if config.speedup is not None and config.speedup <= 0:
        raise PlanError(f"--speedup must be positive, got {config.speedup}.",
                        "pass e.g. --speedup 2 (or 1 to ask for no speedup)")
    runtime, fmt, quant = deployment(prof, t.shape.is_encoder, config.deploy)
    predict_on = predictor_for(prof, config.calibration)
    if config.measured:
        if prof.name != "local":
            raise PlanError(f"speeds measured on this machine say nothing about "
                            f"{prof.name}'s.", "plan with --target local, or drop the "
                            "measured speeds")
        predict_on = with_measurements(predict_on, config.measured, fmt, quant)
    t_pred = predict_on(t.shape, fmt, quant)
    speedup = config.speedup or DEFAULT_SPEEDUP
    req = requirements(t_pred, prof, t.shape.is_encoder, speedup)
    t_fail = failures(t_pred, _targets_only(req, prof))

    shapes = enumerate_candidates(t.shape, prof)
    if config.max_params is not None:
        smallest = min((s.total_params() for s in shapes), default=0)
        shapes = [s for s in shapes if s.total_params() <= config.max_params]
        if not shapes:
            raise PlanError(f"--max-params {config.max_params:,} is below the smallest "
                            f"candidate student ({smallest:,} parameters).",
                            f"raise --max-params to at least {smallest:,}")
    if not shapes:
        raise PlanError(f"teacher {t.name} ({t.shape.describe()}) is too small to shrink.",
                        "deploy the teacher itself, or pick a larger teacher")
    need = prof.constraints.dim_multiple if prof.constraints.static_shapes else 1
    preds = [(s, predict_on(s, fmt, quant), row_alignment(s)) for s in shapes]

    def judge(req: dict) -> list[Candidate]:
        out = []
        for s, p, align in preds:
            fails = failures(p, req)
            if align < need:  # NPU compilers want whole vector tiles
                fails.append(f"rows are multiples of {align}, the {prof.kind} needs {need}")
            out.append(Candidate(s, p, fails, align))
        return sorted(out, key=Candidate.rank_key, reverse=True)

    cands = judge(req)
    feasible = [c for c in cands if c.fits]
    note = None
    if not feasible and config.speedup is None and not t_fail:
        # The default speedup is a wish, not a target: fixed per-call costs can put it out of
        # reach of small teachers. Plan for the profile's targets alone, and say so.
        fastest = _speedup_of(min(cands, key=lambda c: _time(c.prediction)).prediction, t_pred)
        note = (f"A {speedup:g}x speedup over the teacher is out of reach on {prof.name} (fixed "
                f"per-call costs dominate; the fastest candidate is {fastest:.2f}x faster), so "
                "the student is planned for the profile's targets alone; pass --speedup to "
                "insist.")
        req = _targets_only(req, prof) | {"speedup": 1.0}
        cands = judge(req)
        feasible = [c for c in cands if c.fits]
    if not feasible and t_fail:
        # The teacher misses the profile's product targets, and no student of its width
        # reaches them either (an encoder keeps the teacher's width: its embeddings stay in
        # the teacher's space). Plan for the speedup over the teacher alone, and say so.
        relaxed = _speedup_only(req, t_pred, speedup)
        again = judge(relaxed)
        if any(c.fits for c in again):
            fastest = min(cands, key=lambda c: _time(c.prediction))
            note = (f"No student of {t.name}'s kind reaches {prof.name}'s own targets "
                    f"(fastest candidate {fastest.shape.describe()}: "
                    f"{'; '.join(fastest.failures)}), so the student is planned for a "
                    f"{speedup:g}x speedup over the teacher alone; pass a profile YAML with "
                    "targets of your own to change that.")
            req, cands = relaxed, again
            feasible = [c for c in cands if c.fits]
    if not feasible:
        raise _nothing_fits(t, prof, fmt, quant, cands)
    best = feasible[0]
    # Table: the winner, the more capable candidates that failed (why not bigger), then the
    # next feasible ones (what else would fit).
    bigger = [c for c in cands if c.rank_key() > best.rank_key()][-(config.top // 2):]
    table = bigger + feasible[: config.top - len(bigger)]
    by_quant = {q: predict_on(best.shape, fmt, q)
                for q in prof.formats_for(t.shape.is_encoder).get(fmt) or prof.formats[fmt]}
    result = Plan(t, prof, runtime, fmt, quant, req, t_pred, t_fail, best,
                  config_for_shape(t.config, best.shape), by_quant, table, len(cands),
                  len(feasible))
    result.explanation = explain(result, bigger)
    if note:
        result.explanation.insert(1, note)
    return result


def _time(p: Prediction) -> float:
    """Seconds per unit of work: per decoded token, or per encoder batch."""
    return p.encoder_batch_ms / 1e3 if p.encoder_batch_ms is not None else 1 / p.decode_tokens_per_s


def _speedup_of(p: Prediction, ref: Prediction) -> float:
    return _time(ref) / _time(p)


def _nothing_fits(t: Teacher, prof: DeviceProfile, fmt: str, quant: str,
                  cands: list[Candidate]) -> PlanError:
    smallest = min(cands, key=lambda c: c.shape.total_params())
    return PlanError(
        f"no student of {t.name} fits {prof.name} at {fmt}:{quant}: even the smallest "
        f"candidate ({smallest.shape.describe()}, {smallest.shape.total_params():,} params) "
        f"fails: {'; '.join(smallest.failures)}.",
        "lower --speedup, pick a target with more memory or speed, or pass a profile YAML "
        "with a larger budget")
