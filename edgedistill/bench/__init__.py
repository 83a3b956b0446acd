"""Benchmark artifacts in the runtimes they deploy to, and measure their quality there.

    bench(artifacts, teacher_dir, target) -> list of per-artifact records (report.json shape)

Every figure measured here is labelled ``measured`` with this machine and the runtime. The
target profile's figures come from the planner and are labelled ``predicted``; so are this
machine's own predictions, kept beside the measurements to show how far the model is off.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..arch import shape_from_config
from ..predictor import predictor_for
from ..export.runtimes import RuntimeFailure
from ..profiles import DeviceProfile, load_profile
from .runners import RUNTIME_OF_FORMAT, time_artifact
from .timing import roofline_fraction, summarize_causal, summarize_encoder


@dataclass(frozen=True)
class BenchConfig:
    threads: int | None = None
    """Runtime threads; default: the profile's, at most this machine's cores."""
    new_tokens: int = 64
    """Decoded tokens per run (llama-bench's tg)."""
    prompt_tokens: int | None = None
    """Prompt length (pp); default: the profile's, at most 512 and the model's context."""
    repeats: int | None = None
    """Timed runs per artifact (median reported); default ENCODER_REPEATS for encoders, whose
    one batch takes a tenth of a second, and CAUSAL_REPEATS for causal LMs."""
    data: str | None = None
    """Held-out text for quality; default: standard-library text."""
    timeout_s: float = 900


ENCODER_REPEATS, CAUSAL_REPEATS = 15, 3


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def interleaved(artifacts: list[dict]) -> list[int]:
    """Measuring order: each format:quant's student and teacher back to back, so that a
    machine that slows down for a minute does not favour one role over the other."""
    return sorted(range(len(artifacts)), key=lambda i: (
        (artifacts[i]["format"], artifacts[i]["quant"]), i))


def _this_machine(threads: int) -> tuple[str, DeviceProfile]:
    from ..machine import local_profile

    local = local_profile(threads=threads, quick=True)
    return f"{local.device} ({threads} threads, this machine)", local


def bench(artifacts: list[dict], teacher_dir: str | Path, target: str | DeviceProfile,
          config: BenchConfig = BenchConfig(), log=_log) -> list[dict]:
    """Time and score each artifact. ``artifacts``: dicts with role, path, format, quant and
    model_dir (the HF folder it was made from). Returns the artifacts with ``bench``,
    ``quality`` and ``predicted`` added (a failed runtime gives ``bench.error``)."""
    from transformers import AutoTokenizer

    from ..export import ExportConfig, eval_data
    from ..export.onnx import sentence_pooling
    from ..export.runtimes import torch_causal_logits, torch_sentence_embeddings

    prof = target if isinstance(target, DeviceProfile) else load_profile(target)
    teacher_dir = Path(teacher_dir)
    t_shape = shape_from_config(json.loads((teacher_dir / "config.json").read_text()))
    encoder = t_shape.is_encoder
    threads = config.threads or max(1, min(prof.threads, os.cpu_count() or 1))
    device, local = _this_machine(threads)
    log(f"measuring on {device}; memory bandwidth {local.memory.bandwidth_gbps:.1f} GB/s")
    predict_here, predict_there = predictor_for(local), predictor_for(prof)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    held, _ = eval_data(teacher_dir, tok, encoder, ExportConfig(data=config.data,
                                                                 eval_sequences=8,
                                                                 seq_len=128))
    lt = prof.latency_targets
    if encoder:
        pooling = sentence_pooling(teacher_dir)
        teacher_ref = torch_sentence_embeddings(teacher_dir, held, pooling)
        batch_texts = (held * (lt.encoder_batch // max(1, len(held)) + 1))[: lt.encoder_batch]
    else:
        teacher_ref = torch_causal_logits(teacher_dir, held)
        cfg = json.loads((teacher_dir / "config.json").read_text())
        max_pos = min(512, int(cfg.get("max_position_embeddings", 2048)))
        p = min(config.prompt_tokens or lt.prompt_tokens, max_pos - config.new_tokens - 8)
        stream = [t for s in held for t in s]
        prompt = (stream * (p // max(1, len(stream)) + 1))[:p]
    repeats = config.repeats or (ENCODER_REPEATS if encoder else CAUSAL_REPEATS)
    order = interleaved(artifacts)
    enc_raw: dict = {}
    if encoder:
        enc_raw = _time_encoders(artifacts, order, threads, repeats, batch_texts,
                                 lt.encoder_seq_len, config.timeout_s)
    out: list = [None] * len(artifacts)
    for k in order:
        art = artifacts[k]
        rec = dict(art)
        path, fmt, quant = Path(art["path"]), art["format"], art["quant"]
        shape = shape_from_config(json.loads((Path(art["model_dir"]) / "config.json")
                                             .read_text()))
        runtime = RUNTIME_OF_FORMAT[fmt]
        b = {"runtime": runtime, "device": device, "measured": True, "threads": threads}
        try:
            if encoder:
                raw = enc_raw[k]
                if isinstance(raw, RuntimeFailure):
                    raise raw
                b |= summarize_encoder(raw["batch_s"], lt.encoder_batch, lt.encoder_seq_len)
            else:
                raw = time_artifact(path, fmt, threads=threads, prompt=prompt,
                                    new_tokens=config.new_tokens, repeats=repeats,
                                    timeout=config.timeout_s)
                b |= summarize_causal(raw["runs"], len(prompt), config.new_tokens)
            b["peak_rss_mb"] = raw["peak_rss_mb"]
        except RuntimeFailure as e:
            b |= {"error": str(e), "measured": False}
        rec["size_bytes"] = _size(path)
        if fmt != "hf":
            here = predict_here(shape, fmt, quant)
            there = predict_there(shape, fmt, quant)
            rec["predicted"] = {"this_machine": _pred(here, device),
                                "target": _pred(there, f"{prof.name} ({prof.device})")}
            if "decode_tokens_per_s" in b:
                b["roofline_fraction"] = roofline_fraction(
                    here.decode_bytes_per_token, b["decode_tokens_per_s"],
                    local.memory.bandwidth_gbps)
        rec["bench"] = b
        rec["quality"] = _quality(path, fmt, encoder, held, teacher_ref, threads, art, log)
        shown = (f"{b.get('decode_tokens_per_s', 0):.1f} tok/s decode" if not encoder
                 else f"{b.get('batch_ms', 0):.1f} ms/batch")
        log(f"{art['role']:>7} {fmt}:{quant:<8} {runtime:<12} "
            f"{b['error'] if 'error' in b else shown}")
        out[k] = rec
    return out


def _time_encoders(artifacts, order, threads, repeats, texts, seq_len, timeout) -> dict:
    """{index: {"batch_s", "peak_rss_mb"} or RuntimeFailure}. Each artifact runs alone once
    (its own peak RSS, and its failure if it fails); then all of one runtime are timed in one
    process in turn (bench/worker.py, encoder_paired), so student and teacher share the
    machine's good and bad seconds alike."""
    from ..export.runtimes import child

    out: dict = {}
    for k in order:
        art = artifacts[k]
        try:
            out[k] = time_artifact(Path(art["path"]), art["format"], threads=threads, repeats=1,
                                   texts=texts, seq_len=seq_len,
                                   tokenizer=Path(art["model_dir"]), timeout=timeout)
        except RuntimeFailure as e:
            out[k] = e
    by_runtime: dict = {}
    for k in order:
        if not isinstance(out[k], RuntimeFailure):
            by_runtime.setdefault(RUNTIME_OF_FORMAT[artifacts[k]["format"]], []).append(k)
    for runtime, ks in by_runtime.items():
        task = {"kind": "encoder_paired", "runtime": runtime, "threads": threads,
                "repeats": repeats, "texts": texts, "seq_len": seq_len,
                "models": [str(artifacts[k]["path"]) for k in ks],
                "tokenizers": [str(artifacts[k]["model_dir"]) for k in ks]}
        try:
            res = child("edgedistill.bench.worker", task, timeout * len(ks), runtime)
        except RuntimeFailure as e:
            for k in ks:
                out[k] = e
            continue
        for k, times in zip(ks, res["batch_s"]):
            out[k]["batch_s"] = times
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.safetensors"))
    return path.stat().st_size if path.exists() else 0


def _pred(p, where: str) -> dict:
    d = {k: getattr(p, k) for k in ("memory_gb", "decode_tokens_per_s", "prefill_ms",
                                    "prefill_tokens_per_s", "encoder_batch_ms",
                                    "sentences_per_s")}
    return d | {"label": p.label, "device": where, "basis": p.basis}


def _quality(path, fmt, encoder, held, ref, threads, art, log) -> dict:
    """Quality from the runtime's own outputs; an error record when the runtime fails."""
    from ..export import runtimes as rt
    from ..export.onnx import sentence_pooling
    from .quality import causal_quality, encoder_quality, runtime_logits

    try:
        if encoder:
            model_dir = Path(art["model_dir"])
            pooling = sentence_pooling(model_dir)
            if fmt == "gguf":
                emb = rt.gguf_sentence_embeddings(path, held, threads, pooling.normalize)
            elif fmt == "onnx":
                from transformers import AutoTokenizer
                emb = rt.onnx_sentence_embeddings(path, AutoTokenizer.from_pretrained(model_dir),
                                                  held, threads=threads)
            else:
                emb = rt.torch_sentence_embeddings(path, held, pooling)
            return encoder_quality(emb, ref) | {"measured": True}
        return causal_quality(runtime_logits(path, fmt, held, threads), held, ref) \
            | {"measured": True}
    except (RuntimeFailure, OSError, ValueError) as e:
        log(f"quality of {path.name} failed: {e}")
        return {"error": str(e), "measured": False}
