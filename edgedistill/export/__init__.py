"""Export an HF model for a target, quantize it, and verify every artifact against torch.

    export(student_dir, target) -> ExportResult

For each format the profile allows (or ``formats``): write the float artifact, then each
quantization, run every file in its own runtime on held-out text, and judge it against the
thresholds table (export/parity.py): 'passed' (every target met), 'below-target' (usable, loses
more than the target allows) or 'failed' (broken, or the runtime could not run it). GGUF
tokenizers are also checked token for token against the HF tokenizer. Nothing is reported as
good without having been run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..arch import shape_from_config
from ..errors import EdgeDistillError, writable_dir
from ..profiles import DeviceProfile, load_profile
from ..teacher import check_model_files
from .ledger import Ledger, files_id
from .parity import Verdict

EXPORT_FORMATS = ("onnx", "gguf")


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] | None = None
    """Formats to write; default: those the profile allows (onnx, gguf)."""
    quants: tuple[str, ...] | None = None
    """Quantizations; default: every one the profile allows for the chosen formats."""
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
    (``<out>/.ledger.json``, see export/ledger.py); False redoes everything."""


@dataclass
class Artifact:
    path: Path
    format: str
    quant: str
    verdict: Verdict
    tensor_types: dict | None = None
    note: str = ""
    quantization: dict | None = None
    """How the file was quantized beyond its type, e.g. {"importance_matrix": {"tokens",
    "tensors"}}."""
    verified_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    """When its verdict was measured (local time)."""
    earlier_run: bool = False
    """The file and its verdict were kept from an earlier export (see export/ledger.py)."""
    files: dict | None = None
    """{path relative to the export folder: SHA-256} of the files the verdict is about."""

    @property
    def status(self) -> str:
        """'passed', 'below-target', 'failed' (see export/parity.py) or 'error' (the runtime
        could not run the file)."""
        return "error" if self.verdict.error else self.verdict.status

    def record(self) -> dict:
        """What the ledger keeps of this artifact (see :meth:`from_record`)."""
        return {"verdict": asdict(self.verdict), "tensor_types": self.tensor_types,
                "note": self.note, "quantization": self.quantization,
                "verified_at": self.verified_at}

    @classmethod
    def from_record(cls, path: Path, fmt: str, quant: str, rec: dict,
                    files: dict | None = None) -> "Artifact":
        return cls(Path(path), fmt, quant, Verdict(**rec["verdict"]), rec.get("tensor_types"),
                   rec.get("note", ""), rec.get("quantization"), rec.get("verified_at", "?"),
                   earlier_run=True, files=files)

    def to_dict(self) -> dict:
        return {
            "role": "student", "path": str(self.path), "format": self.format,
            "quant": self.quant,
            "size_bytes": self.path.stat().st_size if self.path.exists() else None,
            "status": self.status, "parity": self.verdict.to_dict(),
            "tensor_types": self.tensor_types, "quantization": self.quantization,
            "note": self.note,
            "verified": {"at": self.verified_at, "earlier_run": self.earlier_run,
                         "sha256": self.files},
        }


@dataclass
class ExportResult:
    model_dir: Path
    target: str
    out_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    tokenizer_parity: dict | None = None
    notes: list[str] = field(default_factory=list)
    """What holds for all of a format's files, e.g. a sliding window GGUF files leave out."""

    @property
    def passed(self) -> bool:
        """Every artifact met every target."""
        return all(a.status == "passed" for a in self.artifacts)

    @property
    def usable(self) -> bool:
        """No artifact is broken: each passed or is below target (a tokenizer mismatch fails
        the GGUF files)."""
        return all(a.status in ("passed", "below-target") for a in self.artifacts)

    def to_dict(self) -> dict:
        return {"model": str(self.model_dir), "target": self.target, "out": str(self.out_dir),
                "passed": self.passed, "usable": self.usable,
                "tokenizer_parity": self.tokenizer_parity, "notes": self.notes,
                "artifacts": [a.to_dict() for a in self.artifacts]}


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def resolve_formats(profile: DeviceProfile, config: ExportConfig) -> dict[str, list[str]]:
    """{format: [quant, ...]} to write, checked against what the profile allows."""
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
        return {f: list(allowed[f]) for f in formats}
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


