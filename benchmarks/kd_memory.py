"""Peak memory and speed of the chunked KD loss against the naive one and plain CE, at a
Qwen2-0.5B-sized head: vocabulary 151,936, hidden 896, 2,048 tokens (one sequence of 2k).

    .venv/bin/python benchmarks/kd_memory.py [--repeats 3]

Each variant runs forward + backward of the loss (from final hidden states through the LM
head) in its own process; peak RSS is the OS's (ru_maxrss), so it counts every allocation.
Writes benchmarks/results/kd_memory.json. Measured on this machine's CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
V, H, T = 151_936, 896, 2048
VARIANTS = ("baseline", "ce", "kd_naive", "kd_chunked")


def run_variant(name: str) -> dict:
    import torch
    import torch.nn.functional as F

    from edgedistill.distill.losses import KDConfig, chunked_kd_loss, kd_loss

    torch.manual_seed(0)
    torch.set_num_threads(2)
    s_w = (torch.randn(V, H) * 0.02).requires_grad_(True)  # student LM head
    t_w = torch.randn(V, H) * 0.02                          # teacher LM head
    s_h = torch.randn(T, H, requires_grad=True)             # (tokens, hidden)
    t_h = torch.randn(T, H)
    labels = torch.randint(0, V, (T,))
    cfg = KDConfig(loss="fkl", temperature=2.0, kd_weight=0.5, chunk_tokens=256)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if name == "ce":  # what plain training does: full logits, fp32 cross-entropy
        loss = F.cross_entropy((s_h @ s_w.T).float(), labels)
    elif name == "kd_naive":
        with torch.no_grad():
            t_logits = t_h @ t_w.T
        loss = kd_loss(s_h @ s_w.T, t_logits, labels, cfg)
    elif name == "kd_chunked":
        loss = chunked_kd_loss(s_h, s_w, t_h, t_w, labels, cfg)
    else:
        loss = (s_h.sum() + s_w.sum()) * 0
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"variant": name, "peak_rss_mb": peak / 1024, "inputs_rss_mb": base / 1024,
            "seconds": seconds, "loss": float(loss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", choices=VARIANTS)
    ap.add_argument("--out", default=str(ROOT / "results" / "kd_memory.json"))
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant)))
        return 0
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--variant", v], check=True,
                                 capture_output=True, text=True).stdout
            runs[v].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(r["peak_rss_mb"] for r in runs["baseline"])
    summary = {}
    for v, rs in runs.items():
        peak = statistics.median(r["peak_rss_mb"] for r in rs)
        summary[v] = {"peak_rss_mb_median": round(peak, 1),
                      "loss_memory_mb": round(peak - base, 1),
                      "seconds_median": round(statistics.median(r["seconds"] for r in rs), 3),
                      "seconds_min_max": [round(min(r["seconds"] for r in rs), 3),
                                          round(max(r["seconds"] for r in rs), 3)]}
    ce = summary["ce"]["loss_memory_mb"]
    for v in summary:
        summary[v]["memory_vs_ce"] = round(summary[v]["loss_memory_mb"] / ce, 3) if ce else None
    print(f"{'variant':<12} {'peak RSS MB':>12} {'loss MB':>9} {'x CE':>6} {'s (median)':>11}")
    for v, s in summary.items():
        print(f"{v:<12} {s['peak_rss_mb_median']:12.0f} {s['loss_memory_mb']:9.0f} "
              f"{s['memory_vs_ce'] or 0:6.2f} {s['seconds_median']:11.3f}")
    doc = {"benchmark": "kd_memory", "measured": True,
           "device": f"{platform.processor() or platform.machine()}, CPU, 2 threads",
           "shape": {"vocab": V, "hidden": H, "tokens": T}, "repeats": args.repeats,
           "loss_memory": "peak RSS of the variant minus the baseline process (same inputs, "
                          "no loss)",
           "variants": summary,
           "goal": {"kd_chunked_memory_vs_ce_at_most": 1.25,
                    "met": summary["kd_chunked"]["memory_vs_ce"] <= 1.25}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({"benchmark": "kd_memory", "goal_met": doc["goal"]["met"],
                      "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
