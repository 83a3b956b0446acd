"""Text, one module for every stage: the default corpora that ship with Python, the user's
files and datasets read into texts, chat rendering, and the held-out splits that distill,
export and bench share.

Default corpora, deterministic, from the standard library of the running interpreter and the
text the package ships:

- :func:`default_sentences` (sentence embedders): :func:`stdlib_sentences`, English prose from
  the docstrings of the standard library, extracted with ``ast``, split into sentences and
  deduplicated (a quarter of them); then the bundled general English and Wikipedia
  sentences (:mod:`edgedistill.english`);
- :func:`stdlib_source`: Python source files as text (for causal LMs: code and comments).

The standard library's files are sorted by module path so the same interpreter gives the same
text, and :func:`split_holdout` takes a fixed share out for evaluation by a stable hash, not
by order.

The user's text (:func:`load_texts`): plain text files, JSONL, a JSON list, a folder of text
and JSONL files, or a ``datasets`` folder saved with ``save_to_disk``. A record (a JSONL line,
a list item, a dataset row) is one of the forms distillation and fine-tuning data come in
(TRL's standard and conversational forms):

- ``{"text": "..."}``;
- ``{"messages": [{"role": "user", "content": "..."}, ...]}``: a conversation, rendered with
  the teacher's chat template, so the student learns on what the deployed model will read
  (contents joined by blank lines where the tokenizer has no template);
- ``{"prompt": "...", "completion": "..."}``: the two joined;
- ShareGPT's ``{"conversations": [{"from": "human", "value": "..."}, ...]}``, as messages."""
from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Callable

from edgedistill.english import SENT_END, general_sentences, split_sentences, wiki_sentences
from edgedistill.errors import EdgeDistillError

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
              "__pycache__", "tkinter", "pydoc_data", "encodings"}


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
                for sent in SENT_END.split(para):
                    s = _clean_sentence(sent)
                    if s and s.lower() not in seen:
                        seen.add(s.lower())
                        out.append(s)
    return tuple(out)


DOCSTRING_SHARE = 0.25
"""The share of the docstrings' sentences that sentence encoders train on by default (chosen
by the stable hash, so every held-out one is among them). Measured on the demo
(benchmarks/results/demo_minilm.json, ``sources``): all of them, beside the general English
and Wikipedia, cost 0.007 cosine on held-out news and bought 0.031 on held-out docstrings;
the default text is for the sentences users embed, not for code documentation."""


def default_sentences() -> tuple[str, ...]:
    """The sentence encoders' default text: a quarter of the standard library's docstrings
    (:data:`DOCSTRING_SHARE`), the bundled general English the small LM wrote, and the
    bundled Wikipedia sentences (:mod:`edgedistill.english`)."""
    docs = tuple(s for s in stdlib_sentences() if is_holdout(s, DOCSTRING_SHARE))
    return tuple(dict.fromkeys(docs + general_sentences() + wiki_sentences()))


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


def spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced, so that every source of a list made of
    several, one after another, is sampled."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def split_holdout(items, fraction: float = 0.05) -> tuple[list, list]:
    """(train, held_out) by :func:`is_holdout`."""
    train, held = [], []
    for it in items:
        (held if is_holdout(it, fraction) else train).append(it)
    return train, held


# -- the user's text ----------------------------------------------------------------------
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
FORMS = ('{"text": "..."}, {"messages": [{"role": "user", "content": "..."}, ...]}, '
         '{"prompt": "...", "completion": "..."} or {"prompt": "..."} (the teacher answers)')

_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
Render = Callable[[list], str]
"""A conversation (list of {"role", "content"}) -> the text a model reads."""


def _content(c) -> str:
    """A message's content: a string, or a list of parts whose text parts are kept."""
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c if isinstance(c, str) else ""


def plain_render(messages: list) -> str:
    """A conversation without a chat template: its contents, joined by blank lines."""
    return "\n\n".join(_content(m.get("content")) for m in messages)


