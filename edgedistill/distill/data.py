"""Reading the user's text: plain text files, JSONL with a ``text`` field, a folder of either,
or a ``datasets`` folder saved with ``save_to_disk``."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeDistillError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")


def _jsonl(path: Path) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EdgeDistillError(f"{path}:{n}: not valid JSON ({e.msg}).",
                                       "write one JSON object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise EdgeDistillError(f"{path}:{n}: no string field 'text'.",
                                       'write lines like {"text": "..."}')
            out.append(rec["text"])
    return out


def load_texts(path: str | Path) -> list[str]:
    """Documents from ``path``; raises EdgeDistillError when there is nothing usable."""
    path = Path(path)
    if not path.exists():
        raise EdgeDistillError(f"data {path} does not exist.",
                               "pass a text file, a .jsonl file, or a folder of them")
    if path.is_dir() and (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # DatasetDict: take the train split, else the first
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        if "text" not in ds.column_names:
            raise EdgeDistillError(f"dataset {path} has no 'text' column "
                                   f"(columns: {ds.column_names}).",
                                   "save a dataset with a 'text' column")
        texts = [t for t in ds["text"] if isinstance(t, str)]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"))
        texts = [t for f in files for t in load_texts(f)]
    elif path.suffix == ".jsonl":
        texts = _jsonl(path)
    else:
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise EdgeDistillError(f"data {path} holds no text.",
                               "pass a non-empty text file, .jsonl, or folder")
    return texts
