"""Errors that reach the user.

Every error the user can fix is an :class:`EdgeDistillError` (exit code 2): one line that says
what is wrong, with the bad value, and a ``hint`` that says the fix. Anything else is a bug
(exit code 1; the traceback is shown with ``EDGEDISTILL_DEBUG=1``).
"""
from __future__ import annotations


class EdgeDistillError(Exception):
    """A user error: bad input, a missing file, a constraint that cannot be met."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class ProfileError(EdgeDistillError):
    """A device profile is unknown, malformed or invalid."""


class TeacherError(EdgeDistillError):
    """The teacher cannot be found, read, or is of an unsupported family."""


class PlanError(EdgeDistillError):
    """No student candidate satisfies the profile's budget and targets."""


class MachineError(EdgeDistillError):
    """This machine could not be measured (for ``--target local``)."""


def writable_dir(path, what: str = "--out"):
    """Create folder ``path`` (and its parents) or raise EdgeDistillError saying why not (a
    file in the way, no permission), before any work is done. Returns it as a Path."""
    from pathlib import Path

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                       None)
        why = (f"{blocker} is a file" if blocker is not None
               else f"{e.strerror or e} ({e.filename or path})")
        raise EdgeDistillError(f"cannot use {path} as the {what} folder: {why}.",
                               f"pass {what} a folder you can write to (not a file)") from None
    return path
