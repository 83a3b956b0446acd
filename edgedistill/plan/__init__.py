"""Plan: pick the student that fits the device, from predictions.

- :mod:`.costmodel`: the roofline cost model (bytes, FLOPs, overheads) of a shape on a profile;
- :mod:`.predictor`: that model calibrated by measurement on this machine (``calibrate``);
- :mod:`.measured`: speeds timed by ``plan --verify`` folded into the predictions;
- :mod:`.explain`: a plan in sentences, and its candidate table;
- :mod:`.planner`: candidate students of the teacher's family, ranked and explained;
- :mod:`.progressive`: the chain of students of a progressive distillation.

Pure Python: planning needs no torch and no weights.
"""
from edgedistill.plan.explain import candidate_table
from edgedistill.plan.planner import (Candidate, DEFAULT_SPEEDUP, Plan, PlanConfig,
                                      deployment, enumerate_candidates,
                                      failures, plan, requirements)
from edgedistill.plan.measured import measurement, shape_key, with_measurements
from edgedistill.plan.progressive import MAX_STAGE_DROP, progressive_chain

__all__ = ["DEFAULT_SPEEDUP", "Candidate", "Plan", "PlanConfig", "candidate_table", "deployment",
           "enumerate_candidates", "failures", "plan", "requirements", "MAX_STAGE_DROP", "progressive_chain",
           "measurement", "shape_key", "with_measurements"]
