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
