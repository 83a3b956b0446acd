"""Export an HF model for a target, quantize it, and verify every artifact against torch.

    export(student_dir, target) -> ExportResult

For each format the profile allows (or ``formats``): write the float artifact, then each
quantization, run every file in its own runtime on held-out text, and judge it against the
thresholds table (verify/parity.py): 'passed' (every target met), 'below-target' (usable, loses
more than the target allows) or 'failed' (broken, or the runtime could not run it). GGUF
tokenizers are also checked token for token against the HF tokenizer. Nothing is reported as
good without having been run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedistill.arch import shape_from_config
from edgedistill.convert.gguf import check_writable, sliding_window, window_note
from edgedistill.data import eval_data
from edgedistill.distill.quant_aware import file_note, trained_for
from edgedistill.errors import EdgeDistillError, writable_dir
from edgedistill.formats import quant_type
from edgedistill.export.checks import npu_artifacts, onnx_artifacts
from edgedistill.export.gguf_checks import gguf_artifacts
from edgedistill.logs import get_logger
from edgedistill.machine import package_version
from edgedistill.profiles import DeviceProfile, resolve_profile
from edgedistill.records import Artifact, ExportResult, Verdict
from edgedistill.runstate import Ledger, atomic_write, files_id
from edgedistill.teacher import check_model_files
from edgedistill.verify.own import qdq_weights
from edgedistill.verify.parity import ENCODER_THRESHOLDS, THRESHOLDS
from edgedistill.verify.reference import reference, verify
from edgedistill.version import ARTIFACTS_VERSION, __version__

EXPORT_FORMATS = ("onnx", "gguf")


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] | None = None
    """Formats to write; default: those the profile allows (onnx, gguf)."""
    quants: tuple[str, ...] | None = None
    """Quantizations; default: every one the profile allows for the chosen formats (for
    sentence encoders, its ``encoder_formats`` where it has them)."""
    data: str | None = None
    """Text for held-out verification and static-QDQ calibration; default: stdlib text."""
    threads: int | None = None
    """Threads for the runtimes; default: the profile's, at most this machine's cores."""
    eval_sequences: int = 8
    """Held-out sequences (causal LMs) compared token by token."""
    seq_len: int = 128
    """Tokens per held-out sequence."""
    eval_sentences: int = 256
    """Held-out sentences (encoders)."""
    context: int | None = None
    """Static-shape (NPU) profiles: KV-cache slots of the fixed graphs; default the profile's
    context_length."""
    npu_eval_items: int = 16
    """Static-shape profiles: held-out items run on the HTP (its x86 simulation is slow)."""
    importance: bool = True
    """GGUF k-quants and Q4_0: quantize with an importance matrix measured in torch on the
    calibration text (llama.cpp's imatrix), as ``llama-quantize --imatrix`` does."""
    npu_context: bool = True
    """Static-shape profiles: save each QDQ graph compiled for the profile's HTP as an
    EPContext model (``*.qnn-ctx.onnx``), which the phone loads without compiling; the HTP
    figures are then measured on that file."""
    resume: bool = True
    """Reuse what an earlier export into the same folder wrote and verified, when its inputs
    (model files, data, profile, these settings) are the same and its files are unchanged
    (``<out>/.ledger.json``, see runstate.Ledger); False redoes everything."""


_logger = get_logger("export")


def resolve_formats(profile: DeviceProfile, config: ExportConfig,
                    encoder: bool = False) -> dict[str, list[str]]:
    """{format: [quant, ...]} to write, checked against what the profile allows. Without
    ``--quant``: the profile's default for the model's kind (``formats_for``)."""
    allowed = {f: q for f, q in profile.formats.items() if f in EXPORT_FORMATS}
    formats = list(config.formats or allowed)
    for f in formats:
        if f not in EXPORT_FORMATS:
            raise EdgeDistillError(f"unknown export format {f!r}.",
                                   f"use --formats with {', '.join(EXPORT_FORMATS)}")
        if f not in allowed:
            raise EdgeDistillError(f"profile {profile.name!r} does not allow format {f!r}.",
                                   f"use --formats {','.join(allowed) or '(none)'}, or another "
                                   "--target")
    if config.quants is None:
        default = profile.formats_for(encoder)  # a format asked for by name: all it allows
        return {f: list(default.get(f) or allowed[f]) for f in formats
                if default.get(f) or config.formats}
    out: dict[str, list[str]] = {f: [] for f in formats}
    for q in config.quants:
        homes = [f for f in formats if q in allowed[f]]
        if not homes:
            listed = ", ".join(f"{f}:{x}" for f in formats for x in allowed[f])
            raise EdgeDistillError(f"quantization {q!r} is not allowed by profile "
                                   f"{profile.name!r} for {', '.join(formats)}.",
                                   f"use --quant with some of: {listed}")
        for f in homes:
            out[f].append(q)
    return {f: qs for f, qs in out.items() if qs}


def export(student: str | Path, target: str | DeviceProfile = "laptop",
           config: ExportConfig = ExportConfig(), out: str | Path | None = None) -> ExportResult:
    """Export ``student`` (an HF folder) for ``target``; verify every artifact. Writes
    ``<out>/onnx/``, ``<out>/gguf/`` and ``<out>/export.json``; returns the result."""
    from transformers import AutoTokenizer

    model_dir = Path(student)
    if not (model_dir / "config.json").is_file():
        raise EdgeDistillError(f"student {model_dir} is not an HF model folder (no config.json).",
                               "pass the folder save_pretrained wrote, e.g. RUN_DIR/student")
    prof = resolve_profile(target)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    trained = trained_for(cfg)  # the file a quant-aware student was trained for, if any
    check_model_files(model_dir, "student", "--student")
    plan = resolve_formats(prof, config, shape.is_encoder)
    if "gguf" in plan:
        check_writable(model_dir, cfg)  # before minutes of ONNX work, not after
    out_dir = writable_dir(Path(out) if out else model_dir.parent / "export")
    threads = config.threads or max(1, min(prof.threads, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(model_dir)
    held, calib = eval_data(tok, shape.is_encoder, config.data, sequences=config.eval_sequences,
                            seq_len=config.seq_len, sentences=config.eval_sentences)
    result = ExportResult(model_dir, prof.name, out_dir)
    _logger.info(f"{model_dir} ({shape.family}, {shape.total_params():,} params) for {prof.name}: "
                 + ", ".join(f"{f}:{','.join(q)}" for f, q in plan.items()))

    ref = reference(model_dir, held, tok, shape, _logger.info)  # torch runs once for every file
    steps = dict(ledger=Ledger(out_dir, _inputs_key(model_dir, prof, config, held, calib),
                               config.resume), log=_logger.info, threads=threads)
    if "onnx" in plan and prof.constraints.static_shapes:
        result.artifacts += npu_artifacts(ref, out_dir / "onnx", plan["onnx"], calib, prof,
                                          config.context, config.npu_eval_items,
                                          config.npu_context, trained, **steps)
    elif "onnx" in plan:
        result.artifacts += onnx_artifacts(ref, out_dir / "onnx", plan["onnx"], calib,
                                           prof.constraints.int4_block_size, **steps)
    if "gguf" in plan:
        arts, tp = gguf_artifacts(ref, out_dir / "gguf", plan["gguf"],
                                  calib if config.importance else None, trained, **steps)
        if not shape.is_encoder and (window := sliding_window(model_dir)):
            note = window_note(window, prof.context_length)
            _logger.info(f"gguf: {note}")
            result.notes.append(f"GGUF: {note}")
            for a in arts:
                a.note = "; ".join(filter(None, [a.note, note]))
        result.artifacts += arts
        result.tokenizer_parity = tp
    if trained:  # every file says whether it was trained quant-aware, and for which file
        for a in result.artifacts:
            a.quantization = dict(a.quantization or {}, quant_aware=trained)
            if quant_type(a.format, a.quant).static and a.verdict is not None:
                a.verdict.figures.setdefault("weights", qdq_weights(
                    a.path, a.path.with_name(a.path.name.replace(f".{a.quant}.", ".fp32."))))
            a.note = "; ".join(filter(None, [a.note, file_note(
                trained, f"{a.format}:{a.quant}", a.verdict.figures)]))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "export.json", result.to_dict())
    return result


def _inputs_key(model_dir: Path, prof: DeviceProfile, config: ExportConfig, held: list,
                calib: list) -> str:
    """Identity of everything an artifact's file and verdict depend on, for the ledger: not
    which formats and quantizations were asked for (each artifact is recorded under its own
    name), the thread count, or where the data file lies (its tokens are in the key)."""
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("formats", "quants", "threads", "resume", "data")}
    blob = json.dumps([_software_id(), files_id(model_dir), asdict(prof), settings, held,
                       calib], default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@functools.cache
def _software_id() -> list:
    """What makes and judges the files, as behaviour rather than bytes of source: the
    package version, ARTIFACTS_VERSION (bumped when a converter or quantizer writes other
    bytes), the thresholds table (a changed limit changes verdicts), and the versions of the
    converters and runtimes. Computed once per process (the whole chain exports twice)."""
    table = json.dumps([sorted((f"{k[0]}:{k[1]}", asdict(v)) for k, v in t.items())
                        for t in (THRESHOLDS, ENCODER_THRESHOLDS)], sort_keys=True)
    return [f"{__version__}+{ARTIFACTS_VERSION}+{hashlib.sha256(table.encode()).hexdigest()[:16]}",
            {pkg: package_version(pkg) for pkg in (
                "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                "onnxruntime-qnn", "llama-cpp-python", "gguf")}]


def verify_artifact(student: str | Path, path: str | Path, fmt: str, quant: str,
                    config: ExportConfig = ExportConfig()) -> Verdict:
    """Check an existing artifact of ``student`` against torch (same data and thresholds as
    :func:`export`)."""
    from transformers import AutoTokenizer

    model_dir = Path(student)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    held, _ = eval_data(tok, shape.is_encoder, config.data, sequences=config.eval_sequences,
                        seq_len=config.seq_len, sentences=config.eval_sentences)
    threads = config.threads or max(1, min(4, os.cpu_count() or 1))
    return verify(path, fmt, quant, reference(model_dir, held, tok, shape, _logger.info), threads)


__all__ = ["ExportConfig", "ExportResult", "Artifact", "export", "resolve_formats",
           "verify_artifact"]
