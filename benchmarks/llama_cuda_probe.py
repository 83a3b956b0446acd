"""Which llama.cpp CUDA runs crash, and where: one GGUF evaluated in a fresh process per case.

    .venv/bin/python benchmarks/llama_cuda_probe.py MODEL.gguf [--out FILE]

On the H200 machine of 2026-11-29, a CUDA build of llama-cpp-python 0.3.36 (CUDA 13.0,
sm_90) was killed by SIGSEGV on every GGUF that export verified or bench timed (prompts and
verification batches of 128 tokens and more; layers offloaded or not), while an 8-token prompt
ran in every configuration tried. This probe separates the causes on the next GPU machine:
prompt length (8 to 512 tokens) x where the layers are (all on the GPU; none, with the GPU
visible, where llama.cpp still sends large batches to it; none, with the GPU hidden) x CUDA
graphs on/off. Each case runs in its own process with llama.cpp's log on; a crash is recorded
with its signal and the last log lines. Writes JSON (default
benchmarks/results/llama_cuda_probe.json) and prints a table. Needs llama-cpp-python (a CUDA
build for the GPU cases; without one they are recorded as CPU runs and say so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

CASE = r"""
import sys, llama_cpp
from llama_cpp import Llama
path, n, ngl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("gpu offload supported:", llama_cpp.llama_supports_gpu_offload(), flush=True)
llm = Llama(path, n_gpu_layers=ngl, n_ctx=n + 16, n_batch=max(n, 8), n_threads=2, verbose=True)
ids = [(7 * i) % max(2, llm.n_vocab() - 2) + 1 for i in range(n)]
llm.eval(ids)
print("prompt ok", flush=True)
llm.eval([ids[0]])
print("token ok", flush=True)
"""

PLACES = {"all layers on the GPU": (-1, None), "no layers offloaded, GPU visible": (0, None),
          "no layers offloaded, GPU hidden": (0, "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a GGUF file")
    ap.add_argument("--lengths", default="8,32,128,512", help="prompt lengths (comma list)")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--out", default=str(ROOT / "results" / "llama_cuda_probe.json"))
    args = ap.parse_args()
    if not Path(args.model).is_file():
        print(f"llama_cuda_probe: {args.model} is not a file. Fix: pass a GGUF file.",
              file=sys.stderr)
        return 2
    rows = []
    for place, (ngl, visible) in PLACES.items():
        for graphs in (True, False):
            for n in (int(x) for x in args.lengths.split(",")):
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                if visible is not None:
                    env["CUDA_VISIBLE_DEVICES"] = visible
                if not graphs:
                    env["GGML_CUDA_DISABLE_GRAPHS"] = "1"
                t0 = time.time()
                try:
                    r = subprocess.run([sys.executable, "-c", CASE, args.model, str(n), str(ngl)],
                                       capture_output=True, text=True, timeout=args.timeout,
                                       env=env)
                    rc, log = r.returncode, (r.stdout + r.stderr).strip().splitlines()
                except subprocess.TimeoutExpired:
                    rc, log = None, [f"did not finish within {args.timeout:.0f} s"]
                out = "ok" if rc == 0 else ("timeout" if rc is None else
                                            f"signal {-rc}" if rc < 0 else f"exit {rc}")
                rows.append({"place": place, "cuda_graphs": graphs, "prompt_tokens": n,
                             "result": out, "seconds": round(time.time() - t0, 1),
                             "reached": [x for x in log if x in ("prompt ok", "token ok")],
                             "last_log": log[-8:] if rc != 0 else []})
                print(f"{place:<34} graphs {'on ' if graphs else 'off'} {n:>4} tokens: {out}",
                      flush=True)
    doc = {"benchmark": "llama_cuda_probe", "model": args.model, "rows": rows,
           "python": sys.version.split()[0]}
    try:
        import llama_cpp
        doc["llama_cpp_python"] = llama_cpp.__version__
        doc["gpu_offload_supported"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as e:  # a broken install is itself the finding
        doc["llama_cpp_python"] = f"import failed: {e}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({"out": args.out, "crashed": sum(r["result"] != "ok" for r in rows),
                      "cases": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
