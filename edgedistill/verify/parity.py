"""Verification of exported artifacts against the torch model they came from.

Every artifact is run in its own runtime on held-out text and compared with torch:
max abs logit difference, top-1 agreement and KL for causal LMs; cosine of the sentence
embedding for encoders. The limits for every format and quantization live in one table,
:data:`THRESHOLDS`, at two levels:

- ``target``: the quality a file of that kind should reach (the export issue's numbers). A file
  that meets every target is ``passed``.
- ``floor``: the limit below which the file is broken, not merely lossy: a wrong layout, a
  missing bias, a scale off by a factor, a tokenizer that splits text differently. A file that
  misses a floor, or cannot run, is ``failed``.

A file between the two is ``below-target``: it runs and keeps the model, but loses more than
the target allows (small models lose more to the same quantization than large ones: SmolLM2-135M
keeps 96% top-1 under Q8_0, where llama.cpp's own scoreboard has Llama-2-7B at 98.8%). Its
figures and every missed target are reported with it; nothing is passed silently, and
``export --strict`` treats it as a failure.

Float files are held to a relative floor (max abs difference over the largest torch logit),
since rounding error grows with the logits' scale and the model's depth, and to a KL floor,
which any real corruption exceeds by orders of magnitude.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgedistill.records import Verdict


@dataclass(frozen=True)
class Threshold:
    max_abs_diff: float | None = None
    """Largest allowed |logit_torch - logit_artifact| over all held-out tokens."""
    max_rel_diff: float | None = None
    """Largest allowed max abs difference divided by the largest |torch logit|."""
    top1_agreement: float | None = None
    """Smallest allowed share of tokens whose argmax matches torch's."""
    kl: float | None = None
    """Largest allowed mean KL(torch || artifact) per token, nats."""
    cosine: float | None = None
    """Encoders: smallest allowed mean cosine between the sentence embeddings."""


@dataclass(frozen=True)
class Limits:
    target: Threshold
    """Met: the file is 'passed'."""
    floor: Threshold
    """Missed: the file is broken, 'failed'."""


