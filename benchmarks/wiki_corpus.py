"""Build the bundled Wikipedia sentences, once, from the English Wikipedia extract in gensim's
test data.

    .venv/bin/python benchmarks/wiki_corpus.py [--out FILE]

FILE defaults to edgedistill/corpora/wiki_en.txt. The source is
``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` in gensim 4.4.0's
wheel on PyPI (pip-downloaded, checked by SHA-256, never installed): 206 pages of a May 2016
English Wikipedia dump. ``edgedistill.english.wiki_dump_sentences`` keeps the prose sentences
of its articles (markup, templates, tables, lists and headings dropped), deduplicated, in dump
order, one per line. Seconds; the file is committed, and make setup and make test never run
this.
"""
from __future__ import annotations

import argparse
import bz2
import json
import sys
import time
from pathlib import Path

from edgedistill.english import WIKI_FILE, gensim_test_files, wiki_dump_sentences

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "edgedistill/corpora/wiki_en.txt"))
    a = ap.parse_args(argv)
    t = time.time()
    (raw,) = gensim_test_files(WIKI_FILE).values()
    sents = wiki_dump_sentences(bz2.decompress(raw).decode("utf-8"))
    out = Path(a.out)
    part = out.with_name(out.name + ".part")
    part.write_text("\n".join(sents) + "\n", encoding="utf-8")
    part.replace(out)
    print(json.dumps({"sentences": len(sents), "words": sum(len(s.split()) for s in sents),
                      "seconds": round(time.time() - t, 1), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
