"""What ``--teacher-dtype auto`` should pick: the frozen teacher's forward pass in fp32, bf16
and fp16, alternated, on this machine's CPU (and on CUDA when there is a GPU).

    .venv/bin/python benchmarks/teacher_dtype.py [--repeats 9]

Two teachers of the shapes edgedistill distils: a 27M llama (hidden 512, 8 layers, vocab
8192; a batch of 8 x 256 tokens, as the causal recipe feeds it) and the bundled MiniLM (a batch
of 32 sentences of 40 tokens). Reports the median forward time per dtype and its ratio to fp32,
and the largest difference of the outputs against fp32 (what the KD target loses). Writes
benchmarks/results/teacher_dtype.json; the last line printed is that JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    import torch
    import transformers

    from edgedistill.machine import machine_info
    from edgedistill.teacher import default_teacher_path

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376,
                                   num_hidden_layers=8, num_attention_heads=8,
                                   num_key_value_heads=4, max_position_embeddings=512)
    models = {
        "llama-27M, 8 x 256 tokens": (lambda: transformers.LlamaForCausalLM(cfg),
                                      {"input_ids": torch.randint(0, 8192, (8, 256))},
                                      lambda o: o.logits),
        "all-MiniLM-L6-v2, 32 x 40 tokens": (
            lambda: transformers.AutoModel.from_pretrained(default_teacher_path()),
            {"input_ids": torch.randint(1000, 20000, (32, 40)),
             "attention_mask": torch.ones(32, 40, dtype=torch.long)},
            lambda o: o.last_hidden_state),
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    rows = []
    for device in devices:
        for name, (make, inputs, out_of) in models.items():
            torch.manual_seed(0)
            base = make().eval().to(device)
            feed = {k: v.to(device) for k, v in inputs.items()}
            copies = {d: make().eval().to(device) for d in dtypes}
            for d, m in copies.items():
                m.load_state_dict(base.state_dict())
                m.to(dtypes[d])
            times: dict[str, list[float]] = {d: [] for d in dtypes}
            with torch.inference_mode():
                ref = out_of(copies["fp32"](**feed)).float()
                diff = {d: float((out_of(m(**feed)).float() - ref).abs().max())
                        for d, m in copies.items()}
                for _ in range(args.repeats):  # alternated: the machine's slow seconds hit all
                    for d, m in copies.items():
                        if device == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        m(**feed)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        times[d].append(time.perf_counter() - t0)
            med = {d: statistics.median(t) for d, t in times.items()}
            for d in dtypes:
                rows.append({"device": device, "model": name, "dtype": d,
                             "median_ms": round(1e3 * med[d], 2),
                             "spread_ms": [round(1e3 * min(times[d]), 2),
                                           round(1e3 * max(times[d]), 2)],
                             "speedup_vs_fp32": round(med["fp32"] / med[d], 2),
                             "max_abs_diff_vs_fp32": diff[d]})
                print(f"{device:5} {name:34} {d:5} {rows[-1]['median_ms']:9.1f} ms "
                      f"{rows[-1]['speedup_vs_fp32']:5.2f}x  max diff {diff[d]:.3g}")
    info = machine_info()
    doc = {"benchmark": "teacher_dtype", "measured": True,
           "measured_on": f"{info.cpu_model} ({torch.get_num_threads()} threads)",
           "cpu_bf16_flags": [f for f in info.flags if "bf16" in f],
           "torch": torch.__version__, "python": platform.python_version(),
           "repeats": args.repeats, "rows": rows}
    out = ROOT / "results" / "teacher_dtype.json"
    out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