T, L = Threshold, Limits
# (format, quant) -> limits. Float targets: match torch to rounding; quantized targets: keep the
# ranking (top-1) and the distribution (KL). Floors lie beyond every figure of a real 135M model
# (SmolLM2-135M, the most sensitive we have run: benchmarks/results/export_parity_smollm2.json):
# 1.6-3x its top-1 loss, 2.7-11x its KL, 4-19x its relative float error. A corrupted file (a
# scaled tensor, a negated slice, a wrong RoPE: tests/test_export.py) misses them by far; a
# file with a wrong block layout gives top-1 near chance and KL of whole nats.
THRESHOLDS: dict[tuple[str, str], Limits] = {
    ("onnx", "fp32"): L(T(max_abs_diff=1e-4, top1_agreement=0.999),
                        T(max_rel_diff=1e-4, kl=1e-6, top1_agreement=0.995)),
    # fp16 ONNX runs the whole graph in fp16 (the residual stream too): ~0.2 of max abs diff
    # over 1024 tokens on every model run, KL 5e-6 to 1.4e-5, which is 0.55% of SmolLM2's
    # largest logit (43) but 1.01% (27M llama, H200 run) and 1.19% (4.2M llama) of the small
    # models' (17): the relative floor sits 4x beyond the worst; KL and top-1 catch corruption
    ("onnx", "fp16"): L(T(max_abs_diff=5e-2, top1_agreement=0.99),
                        T(max_rel_diff=5e-2, kl=1e-3, top1_agreement=0.97)),
    ("onnx", "int8"): L(T(top1_agreement=0.99, kl=0.02), T(top1_agreement=0.90, kl=0.03)),
    ("onnx", "int4"): L(T(top1_agreement=0.95, kl=0.08), T(top1_agreement=0.70, kl=0.40)),
    ("onnx", "qdq_a8w8"): L(T(top1_agreement=0.90, kl=0.15), T(top1_agreement=0.65, kl=0.6)),
    ("onnx", "qdq_a16w8"): L(T(top1_agreement=0.95, kl=0.05), T(top1_agreement=0.85, kl=0.15)),
    ("onnx", "qdq_a16w4"): L(T(top1_agreement=0.92, kl=0.10), T(top1_agreement=0.70, kl=0.45)),
    ("gguf", "f32"): L(T(max_abs_diff=1e-3, top1_agreement=0.999),
                       T(max_rel_diff=1e-4, kl=1e-6, top1_agreement=0.995)),
    ("gguf", "f16"): L(T(max_abs_diff=2e-2, top1_agreement=0.995),
                       T(max_rel_diff=3e-2, kl=2e-4, top1_agreement=0.98)),
    ("gguf", "bf16"): L(T(max_abs_diff=1.5e-1, top1_agreement=0.98),
                        T(max_rel_diff=6e-2, kl=2e-3, top1_agreement=0.95)),
    ("gguf", "q8_0"): L(T(top1_agreement=0.99, kl=0.01), T(top1_agreement=0.90, kl=0.03)),
    ("gguf", "q6_k"): L(T(top1_agreement=0.98, kl=0.02), T(top1_agreement=0.88, kl=0.05)),
    ("gguf", "q5_k_m"): L(T(top1_agreement=0.97, kl=0.04), T(top1_agreement=0.85, kl=0.10)),
    ("gguf", "q4_k_m"): L(T(top1_agreement=0.95, kl=0.08), T(top1_agreement=0.75, kl=0.25)),
    ("gguf", "q4_0"): L(T(top1_agreement=0.93, kl=0.12), T(top1_agreement=0.65, kl=0.50)),
}
ENCODER_THRESHOLDS: dict[tuple[str, str], Limits] = {
    ("onnx", "fp32"): L(T(cosine=0.99999), T(cosine=0.9999)),
    ("onnx", "fp16"): L(T(cosine=0.999), T(cosine=0.995)),
    ("onnx", "int8"): L(T(cosine=0.98), T(cosine=0.93)),
    ("onnx", "int4"): L(T(cosine=0.97), T(cosine=0.90)),
    ("onnx", "qdq_a8w8"): L(T(cosine=0.95), T(cosine=0.85)),
    ("onnx", "qdq_a16w8"): L(T(cosine=0.97), T(cosine=0.90)),
    ("onnx", "qdq_a16w4"): L(T(cosine=0.95), T(cosine=0.85)),
    ("gguf", "f32"): L(T(cosine=0.9999), T(cosine=0.9995)),
    ("gguf", "f16"): L(T(cosine=0.999), T(cosine=0.995)),
    ("gguf", "bf16"): L(T(cosine=0.995), T(cosine=0.98)),
    ("gguf", "q8_0"): L(T(cosine=0.995), T(cosine=0.98)),
    ("gguf", "q6_k"): L(T(cosine=0.99), T(cosine=0.96)),
    ("gguf", "q5_k_m"): L(T(cosine=0.985), T(cosine=0.95)),
    ("gguf", "q4_k_m"): L(T(cosine=0.97), T(cosine=0.90)),
    ("gguf", "q4_0"): L(T(cosine=0.96), T(cosine=0.88)),
}
del T, L


