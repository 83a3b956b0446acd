"""Run state: what a run already did, so that an interrupted or repeated run does not redo it.

- :func:`fingerprint`: a short stable hash of a stage's inputs;
- :func:`atomic_write`: every JSON and text artifact is written to a temporary file and
  renamed into place, so a crash never leaves half a file;
- :class:`Stages`: ``RUN_DIR/stages.json``, the input hash of every finished pipeline stage;
- :class:`Ledger`: what an earlier export into the same folder already wrote and verified.

``<out>/.ledger.json`` holds one record per finished step (an artifact written and verified, a
scratch file such as the F32 GGUF the quantizations start from): the key of everything the
step depended on, the SHA-256 of each file it wrote, and what it produced (the verdict with its
figures). A later export reuses a record only when its key is the same (the model's files, the
held-out and calibration tokens, the profile, the export settings, edgedistill's source code
and the versions of the converters and runtimes) and every file still has the recorded hash;
anything else is done again. Runs that crashed (the runtime could not load the file) are never recorded.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

LEDGER = ".ledger.json"


def atomic_write(path: Path, data) -> Path:
    """Write ``data`` (str, bytes, or anything JSON-able, as indented JSON) to ``path`` via a
    temporary file beside it and a rename: readers see the old file or the new, never half."""
    path = Path(path)
    if not isinstance(data, (str, bytes)):
        data = json.dumps(data, indent=2, default=str)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    tmp.replace(path)
    return path


def files_id(path: Path) -> list:
    """Cheap identity of a file or folder's contents: names, sizes, mtimes."""
    path = Path(path)
    if path.is_file():
        s = path.stat()
        return [(path.name, s.st_size, int(s.st_mtime))]
    return sorted((str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime))
                  for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_files(path: Path) -> list[Path]:
    """``path`` and the files that belong to it: an ONNX graph's external data
    (``model.onnx.data``, ``model.onnx_data``)."""
    path = Path(path)
    extra = sorted(p for p in path.parent.glob(f"{path.name}*")
                   if p != path and p.name[len(path.name)] in "._" and p.is_file())
    return [path] + extra


class Ledger:
    """Records of finished export steps in ``out_dir``; ``key``: the inputs' identity. With
    ``resume=False`` nothing is reused (records are still written)."""

    def __init__(self, out_dir: Path, key: str, resume: bool = True):
        self.path = Path(out_dir) / LEDGER
        self.root, self.key, self.resume = Path(out_dir), key, resume
        try:
            self.records = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):  # a torn or foreign file: start over, never fail on it
            self.records = {}
        if not isinstance(self.records, dict):
            self.records = {}

    def _hashes(self, files: list[Path]) -> dict[str, str] | None:
        out = {}
        for f in files:
            if not f.is_file():
                return None
            out[str(f.resolve().relative_to(self.root.resolve()))] = file_sha256(f)
        return out

    def get(self, name: str, files: list[Path] | None):
        """The value recorded for ``name`` if its key is this export's and ``files`` (None:
        the files the record lists) are the very files it recorded; else None."""
        rec = self.records.get(name)
        if not self.resume or not isinstance(rec, dict) or rec.get("key") != self.key:
            return None
        recorded = rec.get("files", {})
        if files is None:
            files = [self.root / f for f in recorded]
        if self._hashes([Path(f) for f in files]) != recorded:
            return None
        return rec.get("value")

    def files(self, name: str) -> dict:
        """{path relative to the export folder: SHA-256} recorded for ``name``."""
        return dict(self.records.get(name, {}).get("files", {}))

    def put(self, name: str, files: list[Path], value) -> dict | None:
        """Record ``value`` for ``name`` with the hashes of ``files``, which it returns (None
        when a file is missing: nothing is recorded)."""
        hashes = self._hashes([Path(f) for f in files])
        if hashes is None:
            return None
        self.records[name] = {"key": self.key, "files": hashes, "value": value}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.records)
        return hashes


def fingerprint(*parts) -> str:
    """Short stable hash of JSON-able parts (inputs of a stage)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class Stages:
    """RUN_DIR/stages.json: input hash of every finished stage."""

    path: Path
    done: dict = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "Stages":
        p = run_dir / "stages.json"
        return cls(p, json.loads(p.read_text()) if p.is_file() else {})

    def fresh(self, name: str, key: str) -> bool:
        return self.done.get(name, {}).get("key") == key

    def mark(self, name: str, key: str) -> None:
        self.done[name] = {"key": key, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write(self.path, self.done)