def chat_renderer(tok) -> Render:
    """Render conversations with ``tok``'s chat template, or :func:`plain_render` if it has
    none (a base model's tokenizer, an encoder's)."""
    if not getattr(tok, "chat_template", None):
        return plain_render
    return lambda messages: tok.apply_chat_template(messages, tokenize=False)


def record_text(rec, where: str, render: Render | None = None) -> str:
    """The text of one JSONL record or dataset row in one of :data:`FORMS`."""
    if isinstance(rec, dict):
        if isinstance(rec.get("text"), str):
            return rec["text"]
        msgs = _messages(rec)
        if msgs is not None:
            try:
                return (render or plain_render)(msgs)
            except Exception as e:  # jinja's TemplateError: roles out of order, and the like
                raise EdgeDistillError(
                    f"{where}: the teacher's chat template refused this conversation "
                    f"({type(e).__name__}: {str(e)[:200]}).",
                    "fix the conversation (roles in the order the template expects), or write "
                    'it as {"text": "..."}') from None
        if isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str):
            return rec["prompt"] + rec["completion"]
        if isinstance(rec.get("prompt"), str):  # a prompt alone: its text (held-out text)
            return rec["prompt"]
    raise EdgeDistillError(f"{where}: no string field 'text', no 'messages' (or ShareGPT "
                           "'conversations') list and no 'prompt'/'completion' pair.",
                           f"write lines like {FORMS}")


def _jsonl_records(path: Path) -> list[tuple[dict, str]]:
    """(record, where) of each non-empty line of a JSONL file."""
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((json.loads(line), f"{path}:{n}"))
            except json.JSONDecodeError as e:
                raise EdgeDistillError(f"{path}:{n}: not valid JSON ({e.msg}).",
                                       "write one JSON object per line") from None
    return out


def _jsonl(path: Path, render: Render | None) -> list[str]:
    return [record_text(rec, where, render) for rec, where in _jsonl_records(path)]


def _messages(rec: dict) -> list | None:
    """A record's conversation ('messages', or ShareGPT 'conversations'), contents as text."""
    msgs = rec.get("messages")
    if msgs is None and isinstance(rec.get("conversations"), list):
        msgs = [{"role": _SHAREGPT_ROLES.get(m.get("from"), m.get("from")),
                 "content": m.get("value")} if isinstance(m, dict) else m
                for m in rec["conversations"]]
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "content" in m
                                               for m in msgs):
        return [{**m, "content": _content(m["content"])} for m in msgs]
    return None


def prompt_of(rec) -> str | list | None:
    """The prompt of a prompt-only record: a ``{"prompt": ...}`` without a completion (its
    text), or a conversation ending with a user turn (its messages); None otherwise."""
    if not isinstance(rec, dict) or isinstance(rec.get("text"), str):
        return None
    msgs = _messages(rec)
    if msgs is not None:
        return msgs if msgs[-1].get("role") == "user" else None
    if isinstance(rec.get("prompt"), str) and "completion" not in rec:
        return rec["prompt"]
    return None


PROMPT_KEYS = ("prompt", "messages", "conversations")


def prompt_fields(rec: dict) -> dict:
    """A prompt record's other fields with a plain value (e.g. a checked ``answer``), which
    ``--keep-if`` may name as ``{answer}``."""
    return {k: v for k, v in rec.items()
            if k not in PROMPT_KEYS and isinstance(v, (str, int, float))}


def load_prompts(path: str | Path, fields: bool = False):
    """Prompts, when every record of ``path`` (.jsonl, .json, or a folder of them) is a
    prompt without a response (:func:`prompt_of`): the teacher will write the responses.
    None when the data is text or complete records; EdgeDistillError when it mixes the two.
    ``fields``: return (prompts, each record's :func:`prompt_fields`) instead."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json"))
        if not files or any(p.suffix in TEXT_SUFFIXES for p in path.rglob("*")):
            return None
    elif path.suffix in (".jsonl", ".json") and path.is_file():
        files = [path]
    else:
        return None
    recs: list[tuple[dict, str]] = []
    for f in files:
        if f.suffix == ".jsonl":
            recs += _jsonl_records(f)
        else:
            try:
                doc = json.loads(_text_file(f))
            except json.JSONDecodeError:
                return None  # load_texts says what is wrong with it
            if not isinstance(doc, list):
                return None
            recs += [(r, f"{f} record {i}") for i, r in enumerate(doc)]
    prompts = [prompt_of(r) for r, _ in recs]
    if not recs or all(p is None for p in prompts):
        return None
    if any(p is None for p in prompts):
        where = next(w for (r, w), p in zip(recs, prompts) if p is None)
        raise EdgeDistillError(
            f"the data mixes prompts (records with no response) and complete records "
            f"({sum(p is not None for p in prompts)} prompts; {where} is complete).",
            "pass prompts only (the teacher writes the responses), or complete records only")
    if fields:
        return prompts, [prompt_fields(r) for r, _ in recs]
    return prompts


def decode_text(raw: bytes, where: str, bom: bool = True) -> str:
    """``raw`` as UTF-8 (``bom``: a leading byte-order mark dropped). A few undecodable bytes
    (a stray Latin-1 character) are replaced; data that is mostly not UTF-8 text (binary,
    compressed, UTF-16) is refused rather than trained and verified on as noise."""
    text = raw.decode("utf-8-sig" if bom else "utf-8", errors="replace")
    bad = text.count("\ufffd") + text.count("\x00")
    if text and bad > 0.01 * len(text):
        raise EdgeDistillError(f"data {where} is not UTF-8 text ({bad / len(text):.0%} of it "
                               "does not decode, or is NUL bytes).",
                               "pass plain UTF-8 text (convert it, or decompress it first), or "
                               ".jsonl with a 'text' field")
    return text


def _text_file(path: Path) -> str:
    """A text file's contents (:func:`decode_text`)."""
    return decode_text(path.read_bytes(), str(path))


