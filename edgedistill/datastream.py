"""Training text read while the student trains (``distill --stream``): a corpus larger than
memory, or a dataset on the Hugging Face hub, without loading or tokenizing it all first.

Sources (:func:`open_reader`):
- a local text file, ``.jsonl`` file, or folder of them (every file with a text suffix or
  ``.jsonl``, sorted by path, as ``load_texts`` reads a folder): text files in pieces of about
  1 MiB cut at a line end, a JSONL file one record at a time (rendered as ``load_texts``
  renders records, conversations with the teacher's chat template);
- a folder written by ``datasets``' ``save_to_disk``: its rows, in order;
- ``hf://datasets/ORG/NAME[/CONFIG]``: the dataset's train split through ``datasets``'
  streaming mode, downloaded as it is read (``HF_DATASETS_OFFLINE``, ``HF_TOKEN`` and the hub
  cache as ``datasets`` honours them).

Each document (piece, record or row) is held out or trained on by a stable hash of its text
(:func:`edgedistill.data.is_holdout`). Validation takes the first held-out documents; no
held-out document is trained on. Trained documents are tokenized, joined with EOS, cut into
blocks and drawn through a seeded shuffle buffer. At the source's end the stream starts over
(each pass draws its blocks in another order).

Position p of the stream is the p-th block drawn. The training loop's micro-batch j reads
positions j*B*world + rank*B .. + B: every rank reads the same stream and keeps its slice.
:meth:`BlockStream.state_dict` (the reader's position, tokens not yet in a block, the buffer
and its generator) is saved in each checkpoint, so a resumed run reads the blocks the killed
one would have.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from edgedistill.data import TEXT_SUFFIXES, Render, decode_text, is_holdout, record_text
from edgedistill.errors import EdgeDistillError

PIECE = 1 << 20
"""Bytes of a text file read as one document."""
HUB_PREFIX = "hf://datasets/"


def is_hub_dataset(data) -> bool:
    return isinstance(data, str) and data.startswith(HUB_PREFIX)


class FileReader:
    """Documents of local files, resumable at (file, byte offset)."""

    def __init__(self, files: list[Path], render: Render | None):
        self.files, self.render = files, render
        self.file, self.offset, self._fh = 0, 0, None

    def state_dict(self) -> dict:
        return {"file": self.file, "offset": self.offset}

    def load_state_dict(self, s: dict) -> None:
        self.close()
        self.file, self.offset = s["file"], s["offset"]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def next_doc(self) -> str | None:
        """The next non-empty document, or None where a pass over the source ends (the next
        call starts the next pass)."""
        while self.file < len(self.files):
            path = self.files[self.file]
            if self._fh is None:
                self._fh = path.open("rb")
                self._fh.seek(self.offset)
            where = f"{path} at byte {self.offset}"
            raw = self._fh.readline() if path.suffix == ".jsonl" else self._piece()
            if not raw:
                self.close()
                self.file, self.offset = self.file + 1, 0
                continue
            self.offset += len(raw)
            text = decode_text(raw, where, bom=self.offset == len(raw))
            if path.suffix == ".jsonl":
                if not text.strip():
                    continue
                try:
                    text = record_text(json.loads(text), where, self.render)
                except json.JSONDecodeError as e:
                    raise EdgeDistillError(f"{where}: not valid JSON ({e.msg}).",
                                           "write one JSON object per line") from None
            if text.strip():
                return text
        self.close()
        self.file, self.offset = 0, 0
        return None

    def _piece(self) -> bytes:
        raw = self._fh.read(PIECE)
        if len(raw) < PIECE:
            return raw
        cut = raw.rfind(b"\n\n")
        if cut < PIECE // 2:
            cut = raw.rfind(b"\n")
        if cut > 0:
            cut += 1
        else:  # one long line: cut before a UTF-8 continuation byte
            cut = len(raw)
            while cut > len(raw) - 4 and raw[cut - 1] & 0xC0 == 0x80:
                cut -= 1
        self._fh.seek(self.offset + cut)
        return raw[:cut]


class RowReader:
    """Rows of a ``datasets`` IterableDataset, resumable through its own state_dict."""

    def __init__(self, ds, render: Render | None, where: str):
        self.ds, self.render, self.where = ds, render, where
        self._start, self._it, self.rows = ds.state_dict(), None, 0

    def state_dict(self) -> dict:
        return {"rows": self.rows, "dataset": self.ds.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.ds.load_state_dict(s["dataset"])
        self.rows, self._it = s["rows"], None

    def next_doc(self) -> str | None:
        while True:
            if self._it is None:
                self._it = iter(self.ds)
            try:
                row = next(self._it)
            except StopIteration:
                self.ds.load_state_dict(self._start)  # the next pass from the first row
                self._it, self.rows = None, 0
                return None
            self.rows += 1
            text = record_text(row, f"{self.where} row {self.rows}", self.render)
            if text.strip():
                return text


def open_reader(data: str, render: Render | None):
    """A reader of ``data``'s documents (see the module docstring); one-line errors for a
    source that is missing or holds nothing streamable."""
    if is_hub_dataset(data):
        parts = data[len(HUB_PREFIX):].strip("/").split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise EdgeDistillError(f"--data {data}: not a hub dataset address.",
                                   "write hf://datasets/ORG/NAME or hf://datasets/ORG/NAME/CONFIG")
        from datasets import load_dataset

        try:
            ds = load_dataset("/".join(parts[:2]), parts[2] if len(parts) == 3 else None,
                              split="train", streaming=True)
        except Exception as e:  # offline, gated, missing: datasets' own message
            raise EdgeDistillError(f"--data {data}: the dataset cannot be streamed "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).",
                                   "check the name and your network (gated datasets need "
                                   "HF_TOKEN), or stream a local copy") from None
        return RowReader(ds, render, data)
    path = Path(data)
    if not path.exists():
        raise EdgeDistillError(f"data {path} does not exist.",
                               "pass a text file, a .jsonl file, a folder of them, or "
                               "hf://datasets/ORG/NAME")
    if path.is_dir() and (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        return RowReader(ds.to_iterable_dataset(), render, str(path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"))
    elif path.suffix == ".json":
        raise EdgeDistillError(f"--stream reads .jsonl one record at a time; {path} is one "
                               "JSON document.", "write it as JSONL, or drop --stream")
    else:
        files = [path]
    if not files:
        raise EdgeDistillError(f"data {path} holds no text files ({', '.join(TEXT_SUFFIXES)}, "
                               ".jsonl).", "pass a folder of text or .jsonl files")
    return FileReader(files, render)


def source_id(data: str) -> list:
    """What identifies a stream's source for a run's fingerprint, without reading it: the
    address, or each file's path, size and modification time."""
    if is_hub_dataset(data):
        return [data]
    path = Path(data)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


