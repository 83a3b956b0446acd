"""Progress messages: one ``logging`` logger per stage (``edgedistill.export``, ...), printed to
stderr as ``[export] message``; stdout stays for results (``--json`` prints one document).

The ``edgedistill`` logger gets this handler once, at INFO; a program that embeds edgedistill
quiets it with ``logging.getLogger("edgedistill").setLevel(logging.WARNING)`` or replaces the
handler."""
from __future__ import annotations

import logging
import sys


class _Stderr(logging.Handler):
    """Writes to the sys.stderr of the moment (a test's captured stream, a CLI's terminal)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _StageFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.name.rsplit('.', 1)[-1]}] {record.getMessage()}"


def get_logger(stage: str) -> logging.Logger:
    """The logger of ``stage`` (pipeline, distill, export, bench, calibrate)."""
    root = logging.getLogger("edgedistill")
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(_StageFormat())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(f"edgedistill.{stage}")
