"""Verification of exported artifacts against the torch model they came from.

Every artifact is run in its own runtime on held-out text and compared with torch:
max abs logit difference, top-1 agreement and KL for causal LMs; cosine of the sentence
embedding for encoders. The pass/fail thresholds for every format and quantization live in one
table, :data:`THRESHOLDS`. An artifact that misses one is reported failed, with its figures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Threshold:
    max_abs_diff: float | None = None
    """Largest allowed |logit_torch - logit_artifact| over all held-out tokens."""
    top1_agreement: float | None = None
    """Smallest allowed share of tokens whose argmax matches torch's."""
    kl: float | None = None
    """Largest allowed mean KL(torch || artifact) per token, nats."""
    cosine: float | None = None
    """Encoders: smallest allowed mean cosine between the sentence embeddings."""


# (format, quant) -> thresholds. Float exports must match torch to rounding; quantized ones
# must keep the ranking (top-1) and the distribution (KL).
THRESHOLDS: dict[tuple[str, str], Threshold] = {
    ("onnx", "fp32"): Threshold(max_abs_diff=1e-4, top1_agreement=0.999),
    ("onnx", "fp16"): Threshold(max_abs_diff=5e-2, top1_agreement=0.99),
    ("onnx", "int8"): Threshold(top1_agreement=0.99, kl=0.02),
    ("onnx", "int4"): Threshold(top1_agreement=0.95, kl=0.08),
    ("onnx", "qdq_a8w8"): Threshold(top1_agreement=0.90, kl=0.15),
    ("onnx", "qdq_a16w8"): Threshold(top1_agreement=0.95, kl=0.05),
    ("onnx", "qdq_a16w4"): Threshold(top1_agreement=0.92, kl=0.10),
    ("gguf", "f32"): Threshold(max_abs_diff=1e-3, top1_agreement=0.999),
    ("gguf", "f16"): Threshold(max_abs_diff=2e-2, top1_agreement=0.995),
    ("gguf", "bf16"): Threshold(max_abs_diff=1.5e-1, top1_agreement=0.98),
    ("gguf", "q8_0"): Threshold(top1_agreement=0.99, kl=0.01),
    ("gguf", "q6_k"): Threshold(top1_agreement=0.98, kl=0.02),
    ("gguf", "q5_k_m"): Threshold(top1_agreement=0.97, kl=0.04),
    ("gguf", "q4_k_m"): Threshold(top1_agreement=0.95, kl=0.08),
    ("gguf", "q4_0"): Threshold(top1_agreement=0.93, kl=0.12),
}
ENCODER_THRESHOLDS: dict[tuple[str, str], Threshold] = {
    ("onnx", "fp32"): Threshold(cosine=0.99999),
    ("onnx", "fp16"): Threshold(cosine=0.999),
    ("onnx", "int8"): Threshold(cosine=0.98),
    ("onnx", "int4"): Threshold(cosine=0.97),
    ("onnx", "qdq_a8w8"): Threshold(cosine=0.95),
    ("onnx", "qdq_a16w8"): Threshold(cosine=0.97),
    ("onnx", "qdq_a16w4"): Threshold(cosine=0.95),
    ("gguf", "f32"): Threshold(cosine=0.9999),
    ("gguf", "f16"): Threshold(cosine=0.999),
    ("gguf", "bf16"): Threshold(cosine=0.995),
    ("gguf", "q8_0"): Threshold(cosine=0.995),
    ("gguf", "q6_k"): Threshold(cosine=0.99),
    ("gguf", "q5_k_m"): Threshold(cosine=0.985),
    ("gguf", "q4_k_m"): Threshold(cosine=0.97),
    ("gguf", "q4_0"): Threshold(cosine=0.96),
}


def threshold_for(fmt: str, quant: str, encoder: bool) -> Threshold:
    return (ENCODER_THRESHOLDS if encoder else THRESHOLDS)[(fmt, quant)]


@dataclass
class Verdict:
    """The outcome of checking one artifact."""

    passed: bool
    figures: dict
    failures: list[str] = field(default_factory=list)
    threshold: dict = field(default_factory=dict)
    error: str | None = None
    """Set when the runtime could not run the artifact at all (crash, load failure)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


CONFIDENT_MARGIN = 0.1
"""Nats between torch's top-1 and top-2 logits above which a token counts as 'confident'."""


def logit_figures(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Compare per-sequence logits (T, V) from torch (``ref``) and an artifact (``got``).
    Besides the thresholded figures, ``top1_agreement_confident`` counts only tokens whose
    torch top-2 margin is at least CONFIDENT_MARGIN: flips there are real, flips between
    near-tied tokens are rounding."""
    diffs, agree, kls, n, conf, conf_agree = [], 0, 0.0, 0, 0, 0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise ValueError(f"logit shapes differ: torch {r.shape} vs artifact {g.shape}")
        diffs.append(float(np.abs(r.astype(np.float64) - g).max()))
        same = r.argmax(-1) == g.argmax(-1)
        agree += int(same.sum())
        top2 = np.partition(r, -2, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) >= CONFIDENT_MARGIN
        conf += int(sure.sum())
        conf_agree += int((same & sure).sum())
        lr, lg = _log_softmax(r), _log_softmax(g)
        kls += float((np.exp(lr) * (lr - lg)).sum())
        n += r.shape[0]
    return {"max_abs_diff": max(diffs), "top1_agreement": agree / n, "kl": kls / n,
            "top1_agreement_confident": conf_agree / conf if conf else None,
            "confident_share": conf / n, "tokens": n}


def embedding_figures(ref: np.ndarray, got: np.ndarray) -> dict:
    """Compare sentence embeddings (N, H): mean and worst cosine, max abs difference."""
    r, g = ref.astype(np.float64), got.astype(np.float64)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-12)
    return {"cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(r - g).max()), "sentences": int(len(r))}


def judge(figures: dict, th: Threshold) -> Verdict:
    """Apply a threshold to measured figures."""
    fails = []
    if th.max_abs_diff is not None and figures.get("max_abs_diff", np.inf) > th.max_abs_diff:
        fails.append(f"max abs diff {figures['max_abs_diff']:.3g} > {th.max_abs_diff:g}")
    if th.top1_agreement is not None and figures.get("top1_agreement", 0) < th.top1_agreement:
        fails.append(f"top-1 agreement {figures['top1_agreement']:.2%} < "
                     f"{th.top1_agreement:.0%}")
    if th.kl is not None and figures.get("kl", np.inf) > th.kl:
        fails.append(f"KL {figures['kl']:.4f} > {th.kl:g}")
    if th.cosine is not None and figures.get("cosine", 0) < th.cosine:
        fails.append(f"cosine {figures['cosine']:.5f} < {th.cosine:g}")
    return Verdict(not fails, figures, fails, asdict(th))


def failed_to_run(message: str, th: Threshold) -> Verdict:
    return Verdict(False, {}, [message], asdict(th), error=message)
