"""Latency statistics: medians and spreads over repeats, percentiles over tokens, roofline."""
from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize_causal(runs: list[dict], prompt_tokens: int, new_tokens: int) -> dict:
    """runs: [{prefill_s, token_s: [...]}] per repeat -> the reported figures."""
    prefill_tps = [prompt_tokens / r["prefill_s"] for r in runs]
    decode_tps = [len(r["token_s"]) / sum(r["token_s"]) for r in runs]
    ttft = [1e3 * (r["prefill_s"] + r.get("first_sample_s", 0.0)) for r in runs]
    per_token = [1e3 * t for r in runs for t in r["token_s"]]
    gen = [len(r["generate_token_s"]) / sum(r["generate_token_s"]) for r in runs
           if r.get("generate_token_s")]
    extra = {"generate_tokens_per_s": statistics.median(gen)} if gen else {}
    return extra | {
        "prefill_tokens_per_s": statistics.median(prefill_tps),
        "decode_tokens_per_s": statistics.median(decode_tps),
        "ttft_ms": statistics.median(ttft),
        "p50_ms": percentile(per_token, 50),
        "p95_ms": percentile(per_token, 95),
        "spread": {"prefill_tokens_per_s": [min(prefill_tps), max(prefill_tps)],
                   "decode_tokens_per_s": [min(decode_tps), max(decode_tps)]},
        "repeats": len(runs), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
    }


def summarize_encoder(batch_s: list[float], batch: int, seq_len: int) -> dict:
    ms = [1e3 * s for s in batch_s]
    med = statistics.median(ms)
    return {"batch_ms": med, "sentences_per_s": batch / (med / 1e3),
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "spread": {"batch_ms": [min(ms), max(ms)]}, "repeats": len(ms),
            "batch": batch, "seq_len": seq_len}


def roofline_fraction(bytes_per_token: float, decode_tokens_per_s: float,
                      bandwidth_gbps: float) -> float:
    """Share of the memory-bandwidth roofline that decode reaches: bytes read per decoded
    token / time per token / measured bandwidth. Above 1 means caches served part of it."""
    return bytes_per_token * decode_tokens_per_s / (bandwidth_gbps * 1e9)
