"""The whole chain: profile -> plan -> distill -> export -> quantize -> verify -> bench -> report.

    run(teacher, target, data, out, RunConfig(plan=, distill=, export=, bench=)) -> report paths

Each stage records the hash of its inputs and of the files it wrote in RUN_DIR/stages.json (a
runstate.Ledger); a re-run skips the stages whose inputs and outputs have not changed, and an
interrupted distillation resumes from its last checkpoint.
The teacher is exported, verified and measured too (same formats and quantizations): the
baseline that says what distillation bought beyond quantizing the teacher.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgedistill.bench import BenchConfig, artifacts_of_run, bench
from edgedistill.calibrate.verify import verify_plan
from edgedistill.convert.gguf import check_writable
from edgedistill.distill import DistillConfig, distill
from edgedistill.datastream import source_id
from edgedistill.distill.quant_aware import default_for
from edgedistill.distill.streamed import HELDOUT_TEXT
from edgedistill.distill.teachers import primary_index, teacher_list
from edgedistill.errors import EdgeDistillError, writable_dir
from edgedistill.export import ExportConfig, export, resolve_formats
from edgedistill.logs import get_logger
from edgedistill.plan import PlanConfig
from edgedistill.profiles import DeviceProfile, resolve_profile
from edgedistill.report import build_report, write_report
from edgedistill.runstate import Ledger, atomic_write, files_id, fingerprint as _hash, folder_files
from edgedistill.teacher import check_model_files, load_teacher


_logger = get_logger("pipeline")


@dataclass(frozen=True)
class RunConfig:
    """Everything the whole chain is asked to do, stage by stage. Each part owns its defaults
    and checks its values; ``edgedistill export --teacher ...`` builds exactly this from its
    flags (a flag not given leaves the default here)."""

    plan: PlanConfig = field(default_factory=PlanConfig)
    """How the student is picked (--speedup, --max-params)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """How it is trained (--steps, --loss, --temperature, ...)."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Formats, quantizations and verification (--formats, --quant, ...)."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    """How the files are measured (--new-tokens, --repeats, ...)."""
    baselines: bool = True
    """Export and measure the teacher too, the same way (--no-baselines turns it off)."""
    quant_aware: bool = True
    """Train quant-aware for the first deployed file (of ``export.quants``, when given) that
    loses measurably (4-bit weights, static 8-bit activations) and has a training grid
    (``distill.quant_aware.default_for``) unless ``distill.quant_aware`` names a file; False
    (--no-quant-aware): never."""
    compare_ptq: bool = False
    """With quant-aware distillation on: also distil the same student for the same steps
    without it, into RUN_DIR/ptq, and export and measure it beside the quant-aware one (role
    ``student-ptq``); the report sets the two side by side (--compare-ptq)."""
    verify_plan: int = 0
    """Check the planner's choice by measurement (--verify-plan K): the K candidates around
    it are timed here (``calibrate.verify.verify_plan``); written to plan_verify.json and reported.
    0: not checked."""

    def __post_init__(self):
        if self.verify_plan and self.verify_plan < 2:
            raise EdgeDistillError(f"--verify-plan {self.verify_plan}: ranking needs at least "
                                   "2 candidates.", "use e.g. --verify-plan 6, or 0 for none")
        if not self.quant_aware and self.distill.quant_aware:
            raise EdgeDistillError(f"--quant-aware {self.distill.quant_aware} and "
                                   "--no-quant-aware contradict each other.",
                                   "keep one of them")
        if not self.quant_aware and self.compare_ptq:
            raise EdgeDistillError("--compare-ptq compares quant-aware distillation with "
                                   "plain distillation, and --no-quant-aware turns the first "
                                   "off.", "keep one of them")
        if self.distill.student is not None:
            raise EdgeDistillError("the whole chain plans and builds its own student.",
                                   "drop DistillConfig.student, or run 'edgedistill distill "
                                   "--student DIR' and 'edgedistill export --student DIR'")

    def with_data(self, data) -> "RunConfig":
        """Verification, calibration and bench read the user's text too, unless told
        otherwise."""
        if not data:
            return self
        return replace(self, export=self.export if self.export.data else
                       replace(self.export, data=str(data)),
                       bench=self.bench if self.bench.data else replace(self.bench, data=str(data)))


def run(teacher=None, target: str | DeviceProfile = "laptop", data=None, out="runs/run",
        config: RunConfig = RunConfig(), *, log=_logger.info) -> dict:
    """Run every stage for ``teacher`` (or a list of teachers: distilled together, the
    largest exported and measured as the baseline) on ``target`` (a profile name, ``local``,
    a YAML path or a DeviceProfile, resolved once here and passed down); returns {json, md,
    html} report paths."""
    # records hold absolute paths: usable from any folder
    run_dir = writable_dir(Path(out).resolve())
    streamed = bool(data) and config.distill.data.stream
    # a streamed corpus is not read again: the chain checks files on the documents that
    # validated the distillation
    config = config.with_data(run_dir / HELDOUT_TEXT if streamed else data)
    plan_config, export_config, bench_config = config.plan, config.export, config.bench
    baselines = config.baselines
    stages = Ledger(run_dir, name="stages.json")
    prof = resolve_profile(target)
    teachers = teacher_list(teacher)
    t = load_teacher(teachers[primary_index(teachers)] if len(teachers) > 1 else teachers[0],
                     weights=True)
    others = [files_id(load_teacher(x, weights=True).path) for x in teachers
              if len(teachers) > 1]
    if t.path is not None:
        check_model_files(t.path)
    _check_exportable(t, prof, export_config)
    t_id = [t.config, files_id(t.path) if t.path else None, others]
    data_id = (source_id(str(data)) if streamed else files_id(Path(data)) if data
               else "stdlib")
    total = 5 if baselines else 4

    # the planner's choice, checked by measurement (optional): with --target local the
    # student is planned from the speeds it timed (PlanConfig.measured)
    if config.verify_plan:
        vkey = _hash(t_id, asdict(prof), asdict(plan_config), config.verify_plan,
                     bench_config.threads)
        vpath = run_dir / "plan_verify.json"
        doc = stages.get("verify_plan", key=vkey) is not None and _read_json(vpath)
        if doc:
            log(f"verify plan: inputs unchanged, kept {vpath}")
        else:
            log(f"verify plan: timing the {config.verify_plan} candidates around the choice")
            doc = verify_plan(t.path if t.path else teachers[0], prof, plan_config,
                              config.verify_plan, threads=bench_config.threads, log=log)
            atomic_write(vpath, doc)
            stages.put("verify_plan", [vpath], {}, key=vkey)
        v = doc.get("verified") or {}
        if v.get("converged") and v.get("measured"):
            plan_config = replace(plan_config, measured=tuple(v["measured"]))
            log(f"verify plan: the student is planned on the speeds measured here: {v['choice']}")

    # 1-2. profile, plan and distil (distill writes plan.json; it resumes when interrupted)
    dcfg = config.distill  # --quant-aware with --no-quant-aware is refused by RunConfig
    if config.quant_aware and dcfg.quant_aware is None and dcfg.train.fsdp:
        log("quant-aware distillation: off (--fsdp trains without the quant-aware phase)")
    elif config.quant_aware and dcfg.quant_aware is None:
        spec, why = default_for(prof, t.shape.is_encoder, tuple(export_config.quants or ()))
        log(f"quant-aware distillation: {'on, for ' + spec if spec else 'off'} ({why}"
            + ("; --no-quant-aware turns it off)" if spec else ")"))
        dcfg = replace(dcfg, quant_aware=spec)
    ptq = config.compare_ptq and bool(dcfg.quant_aware)
    if config.compare_ptq and not ptq:
        log("compare-ptq: distillation is not quant-aware here, so there is nothing to compare")
    total += 2 * ptq
    step = iter(range(1, total + 1))
    runs = [("distill", run_dir, dcfg)] + (
        [("distill_ptq", run_dir / "ptq", replace(dcfg, quant_aware=None))] if ptq else [])
    dirs = []
    for name, folder, cfg in runs:  # with --compare-ptq, the same student without QAD too
        key = _hash(t_id, asdict(prof), data_id, asdict(plan_config), asdict(cfg))
        dirs.append(_distill_stage(
            name, folder, key, stages, f"[{next(step)}/{total}]", log,
            teacher=teachers if len(teachers) > 1 else (t.path if t.path else teachers[0]),
            target=prof, data=data, config=cfg, plan_config=plan_config))
    student_dir = dirs[0]

    # 3. export, quantize and verify the student, then the teacher (the baseline)
    roles = ([("student", student_dir)] + [("student-ptq", d) for d in dirs[1:]]
             + ([("teacher", t.path)] if baselines else []))
    for role, model_dir in roles:
        _export_stage(role, model_dir, prof, export_config, run_dir, stages, next(step), total,
                      log)

    # 4. benchmark every artifact (and the HF folders, in torch) on this machine
    artifacts, _ = artifacts_of_run(run_dir, tuple(r for r, _ in roles))
    bkey = _hash([stages.key_of(f"export_{r}") for r, _ in roles], asdict(bench_config),
                 asdict(prof))
    bench_path = run_dir / "bench.json"
    if stages.get("bench", key=bkey) is not None:
        log(f"[{next(step)}/{total}] bench: inputs unchanged, kept {bench_path}")
    else:
        log(f"[{next(step)}/{total}] bench: {len(artifacts)} artifacts")
        records = bench(artifacts, t.path, prof, bench_config)
        atomic_write(bench_path, [r.to_dict() for r in records])
        stages.put("bench", [bench_path], {}, key=bkey)
    return report(run_dir)


def _distill_stage(name: str, folder: Path, key: str, stages: Ledger, n: str, log,
                   **kw) -> Path:
    """Distil into ``folder`` (its student/, checkpoints/, stages/) unless the ledger's stage
    ``name`` holds ``key`` and the student is there; an interrupted run of the same inputs
    resumes from its last checkpoint. Returns the student's folder."""
    student_dir = folder / "student"
    label = "distill" if name == "distill" else "distill without quant-aware (--compare-ptq)"
    if stages.get(name, key=key) is not None and (student_dir / "config.json").is_file():
        log(f"{n} {label}: inputs unchanged, kept {student_dir}")
        return student_dir
    started = stages.key_of(f"{name}_started") == key
    resume = started and ((folder / "checkpoints" / "latest").is_file()
                          or (folder / "stages").is_dir())  # a progressive chain
    if not started:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        shutil.rmtree(folder / "stages", ignore_errors=True)
        stages.put(f"{name}_started", [], {}, key=key)
    log(f"{n} {label}{' (resuming)' if resume else ''}")
    distill(out=folder, resume=resume, **kw)
    stages.put(name, folder_files(student_dir), {}, key=key)
    return student_dir