def load_texts(path: str | Path, render: Render | None = None) -> list[str]:
    """Documents from ``path``; raises EdgeDistillError when there is nothing usable.
    ``render``: how conversations become text (:func:`chat_renderer` of the teacher's
    tokenizer; default :func:`plain_render`)."""
    path = Path(path)
    if not path.exists():
        raise EdgeDistillError(f"data {path} does not exist.",
                               "pass a text file, a .jsonl file, or a folder of them")
    if path.is_dir() and (path / "dataset_info.json").is_file():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # DatasetDict: take the train split, else the first
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        if not {"text", "messages", "prompt", "conversations"} & set(ds.column_names):
            raise EdgeDistillError(f"dataset {path} has no 'text', 'messages', 'prompt' or "
                                   f"'conversations' column (columns: {ds.column_names}).",
                                   "save a dataset with one of them")
        if "text" in ds.column_names:
            texts = [t for t in ds["text"] if isinstance(t, str)]
        else:
            texts = [record_text(row, f"{path} row {i}", render) for i, row in enumerate(ds)]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"))
        texts = [t for f in files for t in load_texts(f, render)]
    elif path.suffix == ".jsonl":
        texts = _jsonl(path, render)
    elif path.suffix == ".json":
        try:
            recs = json.loads(_text_file(path))
        except json.JSONDecodeError as e:
            raise EdgeDistillError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).",
                                   "pass a JSON list of records, or JSONL") from None
        if not isinstance(recs, list):
            raise EdgeDistillError(f"{path}: a JSON {type(recs).__name__}, not a list of "
                                   "records.", f"pass a list of records like {FORMS}")
        texts = [record_text(r, f"{path} record {i}", render) for i, r in enumerate(recs)]
    else:
        texts = [_text_file(path)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise EdgeDistillError(f"data {path} holds no text.",
                               "pass a non-empty text file, .jsonl, or folder")
    return texts


# -- causal LMs: packed blocks ---------------------------------------------------------------

def split_documents(texts: list[str], val_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(train, validation) documents. A document longer than ``val_fraction`` of all the
    characters is cut: its last ``val_fraction`` is held out (held out whole, it alone would
    take more than the held-out share: a folder of one large text file and many chat records
    would otherwise lose the file to validation). Of the others, several: a stable hash picks
    the held-out ones (at least one); one: its last ``val_fraction`` of characters."""
    budget = val_fraction * sum(len(t) for t in texts)
    train, val, small = [], [], []
    for t in texts:
        if len(t) > budget or len(texts) == 1:
            cut = int(len(t) * (1 - val_fraction))
            train.append(t[:cut])
            val.append(t[cut:])
        else:
            small.append(t)
    if len(small) >= 20:
        tr, va = split_holdout(small, val_fraction)
        if not (va and tr):
            k = max(1, round(len(small) * val_fraction))
            tr, va = small[:-k], small[-k:]
    elif len(small) > 1 or (small and not val):
        k = max(1, round(len(small) * val_fraction))
        tr, va = small[:-k], small[-k:]
    else:
        tr, va = small, []
    return train + tr, val + va


def pack(texts: list[str], tok, seq_len: int):
    """Token blocks (N, seq_len): documents tokenized, joined with EOS, cut into blocks."""
    import torch

    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise EdgeDistillError(f"the data has {len(ids)} tokens, fewer than one block of "
                               f"--seq-len {seq_len}.", "pass more text, or a smaller --seq-len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def sentences_of(texts: list[str]) -> list[str]:
    """Encoder data: one sentence (or line) per item, deduplicated, order kept."""
    
    return list(dict.fromkeys(s for t in texts for s in split_sentences(t)))


# -- held-out items for verification and bench --------------------------------------------------
def eval_data(tok, encoder: bool, data: str | None = None, *, sequences: int = 8,
              seq_len: int = 128, sentences: int = 256):
    """(held-out items, calibration items) for export's checks and bench's quality: token-id
    sequences of ``seq_len`` for causal LMs (at most ``sequences``), sentences for encoders
    (at most ``sentences``; with ``tok``, only those of at most ``seq_len`` tokens). The
    user's ``data`` if given, else standard-library text; raises EdgeDistillError when it is
    too short to verify with."""
    if encoder:
        if data:
            lines = [ln.strip() for t in load_texts(data, chat_renderer(tok))
                     for ln in t.splitlines()]
            items = list(dict.fromkeys(ln for ln in lines if len(ln) > 3))
        else:
            items = list(default_sentences())
        train, held = split_holdout(items)
        held = held or items[-sentences:]
        # only sentences every runtime sees whole: torch and onnxruntime truncate at seq_len
        # tokens, llama.cpp embeds all of a text
        if tok is not None:
            fits = [len(ids) <= seq_len for ids in tok(held)["input_ids"]]
            held = [s for s, ok in zip(held, fits) if ok] or held
        return spread(held, sentences), train[:64]
    text = ("\n\n".join(load_texts(data, chat_renderer(tok))) if data
            else stdlib_source(400_000))
    ids = tok(text)["input_ids"]
    L, n = seq_len, sequences
    chunks = [ids[i:i + L] for i in range(0, len(ids) - L + 1, L)]
    if len(chunks) < 2:
        raise EdgeDistillError(f"the data has {len(ids)} tokens; verification needs at least "
                               f"{2 * L}.", "pass more text with --data")
    held = chunks[-n:] if len(chunks) > n else chunks[len(chunks) // 2:]
    calib = chunks[: max(1, min(16, len(chunks) - len(held)))]
    return held, calib
