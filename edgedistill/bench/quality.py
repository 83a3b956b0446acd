"""Quality of the deployed artifact, from the runtime's own outputs on held-out text (not
the torch model's): perplexity, KL to the teacher and top-1 agreement with the teacher for
causal LMs; cosine to the teacher's embeddings and top-10 neighbour overlap for encoders.
llama.cpp runs with its default F16 KV cache here: this is what users get."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgedistill.runtimes import outputs as rt
from edgedistill.similarity import neighbour_overlap
from edgedistill.verify.parity import _log_softmax


def runtime_logits(path: Path, fmt: str, seqs: list[list[int]], threads: int):

    if fmt == "gguf":
        return rt.gguf_causal_logits(path, seqs, threads)
    if fmt == "onnx":
        return rt.onnx_causal_logits(path, seqs, threads)
    return rt.torch_causal_logits(path, seqs)


def causal_quality(logits: list[np.ndarray], seqs: list[list[int]],
                   teacher_logits: list[np.ndarray]) -> dict:
    """Perplexity on the held-out tokens, and agreement with the teacher's distribution."""
    nll, n, kl, agree = 0.0, 0, 0.0, 0
    for lg, ids, tl in zip(logits, seqs, teacher_logits):
        v = min(lg.shape[-1], tl.shape[-1])
        ls, lt = _log_softmax(lg[:, :v]), _log_softmax(tl[:, :v])
        nxt = np.asarray(ids[1:])
        nll -= float(ls[np.arange(len(nxt)), nxt].sum())
        kl += float((np.exp(lt) * (lt - ls)).sum())
        agree += int((lg[:, :v].argmax(-1) == tl[:, :v].argmax(-1)).sum())
        n += len(nxt)
    tokens = sum(len(x) for x in logits)
    return {"perplexity": math.exp(nll / n), "loss": nll / n, "kl_to_teacher": kl / tokens,
            "top1_agreement": agree / tokens, "tokens": tokens}


def encoder_quality(emb: np.ndarray, teacher_emb: np.ndarray) -> dict:
    a, b = emb.astype(np.float64), teacher_emb.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"cosine_to_teacher": float(cos.mean()), "min_cosine": float(cos.min()),
            "neighbour_overlap": neighbour_overlap(emb, teacher_emb, 10),
            "sentences": int(len(a))}
