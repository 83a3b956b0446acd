"""edgedistill: distil a teacher into a student that fits a device, export it, measure it.

The public API, in pipeline order. The first two stages are pure Python and imported here;
the others need torch and live in their modules (imported on use):

    profile  load_profile, list_profiles, local_profile
    plan     load_teacher, plan, PlanConfig, predict (a config on a target), roofline
    calibrate edgedistill.calibrate.calibrate(CalibrateConfig(target, formats, budget_s))
    distill  edgedistill.distill.distill(teacher, target, data, out, DistillConfig(...))
    export   edgedistill.export.export(student, target, ExportConfig(...))  (+ verification)
    bench    edgedistill.bench.bench(artifacts, teacher_dir, target, BenchConfig(...))
    report   edgedistill.pipeline.report(run_dir)
    all      edgedistill.pipeline.run(teacher, target, data, out, RunConfig(...))
"""
from edgedistill.arch import ModelShape, shape_from_config
from edgedistill.errors import EdgeDistillError, MachineError, PlanError, ProfileError, TeacherError
from edgedistill.machine import machine_info
from edgedistill.plan import Plan, PlanConfig, plan
from edgedistill.plan.costmodel import Prediction, predict as roofline
from edgedistill.plan.predictor import load_calibration, predict_config as predict
from edgedistill.profiles import (DeviceProfile, list_profiles, load_profile, local_profile,
                                  profile_names)
from edgedistill.teacher import Teacher, load_teacher
from edgedistill.version import __version__


__all__ = ["__version__",
           "EdgeDistillError", "MachineError", "PlanError", "ProfileError", "TeacherError",
           "DeviceProfile", "list_profiles", "load_profile", "profile_names",
           "local_profile", "machine_info",
           "ModelShape", "shape_from_config", "Teacher", "load_teacher",
           "Prediction", "predict", "roofline", "load_calibration", "Plan", "PlanConfig", "plan",
           ]
