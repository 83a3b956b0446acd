"""What a llama-cpp-python user sees against llama.cpp's bare decode step.

    .venv/bin/python benchmarks/generate_loop.py [--repeats 7] [--tokens 48]

Builds random-weight llama shapes (hidden 256-1024, 2-8 layers, vocabularies of 8k to 152k)
with calibrate's builders, writes each as GGUF F16 and Q4_K_M, and times in one process, in
turn, with 2 threads after a prompt of 128 tokens:

- the step: ``Llama.eval([token])`` and a greedy pick from the logits, what bench's
  ``decode_tokens_per_s`` and calibrate's ``decode`` workload time (llama.cpp's bare decode);
- the loop: ``Llama.generate(prompt)`` with the library's default sampler chain, one yielded
  token after another, what bench's ``generate_tokens_per_s`` and calibrate's ``generate``
  workload time.

Per shape and file: the median per-token time of each (median over the repeats of each run's
median), and the loop's overhead per token. The fit of the overhead against the vocabulary
(a fixed part plus a part per 1,000 entries, Theil-Sen) sets the profiles' ``generate_token_us`` for the
vocabularies people deploy. Writes benchmarks/results/generate_loop.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHAPES = [(256, 2, 8192), (384, 3, 32000), (512, 4, 49152), (768, 6, 32000),
          (1024, 8, 32000), (384, 3, 151936), (512, 2, 8192)]


def _time(llm, prompt, tokens):
    import llama_cpp
    import numpy as np

    nv = llm.n_vocab()

    def pick():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx),
                                         shape=(nv,)).argmax())
    llm.reset()
    llm.eval(prompt)
    nxt, step = pick(), []
    for _ in range(tokens):
        t0 = time.perf_counter()
        llm.eval([nxt])
        nxt = pick()
        step.append(time.perf_counter() - t0)
    loop, t0 = [], time.perf_counter()
    for i, _ in enumerate(llm.generate(prompt, reset=True)):
        t1 = time.perf_counter()
        if i:
            loop.append(t1 - t0)
        t0 = t1
        if i >= tokens:
            break
    return statistics.median(step), statistics.median(loop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "generate_loop.json"))
    args = ap.parse_args()
    from llama_cpp import Llama

    from edgedistill.calibrate import _artifact, _config, _hf_folder
    from edgedistill.machine import machine_info

    work = Path(tempfile.mkdtemp(prefix="generate-loop-"))
    rows = []
    for h, L, vocab in SHAPES:
        cfg = _config("llama", h, L, 2.75, vocab)
        hf = _hf_folder(work, "llama", cfg, f"h{h}-L{L}-v{vocab}")
        for quant in ("f16", "q4_k_m"):
            path = _artifact(work, hf, "gguf", quant, args.threads)
            llm = Llama(str(path), n_ctx=512, n_batch=512, n_threads=args.threads,
                        n_threads_batch=args.threads, verbose=False)
            prompt = [(7 * i + 3) % min(900, vocab - 1) + 1 for i in range(128)]
            _time(llm, prompt, 8)  # warm-up
            runs = [_time(llm, prompt, args.tokens) for _ in range(args.repeats)]
            step = statistics.median(s for s, _ in runs)
            loop = statistics.median(g for _, g in runs)
            rows.append({"hidden": h, "layers": L, "vocab": vocab, "quant": quant,
                         "step_ms": step * 1e3, "loop_ms": loop * 1e3,
                         "step_tokens_per_s": 1 / step, "loop_tokens_per_s": 1 / loop,
                         "overhead_us": (loop - step) * 1e6, "loop_over_step": loop / step})
            print(f"h{h} L{L} vocab {vocab:>6} {quant:<7} step {1 / step:7.0f} tok/s  "
                  f"loop {1 / loop:7.0f} tok/s  overhead {(loop - step) * 1e6:6.0f} us",
                  flush=True)
            del llm
    # overhead = a + b * vocab/1000, Theil-Sen (the median of the pairwise slopes, then the
    # median intercept): one file timed while the machine stalled does not move it
    xs = [r["vocab"] / 1e3 for r in rows]
    ys = [r["overhead_us"] for r in rows]
    b = statistics.median((ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs))
                          for j in range(i + 1, len(xs)) if xs[j] != xs[i])
    a = statistics.median(y - b * x for x, y in zip(xs, ys))
    info = machine_info()
    doc = {"machine": f"{info.cpu_model}, {args.threads} threads", "repeats": args.repeats,
           "tokens": args.tokens, "prompt_tokens": 128,
           "date": time.strftime("%Y-%m-%d"), "rows": rows,
           "overhead_fit_us": {"fixed": a, "per_1k_vocab": b},
           "overhead_at_vocab_us": {str(v): a + b * v / 1e3 for v in (32000, 49152, 151936)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"overhead = {a:.0f} us + {b:.2f} us per 1k vocabulary entries; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
