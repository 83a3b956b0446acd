"""Progressive distillation's chain of students, from the planner's own candidates. Pure
Python, like the rest of plan/."""
from __future__ import annotations

import math

from edgedistill.arch import ModelShape
from edgedistill.errors import PlanError
from edgedistill.plan.planner import enumerate_candidates
from edgedistill.profiles import DeviceProfile

MAX_STAGE_DROP = 1 / 3
"""Progressive distillation: the largest share of parameters one stage removes. NVIDIA's
Minitron guidance (Sreenivas et al. 2024, "LLM Pruning and Distillation in Practice") prunes
at most about a third per step and iterates prune -> distill beyond that. Measured here
(benchmarks/recipes.py, stage_drop): one pruning step of a 3.7M llama costs a moderate,
quickly healed loss up to about half its parameters (held-out loss 2.35 / 2.61 / 2.78 at
21% / 37% / 54% removed) and breaks it beyond (4.66 at 68%); whole chains capped at 0.2, 1/3,
1/2 and 2/3 ended at 2.546, 2.536, 2.541 and 2.584: a third was the best cap."""

_DIMS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")


def _within(small: ModelShape, big: ModelShape) -> bool:
    return all(getattr(small, d) <= getattr(big, d) for d in _DIMS)


def progressive_chain(teacher: ModelShape, student: ModelShape, profile: DeviceProfile,
                      stages: int = 0, max_drop: float = MAX_STAGE_DROP) -> list[ModelShape]:
    """The students of a progressive chain from ``teacher`` down to ``student`` (the last),
    each pruned from the one before: every intermediate shape lies between its neighbours in
    every dimension (layers, width, FFN, heads, KV heads), so it can be cut from the previous
    model. ``stages`` K: K stages at geometric steps in parameters, each the candidate
    nearest its step; 0: the fewest stages whose geometric steps drop at most ``max_drop`` of
    the parameters (the grid of shapes may make a step larger: the caller reports each
    step's drop). Pure Python."""
    t_p, s_p = teacher.total_params(), student.total_params()
    if s_p >= t_p:
        raise PlanError(f"a progressive chain needs a student smaller than the teacher "
                        f"({s_p:,} against {t_p:,} parameters).",
                        "drop --progressive / --stages, or plan a smaller student (--speedup)")
    pool = [s for s in enumerate_candidates(teacher, profile)
            if _within(student, s) and s_p < s.total_params() < t_p]
    if stages == 0:  # as many stages as keep each geometric step within max_drop
        stages = max(1, math.ceil(math.log(s_p / t_p) / math.log(1 - max_drop) - 1e-9))
    chain, cur = [], teacher
    for k in range(1, stages):
        want = math.log(t_p) + (math.log(s_p) - math.log(t_p)) * k / stages
        ok = [s for s in pool if _within(s, cur) and s.total_params() < cur.total_params()]
        if not ok:
            break
        cur = min(ok, key=lambda s: abs(math.log(s.total_params()) - want))
        chain.append(cur)
    return chain + [student]