def eval_data(model_dir: Path, tok, encoder: bool, config: ExportConfig):
    """(held-out items, calibration items): token-id sequences for causal LMs, sentences for
    encoders. User data if given, else standard-library text."""
    from ..corpus import split_holdout, stdlib_sentences, stdlib_source
    from ..distill.data import chat_renderer, load_texts

    if encoder:
        if config.data:
            lines = [ln.strip() for t in load_texts(config.data, chat_renderer(tok))
                     for ln in t.splitlines()]
            sentences = list(dict.fromkeys(ln for ln in lines if len(ln) > 3))
        else:
            sentences = list(stdlib_sentences())
        train, held = split_holdout(sentences)
        held = held or sentences[-config.eval_sentences:]
        return held[: config.eval_sentences], train[:64]
    text = ("\n\n".join(load_texts(config.data, chat_renderer(tok))) if config.data
            else stdlib_source(400_000))
    ids = tok(text)["input_ids"]
    L, n = config.seq_len, config.eval_sequences
    chunks = [ids[i:i + L] for i in range(0, len(ids) - L + 1, L)]
    if len(chunks) < 2:
        raise EdgeDistillError(f"the data has {len(ids)} tokens; verification needs at least "
                               f"{2 * L}.", "pass more text with --data")
    held = chunks[-n:] if len(chunks) > n else chunks[len(chunks) // 2:]
    calib = chunks[: max(1, min(16, len(chunks) - len(held)))]
    return held, calib


def export(student: str | Path, target: str | DeviceProfile = "laptop",
           config: ExportConfig = ExportConfig(), out: str | Path | None = None) -> ExportResult:
    """Export ``student`` (an HF folder) for ``target``; verify every artifact. Writes
    ``<out>/onnx/``, ``<out>/gguf/`` and ``<out>/export.json``; returns the result."""
    from transformers import AutoTokenizer

    model_dir = Path(student)
    if not (model_dir / "config.json").is_file():
        raise EdgeDistillError(f"student {model_dir} is not an HF model folder (no config.json).",
                               "pass the folder save_pretrained wrote, e.g. RUN_DIR/student")
    prof = target if isinstance(target, DeviceProfile) else load_profile(target)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    check_model_files(model_dir, "student", "--student")
    plan = resolve_formats(prof, config)
    if "gguf" in plan:
        from .gguf import check_writable

        check_writable(model_dir, cfg)  # before minutes of ONNX work, not after
    out_dir = writable_dir(Path(out) if out else model_dir.parent / "export")
    threads = config.threads or max(1, min(prof.threads, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(model_dir)
    held, calib = eval_data(model_dir, tok, shape.is_encoder, config)
    result = ExportResult(model_dir, prof.name, out_dir)
    _log(f"{model_dir} ({shape.family}, {shape.total_params():,} params) for {prof.name}: "
         + ", ".join(f"{f}:{','.join(q)}" for f, q in plan.items()))
    from .checks import Checker

    checker = Checker(model_dir, shape, tok, held, threads, _log)
    checker.ledger = Ledger(out_dir, _inputs_key(model_dir, prof, config, held, calib),
                            config.resume)
    if "onnx" in plan and prof.constraints.static_shapes:
        result.artifacts += checker.npu_artifacts(out_dir / "onnx", plan["onnx"], calib, prof,
                                                  config.context, config.npu_eval_items,
                                                  config.npu_context)
    elif "onnx" in plan:
        result.artifacts += checker.onnx_artifacts(out_dir / "onnx", plan["onnx"], calib,
                                                   prof.constraints.int4_block_size)
    if "gguf" in plan:
        arts, tp = checker.gguf_artifacts(out_dir / "gguf", plan["gguf"],
                                          calib if config.importance else None)
        from .gguf import sliding_window, window_note

        if not shape.is_encoder and (window := sliding_window(model_dir)):
            note = window_note(window, prof.context_length)
            _log(f"gguf: {note}")
            result.notes.append(f"GGUF: {note}")
            for a in arts:
                a.note = "; ".join(filter(None, [a.note, note]))
        result.artifacts += arts
        result.tokenizer_parity = tp
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".export.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    tmp.replace(out_dir / "export.json")
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
    """What makes and judges the files: edgedistill's own source (any change, the thresholds
    table included, invalidates earlier records) and the versions of the converters and
    runtimes. Read once per process (the whole chain exports twice)."""
    from ..machine import package_version

    root = Path(__file__).resolve().parent.parent
    code = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        code.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return [code.hexdigest(), {pkg: package_version(pkg) for pkg in (
        "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
        "onnxruntime-qnn", "llama-cpp-python", "gguf")}]


def verify_artifact(student: str | Path, path: str | Path, fmt: str, quant: str,
                    config: ExportConfig = ExportConfig()) -> Verdict:
    """Check an existing artifact of ``student`` against torch (same data and thresholds as
    :func:`export`)."""
    from transformers import AutoTokenizer

    from .checks import Checker

    model_dir = Path(student)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    held, _ = eval_data(model_dir, tok, shape.is_encoder, config)
    threads = config.threads or max(1, min(4, os.cpu_count() or 1))
    return Checker(model_dir, shape, tok, held, threads, _log).verify(Path(path), fmt, quant)


__all__ = ["ExportConfig", "ExportResult", "Artifact", "export", "resolve_formats",
           "verify_artifact"]
