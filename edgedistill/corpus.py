"""Text that ships with Python: the default data when the user gives none.

Two deterministic corpora from the standard library of the running interpreter:

- :func:`stdlib_sentences`: English prose, the docstrings of the standard library, extracted
  with ``ast``, split into sentences and deduplicated (for sentence embedders);
- :func:`stdlib_source`: Python source files as text (for causal LMs: code and comments).

Both are sorted by module path so the same interpreter gives the same text, and
:func:`split_holdout` takes a fixed share out for evaluation by a stable hash, not by order.
"""
from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
              "__pycache__", "tkinter", "pydoc_data", "encodings"}
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted, without tests and bundled packages."""
    root = stdlib_dir()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if not _SKIP_DIRS.intersection(rel):
            out.append(p)
    return out


def _clean_sentence(s: str) -> str | None:
    s = " ".join(s.split())
    # Prose only: a sentence of words, not a signature, a doctest or a table row.
    if not (30 <= len(s) <= 300) or s.startswith((">>>", "...", "-", "*", ":", "|")):
        return None
    letters = sum(c.isalpha() or c == " " for c in s)
    if letters / len(s) < 0.85 or len(s.split()) < 5:
        return None
    return s


@lru_cache(maxsize=1)
def stdlib_sentences() -> tuple[str, ...]:
    """Deduplicated English sentences from the standard library's docstrings."""
    seen: set[str] = set()
    out: list[str] = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                for sent in _SENT_END.split(para):
                    s = _clean_sentence(sent)
                    if s and s.lower() not in seen:
                        seen.add(s.lower())
                        out.append(s)
    return tuple(out)


def stdlib_source(max_chars: int | None = None) -> str:
    """Standard-library source, files joined by blank lines, up to ``max_chars``."""
    return python_source(stdlib_files(), max_chars)


def python_source(paths, max_chars: int | None = None) -> str:
    """The text of ``paths`` (unreadable files skipped) joined by blank lines, up to
    ``max_chars``."""
    parts, total = [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text) + 2
        if max_chars is not None and total >= max_chars:
            break
    out = "\n\n".join(parts)
    return out[:max_chars] if max_chars is not None else out


def stdlib_source_split(fraction: float = 0.05) -> tuple[str, str]:
    """(train, held_out) standard-library source, split by whole file with :func:`is_holdout`:
    held-out text comes from files the training text never touches, yet from the same mix."""
    train, held = [], []
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        (held if is_holdout(text, fraction) else train).append(text)
    return "\n\n".join(train), "\n\n".join(held)


def is_holdout(text: str, fraction: float = 0.05) -> bool:
    """Stable split: a text is held out when its hash falls in the first ``fraction``."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def split_holdout(items, fraction: float = 0.05) -> tuple[list, list]:
    """(train, held_out) by :func:`is_holdout`."""
    train, held = [], []
    for it in items:
        (held if is_holdout(it, fraction) else train).append(it)
    return train, held
