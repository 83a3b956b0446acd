"""Run state, one module for every stage: what a run already did, so that an interrupted or
repeated run does not redo it.

- :func:`fingerprint`: a short stable hash of a step's inputs;
- :func:`atomic_write`: every JSON and text artifact is written to a temporary file and
  renamed into place, so a crash never leaves half a file;
- :func:`file_sha256` and :func:`files_id`: one kind of identity for files and folders, their
  content (SHA-256), cached by (path, size, mtime) so that unchanged files are hashed once;
- :class:`Ledger`: records of finished steps, each with the key of its inputs, the hashes of
  the files it wrote and what it produced. The whole chain keeps one in ``RUN_DIR/stages.json``
  (distill, export, bench); an export keeps one in ``<out>/.ledger.json`` (each artifact
  written and verified, the scratch files its quantizations start from).

A record is reused only when its key is the same (for an export: the model's files, the
held-out and calibration tokens, the profile, the export settings, edgedistill's version and
thresholds, and the versions of the converters and runtimes) and every file it lists still has
the recorded hash; anything else is done again. Runs that crashed (the runtime could not load
the file) are never recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LEDGER = ".ledger.json"


def atomic_write(path: Path, data) -> Path:
    """Write ``data`` (str, bytes, or anything JSON-able, as indented JSON) to ``path`` via a
    temporary file beside it and a rename: readers see the old file or the new, never half.
    The temporary file is the process's own, so processes writing the same file (the ranks of
    a launch) do not rename each other's away."""
    path = Path(path)
    if not isinstance(data, (str, bytes)):
        data = json.dumps(data, indent=2, default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    tmp.replace(path)
    return path


def cache_dir() -> Path:
    """``$EDGEDISTILL_CACHE`` or ``$XDG_CACHE_HOME/edgedistill`` or ``~/.cache/edgedistill``."""
    if os.environ.get("EDGEDISTILL_CACHE"):
        return Path(os.environ["EDGEDISTILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgedistill"


_HASHES: dict[str, str] = {}
"""(path, size, mtime) -> SHA-256 of the files hashed by this process (and those found in the
cache file, read once)."""
_HASH_CACHE = "file_hashes.json"
_loaded = False


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's content, cached by (path, size, mtime): a file that was not touched
    is read once, across processes (the cache lives in :func:`cache_dir`)."""
    global _loaded
    path = Path(path)
    key = _stat_key(path)
    if not _loaded:
        _loaded = True
        try:
            _HASHES.update(json.loads((cache_dir() / _HASH_CACHE).read_text()))
        except (OSError, ValueError):  # no cache yet, or a torn one: start empty
            pass
    if key in _HASHES:
        return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _HASHES[key] = h.hexdigest()
    if path.stat().st_size >= 1 << 20:  # remember big files; small ones are cheap to re-hash
        try:
            cache_dir().mkdir(parents=True, exist_ok=True)
            atomic_write(cache_dir() / _HASH_CACHE, json.dumps(_HASHES))
        except OSError:  # a read-only cache is not an error, only slower
            pass
    return _HASHES[key]


def files_id(path: str | Path) -> list:
    """The identity of a file or a folder's contents: [(relative name, SHA-256), ...]."""
    path = Path(path)
    if path.is_file():
        return [(path.name, file_sha256(path))]
    if not path.is_dir():
        return []
    return sorted((str(p.relative_to(path)), file_sha256(p)) for p in path.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def artifact_files(path: Path) -> list[Path]:
    """``path`` and the files that belong to it: an ONNX graph's external data
    (``model.onnx.data``, ``model.onnx_data``)."""
    path = Path(path)
    extra = sorted(p for p in path.parent.glob(f"{path.name}*")
                   if p != path and p.name[len(path.name)] in "._" and p.is_file())
    return [path] + extra


class Ledger:
    """Records of finished steps under ``root`` (in the file ``name``). ``key``: the inputs'
    identity that records carry unless a call gives its own (a pipeline stage does). With
    ``resume=False`` nothing is reused (records are still written)."""

    def __init__(self, root: str | Path, key: str | None = None, resume: bool = True,
                 name: str = LEDGER):
        self.root, self.key, self.resume = Path(root), key, resume
        self.path = self.root / name
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

    def get(self, name: str, files: list[Path] | None = None, key: str | None = None):
        """The value recorded for ``name`` if it was recorded under ``key`` (default: the
        ledger's) and ``files`` (None: the files the record lists) are the very files it
        recorded; else None."""
        rec = self.records.get(name)
        if not self.resume or not isinstance(rec, dict) or rec.get("key") != (key or self.key):
            return None
        recorded = rec.get("files", {})
        if files is None:
            files = [self.root / f for f in recorded]
        if self._hashes([Path(f) for f in files]) != recorded:
            return None
        return rec.get("value")

    def key_of(self, name: str) -> str | None:
        """The key ``name`` was last recorded under (None: never recorded)."""
        rec = self.records.get(name)
        return rec.get("key") if isinstance(rec, dict) else None

    def files(self, name: str) -> dict:
        """{path relative to the root: SHA-256} recorded for ``name``."""
        return dict(self.records.get(name, {}).get("files", {}))

    def put(self, name: str, files: list[Path], value, key: str | None = None) -> dict | None:
        """Record ``value`` for ``name`` under ``key`` (default: the ledger's) with the
        hashes of ``files``, which it returns (None when a file is missing: nothing is
        recorded)."""
        hashes = self._hashes([Path(f) for f in files])
        if hashes is None:
            return None
        self.records[name] = {"key": key or self.key, "files": hashes, "value": value}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.records)
        return hashes


def fingerprint(*parts) -> str:
    """Short stable hash of JSON-able parts (inputs of a step)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def folder_files(folder: Path) -> list[Path]:
    """The files of an output folder that a stage record vouches for (not hidden scratch)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []
