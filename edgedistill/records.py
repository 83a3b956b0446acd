"""Typed records: what export.json, bench.json and report.json hold.

- :class:`Verdict`: the outcome of checking one file against the model it came from;
- :class:`Artifact`: one exported file with its verdict (a row of export.json);
- :class:`ExportResult`: one model's export (export.json).

Pure Python (dataclasses): every stage and the report read and write these, so they sit at
the bottom of the layers.
"""
from __future__ import annotations

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
