"""Child process that runs fixed-shape QDQ graphs on onnxruntime-qnn's HTP backend.

Usage: ``python -m edgedistill.runtimes.qnn_worker TASK.json``. Ops: ``encoder`` (one graph,
feeds from an .npz file) and ``causal`` (prefill and decode graphs, held-out sequences).
Each graph is compiled with CPU fallback disabled; when that fails, the graph is run once with
fallback allowed to list the ops the HTP refused. With ``context`` in the task, each compiled
graph is also saved as an EPContext model and the run uses that file. Results go to
``result.json`` in the task's workdir, arrays as .npy files beside it. Apart from the caller,
so that a crash in Qualcomm's native libraries is reported rather than fatal.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from edgedistill.runtimes.qnn import (GraphShape, context_options, context_path, coverage,
                                      htp_session, run_causal)


def _compile(path: str, options: dict, feed: dict | None, result: dict, context: bool = False):
    """The strict HTP session for ``path``, or None with the refused ops in ``result``.
    ``feed``: an input for the graph's one-off runs (the coverage run when compiling fails,
    the context check); None: zeros (mask of ones) of the graph's fixed input shapes.

    ``context``: also save the compiled graph as an EPContext model (qnn.context_path), load
    it in a session of its own, check that it gives the compiled graph's outputs, and return
    that session, so the figures are those of the file a phone would load."""

    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    nodes = len(graph.node)
    feed = feed if feed is not None else _zeros_feed(graph)
    ctx = context_path(Path(path))
    tmp = ctx.with_name(f".{ctx.name}.tmp-{os.getpid()}")
    t0 = time.time()
    try:
        sess = htp_session(Path(path), options, config=context_options(tmp) if context else None)
    except Exception as e:  # onnxruntime raises its own types
        tmp.unlink(missing_ok=True)
        cov = coverage(Path(path), options, feed)
        result.setdefault("graphs", {})[path] = {"error": str(e)[:400], "coverage": cov}
        return None
    info = result.setdefault("graphs", {})[path] = {
        "compile_s": round(time.time() - t0, 2),
        "coverage": {"nodes": nodes, "on_htp": nodes, "on_cpu": 0, "unsupported_ops": []}}
    if not context:
        return sess
    try:
        t0 = time.time()
        loaded = htp_session(tmp, options)
        load_s = time.time() - t0
        diff = max(float(np.abs(a - b).max()) for a, b in zip(sess.run(None, feed),
                                                              loaded.run(None, feed)))
        tmp.replace(ctx)
    finally:
        tmp.unlink(missing_ok=True)
    info["context"] = {"file": ctx.name, "bytes": ctx.stat().st_size,
                       "load_s": round(load_s, 3), "max_diff_vs_compiled": diff}
    return loaded


def main(spec_path: str) -> int:
    task = json.loads(Path(spec_path).read_text())
    work = Path(task["workdir"])
    result: dict = {}
    opts = task["options"]
    if task["op"] == "encoder":
        data = np.load(task["feeds"])
        n = int(data["n"])
        feeds = [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")}
                 for i in range(n)]
        sess = _compile(task["path"], opts, feeds[0], result, task.get("context", False))
        if sess is not None:
            emb = np.concatenate([sess.run([task["output"]], f)[0] for f in feeds])
            np.save(work / "out.npy", emb)
            result["out"] = "out.npy"
    elif task["op"] == "causal":

        graphs = [GraphShape(*g) for g in task["graphs"]]
        seqs = task["seqs"]
        sessions = [_compile(p, opts, None, result, task.get("context", False))
                    for p in task["paths"]]
        if all(s is not None for s in sessions):
            pre, dec = run_causal(sessions[0], sessions[1], seqs, task["next"], graphs)
            for i, x in enumerate(pre):
                np.save(work / f"prefill_{i}.npy", x)
                result[f"prefill_{i}"] = f"prefill_{i}.npy"
            np.save(work / "decode.npy", dec)
            result["decode"] = "decode.npy"
    else:
        raise SystemExit(f"unknown op {task['op']!r}")
    (work / "result.json").write_text(json.dumps(result))
    return 0


def _zeros_feed(graph) -> dict:
    """Zeros (a mask of ones) for a fixed-shape graph's inputs: enough for a one-off run."""
    import onnx

    feed = {}
    for i in graph.input:
        t = i.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = np.int64 if t.elem_type == onnx.TensorProto.INT64 else np.float32
        feed[i.name] = (np.ones if i.name == "attention_mask" else np.zeros)(shape, dtype)
    return feed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
