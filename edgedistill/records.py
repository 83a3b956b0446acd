"""Typed records: what export.json, bench.json and report.json hold.

- :class:`Verdict`: the outcome of checking one file against the model it came from;
- :class:`Artifact`: one exported file with its verdict (a row of export.json);
- :class:`ExportResult`: one model's export (export.json);
- :class:`BenchRecord`: one file measured in one runtime (a row of bench.json and of
  report.json's ``artifacts``; the format is docs/report-format.md).

Pure Python (dataclasses): every stage and the report read and write these, so they sit at
the bottom of the layers.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


STATUSES = ("passed", "below-target", "failed")


@dataclass
class Verdict:
    """The outcome of checking one artifact: ``status`` is one of :data:`STATUSES`."""

    status: str
    figures: dict
    failures: list[str] = field(default_factory=list)
    """Every limit missed, targets and floors, as sentences with the figure and the limit."""
    threshold: dict = field(default_factory=dict)
    """{"target": {...}, "floor": {...}}: the limits applied."""
    error: str | None = None
    """Set when the runtime could not run the artifact at all (crash, load failure)."""

    @property
    def passed(self) -> bool:
        """Every target met."""
        return self.status == "passed"

    @property
    def usable(self) -> bool:
        """Runs and meets every floor (passed or below target)."""
        return self.status != "failed"

    def fail(self, reason: str) -> None:
        """Mark the file broken for a reason found outside the figures (tokenizer parity,
        a saved context that differs from its graph, a runtime that is missing)."""
        self.status = "failed"
        self.failures.append(reason)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


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
    """The file and its verdict were kept from an earlier export (see runstate.Ledger)."""
    files: dict | None = None
    """{path relative to the export folder: SHA-256} of the files the verdict is about."""

    @property
    def status(self) -> str:
        """'passed', 'below-target', 'failed' (see verify/parity.py) or 'error' (the runtime
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


ROLES = ("student", "student-ptq", "teacher")
"""The student; with --compare-ptq the same student distilled without quant-aware training;
the teacher (the baseline)."""

TIMING_KEYS: dict[str, str] = {
    "runtime": "the runtime that ran the file (llama.cpp, onnxruntime-cpu, torch, ...)",
    "device": "the machine it ran on, with threads; absent on rows not run here",
    "measured": "true when measured here, or on a phone through Qualcomm AI Hub; false for "
                "rows not timed (NPU graphs without --qai-hub) or failed",
    "threads": "runtime threads",
    "prefill_tokens_per_s": "causal LMs: prompt tokens per second (median of the repeats)",
    "decode_tokens_per_s": "causal LMs: generated tokens per second (median): one forward "
                           "step per token and the greedy pick, llama.cpp's bare decode for "
                           "GGUF (llama_decode through llama-cpp-python's eval)",
    "generate_tokens_per_s": "GGUF: what a llama-cpp-python user sees, tokens per second of "
                             "Llama.generate's loop (eval plus its sampler chain; median)",
    "ttft_ms": "causal LMs: time to first token, ms (median)",
    "p50_ms": "median per-token (encoders: per-batch) latency, ms",
    "p95_ms": "95th percentile per-token (encoders: per-batch) latency, ms",
    "batch_ms": "encoders: time of one batch, ms (median of runs cycling through `batches`)",
    "sentences_per_s": "encoders: sentences per second at that batch",
    "peak_rss_mb": "peak resident memory of the runtime's process, MB",
    "roofline_fraction": "share of this machine's memory-bandwidth roofline that decode reaches",
    "spread": "[min, max] over the repeats of the headline figures",
    "repeats": "timed runs (after a warm-up)",
    "error": "why the runtime could not run the file (the row is kept, measured false)",
    "note": "what the reader must know about the row (e.g. not timed, and why)",
    "qai_hub": "NPU graphs profiled on a phone (bench --qai-hub): device, and per graph "
               "latency_ms, peak_memory_mb, compute_units, npu_share, job ids; or error",}
"""Keys of a record's ``bench`` dict (docs/report-format.md). Runs add a few of their own
(prompt_tokens, new_tokens, batch, batches, seq_len, greedy_tokens, warmup_s,
tokens_match_eager, htp, cudagraph_skips, compiled_graphs), documented there too."""


@dataclass
class BenchRecord:
    """One row of bench.json and of report.json's ``artifacts``: an exported file (or the HF
    folder it came from) of one role, measured in one runtime."""

    role: str
    """``student``, or ``teacher``: the teacher exported and measured the same way, the
    baseline that says what distillation bought."""
    path: str
    """The file (or HF folder) measured."""
    format: str
    """``gguf``, ``onnx`` or ``hf`` (an HF folder run in torch)."""
    quant: str
    """Quantization as the user writes it (q4_k_m, int8, qdq_a16w8, fp32, ...)."""
    model_dir: str
    """The HF folder the file was made from."""
    parity: dict | None = None
    """Export's verification of the file against its model: ``status`` (passed,
    below-target, failed, error) and the figures (max_abs_diff, top1_agreement, kl, cosine,
    ...). None for HF folders (they are the reference)."""
    tensor_types: dict | None = None
    """GGUF: {ggml type: tensor count} really written."""
    runtime: str | None = None
    """A GPU runtime asked for (torch-cuda, onnxruntime-cuda, llama.cpp-cuda); None: the
    format's CPU runtime."""
    options: dict | None = None
    """Runtime options of the row (torch-cuda: {"mode": eager | static | graphs})."""
    size_bytes: int | None = None
    """Size of the file (an HF folder: its weight files)."""
    bench: dict = field(default_factory=dict)
    """Timing and memory, measured or not (keys: :data:`TIMING_KEYS`)."""
    quality: dict = field(default_factory=dict)
    """Quality of the deployed file from the runtime's own outputs on held-out text:
    perplexity, loss, kl_to_teacher, top1_agreement (causal LMs); cosine_to_teacher,
    neighbour_overlap (encoders) and ``general_english`` (the same on held-out general
    English); ``measured``; ``error`` when it could not be computed."""
    predicted: dict = field(default_factory=dict)
    """Predictions beside the measurement: ``this_machine`` and ``target``, each with its
    figures, ``label`` (uncalibrated, calibrated, predicted), ``extrapolated`` (a calibrated
    figure beyond the calibration's measured design), ``device`` and ``basis``."""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")

    @property
    def status(self) -> str | None:
        """The file's verdict (None for an HF folder)."""
        return (self.parity or {}).get("status")

    @property
    def device(self) -> str | None:
        """Where the row was run; None when it was not run here (an NPU graph, a crash)."""
        return self.bench.get("device")

    @property
    def timed(self) -> bool:
        """Measured here, with figures (not an NPU graph, not a failed runtime)."""
        return bool(self.bench.get("measured")) and "error" not in self.bench

    @property
    def name(self) -> str:
        return f"{self.format}:{self.quant}"

    def to_dict(self) -> dict:
        """The JSON row: every field, None fields of the optional kind left out."""
        d = asdict(self)
        return {k: v for k, v in d.items()
                if v is not None or k in ("parity", "size_bytes")}

    @classmethod
    def from_export(cls, row: "Artifact | dict", model_dir: str | Path,
                    role: str = "student") -> "BenchRecord":
        """The record to measure for an exported file: an :class:`Artifact` or its row in
        export.json, made from the HF folder ``model_dir``."""
        row = row.to_dict() if isinstance(row, Artifact) else row
        return cls(role=role, path=str(row["path"]), format=row["format"], quant=row["quant"],
                   model_dir=str(model_dir),
                   parity={"status": row["status"], **row["parity"]["figures"]},
                   tensor_types=row.get("tensor_types"))

    @classmethod
    def from_dict(cls, d: dict) -> "BenchRecord":
        """A row of bench.json or report.json; unknown keys are an error (a format change
        must be made here)."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown keys in a bench record: {sorted(extra)}")
        return cls(**{k: v for k, v in d.items() if v is not None})  # None: the default