def threshold_for(fmt: str, quant: str, encoder: bool) -> Limits:
    return (ENCODER_THRESHOLDS if encoder else THRESHOLDS)[(fmt, quant)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


CONFIDENT_MARGIN = 0.1
"""Nats between torch's top-1 and top-2 logits above which a token counts as 'confident'."""


def logit_figures(ref: list[np.ndarray], got: list[np.ndarray],
                  seqs: list[list[int]] | None = None) -> dict:
    """Compare per-sequence logits (T, V) from torch (``ref``) and an artifact (``got``).
    Besides the thresholded figures, ``top1_agreement_confident`` counts only tokens whose
    torch top-2 margin is at least CONFIDENT_MARGIN: flips there are real, flips between
    near-tied tokens are rounding. ``kl_p999``: the 99.9th percentile of the per-token KL;
    with ``seqs`` (the token ids the logits were computed on), ``rms_dp``: the RMS change of
    the probability of each actual next token (llama.cpp's KL-divergence statistics)."""
    diffs, agree, kls, n, conf, conf_agree, scale = [], 0, 0.0, 0, 0, 0, 0.0
    per_token, dps = [], []
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.shape != g.shape:
            raise ValueError(f"logit shapes differ: torch {r.shape} vs artifact {g.shape}")
        diffs.append(float(np.abs(r.astype(np.float64) - g).max()))
        scale = max(scale, float(np.abs(r).max()))
        same = r.argmax(-1) == g.argmax(-1)
        agree += int(same.sum())
        top2 = np.partition(r, -2, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) >= CONFIDENT_MARGIN
        conf += int(sure.sum())
        conf_agree += int((same & sure).sum())
        lr, lg = _log_softmax(r), _log_softmax(g)
        tok_kl = (np.exp(lr) * (lr - lg)).sum(-1)
        per_token.append(tok_kl)
        kls += float(tok_kl.sum())
        n += r.shape[0]
        if seqs is not None:
            nxt = np.asarray(seqs[i][1:r.shape[0]], dtype=np.int64)
            rows = np.arange(len(nxt))
            dps.append(np.exp(lg[rows, nxt]) - np.exp(lr[rows, nxt]))
    out = {"max_abs_diff": max(diffs), "max_rel_diff": max(diffs) / max(scale, 1e-12),
           "max_abs_logit": scale, "top1_agreement": agree / n, "kl": kls / n,
           "kl_p999": float(np.percentile(np.concatenate(per_token), 99.9)),
           "top1_agreement_confident": conf_agree / conf if conf else None,
           "confident_share": conf / n, "tokens": n}
    if dps:
        dp = np.concatenate(dps)
        out["rms_dp"] = float(np.sqrt((dp ** 2).mean())) if len(dp) else 0.0
    return out


def embedding_figures(ref: np.ndarray, got: np.ndarray) -> dict:
    """Compare sentence embeddings (N, H): mean and worst cosine, max abs difference."""
    r, g = ref.astype(np.float64), got.astype(np.float64)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-12)
    return {"cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(r - g).max()), "sentences": int(len(r))}


def _misses(figures: dict, th: Threshold, level: str) -> list[str]:
    """The limits of ``th`` that ``figures`` miss, as sentences tagged with ``level``."""
    def get(key, worst):
        v = figures.get(key)
        return worst if v is None else v

    out = []
    if th.max_abs_diff is not None and (v := get("max_abs_diff", np.inf)) > th.max_abs_diff:
        out.append(f"max abs diff {v:.3g} > {th.max_abs_diff:g}")
    if th.max_rel_diff is not None and (v := get("max_rel_diff", np.inf)) > th.max_rel_diff:
        out.append(f"max abs diff / largest logit {v:.3g} > {th.max_rel_diff:g}")
    if th.top1_agreement is not None and (v := get("top1_agreement", 0)) < th.top1_agreement:
        out.append(f"top-1 agreement {v:.2%} < {th.top1_agreement * 100:g}%")
    if th.kl is not None and (v := get("kl", np.inf)) > th.kl:
        out.append(f"KL {v:.4g} > {th.kl:g}")
    if th.cosine is not None and (v := get("cosine", 0)) < th.cosine:
        out.append(f"cosine {v:.5f} < {th.cosine:g}")
    return [f"{m} ({level})" for m in out]


def judge(figures: dict, limits: Limits) -> Verdict:
    """Apply a row of the table to measured figures."""
    broken = _misses(figures, limits.floor, "floor")
    short = _misses(figures, limits.target, "target")
    status = "failed" if broken else ("below-target" if short else "passed")
    return Verdict(status, figures, broken + short, _limits_dict(limits))


def _limits_dict(limits: Limits) -> dict:
    return {"target": asdict(limits.target), "floor": asdict(limits.floor)}


def failed_to_run(message: str, limits: Limits) -> Verdict:
    return Verdict("failed", {}, [message], _limits_dict(limits), error=message)