class BlockStream:
    """Blocks of ``seq_len`` tokens drawn from a reader's trained documents (module
    docstring). ``stream[positions]`` returns the blocks at those positions, read in order:
    a position already passed cannot be read again."""

    def __init__(self, reader, tok, seq_len: int, seed: int, buffer: int = 256,
                 fraction: float = 0.05):
        self.reader, self.tok, self.seq_len, self.fraction = reader, tok, seq_len, fraction
        self.eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.size, self.rng = buffer, random.Random(seed)
        self.buffer: list[list[int]] = []
        self.pending: list[int] = []
        self.position = self.passes = self.documents = 0

    def _tokens(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids + ([self.eos] if self.eos is not None else [])

    def validation(self, blocks: int, max_documents: int = 200_000) -> torch.Tensor:
        """(n, seq_len): up to ``blocks`` blocks of the first held-out documents, from a pass
        of its own (the reader is then set back to where it was). The documents are kept in
        ``heldout``."""
        start = self.reader.state_dict()
        self.reader.load_state_dict(_first(self.reader))
        ids: list[int] = []
        seen, self.heldout = 0, []
        while len(ids) < blocks * self.seq_len and seen < max_documents:
            doc = self.reader.next_doc()
            if doc is None:
                break
            seen += 1
            if is_holdout(doc, self.fraction):
                ids.extend(self._tokens(doc))
                self.heldout.append(doc)
        self.reader.load_state_dict(start)
        n = min(blocks, len(ids) // self.seq_len)
        if n == 0:
            raise EdgeDistillError(
                f"--stream holds documents out by a hash of their text ({self.fraction:.0%}); "
                f"of the first {seen} documents none (or under {self.seq_len} tokens) was held "
                "out.", "stream more documents (smaller files, or more JSONL records), or drop "
                "--stream: data that fits in memory is split without it")
        return torch.tensor(ids[: n * self.seq_len], dtype=torch.long).view(n, self.seq_len)

    def _next_block(self) -> list[int]:
        while len(self.buffer) < self.size:
            trained = 0
            while len(self.pending) < self.seq_len:
                doc = self.reader.next_doc()
                if doc is None:
                    if not trained and not self.documents:
                        raise EdgeDistillError("--stream: every document of the data is held "
                                               "out; none is left to train on.",
                                               "stream more documents")
                    self.passes += 1
                    continue
                if is_holdout(doc, self.fraction):
                    continue
                trained += 1
                self.documents += 1
                self.pending.extend(self._tokens(doc))
            self.buffer.append(self.pending[: self.seq_len])
            del self.pending[: self.seq_len]
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        self.position += 1
        return self.buffer.pop()

    def __getitem__(self, positions) -> torch.Tensor:
        out = []
        for p in (positions.tolist() if torch.is_tensor(positions) else positions):
            if p < self.position:
                raise RuntimeError(f"stream position {p} was already read (at {self.position})")
            while self.position < p:  # other ranks' blocks
                self._next_block()
            out.append(self._next_block())
        return torch.tensor(out, dtype=torch.long)

    def sample(self, n: int) -> torch.Tensor:
        """The next ``n`` blocks (for calibration: call on a stream of its own)."""
        return self[list(range(self.position, self.position + n))]

    def state_dict(self) -> dict:
        return {"reader": self.reader.state_dict(), "pending": list(self.pending),
                "buffer": [list(b) for b in self.buffer], "rng": self.rng.getstate(),
                "position": self.position, "passes": self.passes,
                "documents": self.documents}

    def load_state_dict(self, s: dict) -> None:
        self.reader.load_state_dict(s["reader"])
        self.pending, self.buffer = list(s["pending"]), [list(b) for b in s["buffer"]]
        version, inner, gauss = s["rng"]  # tuples, or lists after a JSON round trip
        self.rng.setstate((version, tuple(inner), gauss))
        self.position, self.passes, self.documents = s["position"], s["passes"], s["documents"]

    def describe(self) -> dict:
        return {"blocks_read": self.position, "documents_trained": self.documents,
                "passes_completed": self.passes}


def _first(reader) -> dict:
    """The reader's state at its source's first document."""
    if isinstance(reader, FileReader):
        return {"file": 0, "offset": 0}
    return {"rows": 0, "dataset": reader._start}
