"""Reading the user's text: plain text files, JSONL, a JSON list, a folder of text and JSONL
files, or a ``datasets`` folder saved with ``save_to_disk``. A record (a JSONL line, a list
item, a dataset row) is one of the forms distillation and fine-tuning data come in (TRL's
standard and conversational forms):

- ``{"text": "..."}``;
- ``{"messages": [{"role": "user", "content": "..."}, ...]}``: a conversation, rendered with
  the teacher's chat template, so the student learns on what the deployed model will read
  (contents joined by blank lines where the tokenizer has no template);
- ``{"prompt": "...", "completion": "..."}``: the two joined;
- ShareGPT's ``{"conversations": [{"from": "human", "value": "..."}, ...]}``, as messages."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import EdgeDistillError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
FORMS = ('{"text": "..."}, {"messages": [{"role": "user", "content": "..."}, ...]} or '
         '{"prompt": "...", "completion": "..."}')

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
        msgs = rec.get("messages")
        if msgs is None and isinstance(rec.get("conversations"), list):  # ShareGPT
            msgs = [{"role": _SHAREGPT_ROLES.get(m.get("from"), m.get("from")),
                     "content": m.get("value")} if isinstance(m, dict) else m
                    for m in rec["conversations"]]
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "content" in m
                                                   for m in msgs):
            msgs = [{**m, "content": _content(m["content"])} for m in msgs]
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
    raise EdgeDistillError(f"{where}: no string field 'text', no 'messages' (or ShareGPT "
                           "'conversations') list and no 'prompt'/'completion' pair.",
                           f"write lines like {FORMS}")


def _jsonl(path: Path, render: Render | None) -> list[str]:
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
            out.append(record_text(rec, f"{path}:{n}", render))
    return out


def _text_file(path: Path) -> str:
    """A text file's contents as UTF-8. A few undecodable bytes (a stray Latin-1 character)
    are replaced; a file that is mostly not UTF-8 text (binary, compressed, UTF-16) is refused
    rather than trained and verified on as noise."""
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd") + text.count("\x00")
    if text and bad > 0.01 * len(text):
        raise EdgeDistillError(f"data {path} is not UTF-8 text ({bad / len(text):.0%} of it "
                               "does not decode, or is NUL bytes).",
                               "pass plain UTF-8 text (convert it, or decompress it first), or "
                               ".jsonl with a 'text' field")
    return text


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
    """(train, validation) documents. Several documents: a stable hash picks the held-out ones
    (at least one). A single document: its last ``val_fraction`` of characters."""
    from ..corpus import split_holdout

    if len(texts) >= 20:
        train, val = split_holdout(texts, val_fraction)
        if val and train:
            return train, val
    if len(texts) > 1:
        k = max(1, round(len(texts) * val_fraction))
        return texts[:-k], texts[-k:]
    text = texts[0]
    cut = int(len(text) * (1 - val_fraction))
    return [text[:cut]], [text[cut:]]


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
    from ..corpus import _SENT_END

    out = []
    for t in texts:
        for line in t.splitlines():
            out.extend(s.strip() for s in _SENT_END.split(line))
    return list(dict.fromkeys(s for s in out if len(s) >= 3))


def generate_continuations(teacher, tok, blocks, n: int, new_tokens: int, prompt_len: int = 32,
                           seed: int = 0, device="cpu", progress=None):
    """Sequence-level KD data: the teacher samples ``n`` continuations of prompts drawn from
    ``blocks``. Returns (n, prompt_len + new_tokens) token ids."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(blocks), (n,), generator=g)
    out = []
    torch.manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, n, 8):
        prompts = blocks[rows[i:i + 8], :prompt_len].to(device)
        with torch.inference_mode():
            seq = teacher.generate(prompts, attention_mask=torch.ones_like(prompts),
                                   do_sample=True, top_k=50, temperature=1.0,
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   pad_token_id=pad)
        out.append(seq.cpu())
        if progress:
            progress(min(i + 8, n))
    return torch.cat(out)


def cache_topk(teacher, blocks, k: int, path, batch: int = 4, device="cpu", progress=None):
    """Store the teacher's top-``k`` logits of every position of ``blocks`` under ``path``
    (values fp16, ids int32, as .npy memmaps). Returns (values, ids, bytes_per_token)."""
    import numpy as np
    import torch

    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n, t = blocks.shape
    done = path / "complete"
    vals_f, ids_f = path / "values.npy", path / "ids.npy"
    if done.is_file() and json.loads(done.read_text()) == {"n": n, "t": t, "k": k}:
        return (np.load(vals_f, mmap_mode="r"), np.load(ids_f, mmap_mode="r"), k * 6)
    vals = np.lib.format.open_memmap(vals_f, "w+", np.float16, (n, t, k))
    ids = np.lib.format.open_memmap(ids_f, "w+", np.int32, (n, t, k))
    with torch.inference_mode():
        for i in range(0, n, batch):
            logits = teacher(input_ids=blocks[i:i + batch].to(device)).logits.float()
            top = logits.topk(k, dim=-1)
            vals[i:i + batch] = top.values.cpu().numpy().astype(np.float16)
            ids[i:i + batch] = top.indices.cpu().numpy().astype(np.int32)
            if progress:
                progress(min(i + batch, n))
    vals.flush()
    ids.flush()
    done.write_text(json.dumps({"n": n, "t": t, "k": k}))
    return np.load(vals_f, mmap_mode="r"), np.load(ids_f, mmap_mode="r"), k * 6