def _check_exportable(t, prof, cfg: ExportConfig) -> None:
    """Refuse before distilling what export would refuse after it: the student keeps the
    teacher's tokenizer and RoPE settings, so a teacher GGUF cannot carry fails the same way."""

    if t.path is not None and "gguf" in resolve_formats(prof, cfg, t.shape.is_encoder):
        check_writable(t.path, t.config)


def _export_stage(role, model_dir, prof, cfg, run_dir, stages, n, total, log) -> dict:

    key = _hash(files_id(Path(model_dir)), asdict(prof), asdict(cfg))
    out = run_dir / "export" / role
    if stages.get(f"export_{role}", key=key) is not None:
        log(f"[{n}/{total}] export {role}: inputs unchanged, kept {out}")
    else:
        log(f"[{n}/{total}] export {role}: {model_dir}")
        export(model_dir, prof, cfg, out)
        stages.put(f"export_{role}", folder_files(out), {}, key=key)  # export.json and files
    return json.loads((out / "export.json").read_text())


def report(run_dir: str | Path) -> dict:
    """(Re)write report.json/md/html of a run folder from its bench.json, plan.json,
    distill.json and export.json files; returns {json, md, html} paths."""
    return write_report(run_dir, build_report(run_dir))


def _read_json(path: Path) -> dict | None:
    """A kept JSON file of an earlier stage; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
