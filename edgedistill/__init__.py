"""edgedistill: distil a teacher into a student that fits a device, export it, measure it.

The public API, in pipeline order. The first two stages are pure Python and imported here;
the others need torch and live in their modules (imported on use):

    profile  load_profile, list_profiles, local_profile
    plan     load_teacher, plan, PlanConfig, predict (a config on a target), roofline
    calibrate edgedistill.calibrate.calibrate(target, formats, budget_s)
    distill  edgedistill.distill.distill(teacher, target, data, out, kd=, train=, data_cfg=)
    export   edgedistill.export.export(student, target, ExportConfig(...))  (+ verification)
    bench    edgedistill.bench.bench(artifacts, teacher_dir, target, BenchConfig(...))
    report   edgedistill.pipeline.report(run_dir)
    all      edgedistill.pipeline.run(teacher, target, data, out)
"""
from .errors import EdgeDistillError, MachineError, PlanError, ProfileError, TeacherError
from .profiles import DeviceProfile, list_profiles, load_profile, profile_names
from .machine import local_profile, machine_info
from .arch import ModelShape, shape_from_config
from .teacher import Teacher, load_teacher
from .costmodel import Prediction, predict as roofline
from .predictor import predict_config as predict, load_calibration
from .plan import Plan, PlanConfig, plan

__version__ = "0.1.0"

__all__ = [
    "EdgeDistillError", "MachineError", "PlanError", "ProfileError", "TeacherError",
    "DeviceProfile", "list_profiles", "load_profile", "profile_names",
    "local_profile", "machine_info",
    "ModelShape", "shape_from_config", "Teacher", "load_teacher",
    "Prediction", "predict", "roofline", "load_calibration", "Plan", "PlanConfig", "plan",
]
