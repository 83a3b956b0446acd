"""The reference a file is judged against, and the judging.

    ref = reference(model_dir, items)            # torch runs once per model and item set
    verdict = verify(path, fmt, quant, ref)     # the file runs in its runtime, then the table

A :class:`Reference` holds what torch computes for held-out items (logits per token for causal
LMs, sentence embeddings for encoders); :func:`verify` runs a file on the same items in its
format's runtime and judges the difference with the thresholds table (verify/parity.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.arch import ModelShape, shape_from_config
from edgedistill.formats import quant_type
from edgedistill.records import Verdict
from edgedistill.runtimes import outputs as rt
from edgedistill.runtimes.child import RuntimeFailure
from edgedistill.teacher import Pooling, sentence_pooling
from edgedistill.verify import own
from edgedistill.verify.parity import (embedding_figures, failed_to_run, judge, logit_figures,
                                       threshold_for)


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True, eq=False)
class Reference:
    """What torch computes for one model on one set of items; computed once, shared by every
    file of that model."""

    model_dir: Path
    """The HF folder (the model every file is judged against)."""
    shape: ModelShape
    tok: Any
    """The model's HF tokenizer."""
    items: list
    """Held-out items: token-id sequences (causal LMs) or sentences (encoders)."""
    outputs: Any
    """torch's outputs on them: a (T, V) logits array per sequence, or an (N, D) embedding
    array."""
    pooling: Pooling | None = None
    """Encoders: the sentence pooling the folder declares."""

    @property
    def encoder(self) -> bool:
        return self.shape.is_encoder


def reference(model_dir: str | Path, items: list, tok=None, shape: ModelShape | None = None,
              log=_quiet) -> Reference:
    """Run torch on ``items`` once. ``tok`` and ``shape`` are loaded from ``model_dir`` when
    not given."""
    model_dir = Path(model_dir)
    if shape is None:
        import json

        shape = shape_from_config(json.loads((model_dir / "config.json").read_text()),
                                  str(model_dir / "config.json"))
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
    t0 = time.time()
    if shape.is_encoder:
        pooling = sentence_pooling(model_dir)
        ref = Reference(model_dir, shape, tok, list(items),
                        rt.torch_sentence_embeddings(model_dir, items, pooling), pooling)
    else:
        ref = Reference(model_dir, shape, tok, list(items),
                        rt.torch_causal_logits(model_dir, items))
    log(f"torch reference on {len(items)} held-out "
        f"{'sentences' if shape.is_encoder else 'sequences'} ({time.time() - t0:.1f}s)")
    return ref


def outputs(path: Path, fmt: str, ref: Reference, threads: int):
    """What ``path`` computes on ``ref``'s items, run in its format's runtime."""
    if fmt == "onnx":
        if ref.encoder:
            return rt.onnx_sentence_embeddings(path, ref.tok, ref.items, threads=threads)
        return rt.onnx_causal_logits(path, ref.items, threads)
    if ref.encoder:
        return rt.gguf_sentence_embeddings(path, ref.items, threads, ref.pooling.normalize)
    # F32 KV cache: judge the file, not llama.cpp's default F16 cache (which alone moves
    # logits by ~2e-2; the deployed quality with runtime defaults is the bench stage's).
    return rt.gguf_causal_logits(path, ref.items, threads, kv_f32=True)


def figures(ref: Reference, got) -> dict:
    """The comparison figures of ``got`` (a file's outputs on ref's items) against torch."""
    return embedding_figures(ref.outputs, got) if ref.encoder else logit_figures(ref.outputs, got)


def verify(path: str | Path, fmt: str, quant: str, ref: Reference, threads: int = 2,
           float_graph: str | Path | None = None) -> Verdict:
    """Run ``path`` in its runtime on ``ref``'s items and judge it. Float files, and
    quantizations whose weights cannot be decoded (static QDQ, dynamic int8): against torch,
    with the table's limits for ``fmt:quant``. Quantized GGUF files and MatMulNBits ONNX
    files: against their own decoded weights (verify/own.py); ``float_graph``: the ONNX
    file's float graph (default: ``model.onnx`` beside it). A file the runtime cannot run is
    ``failed`` with ``error`` set."""
    path = Path(path)
    th = threshold_for(fmt, quant, ref.encoder)
    try:
        got = outputs(path, fmt, ref, threads)
        if not quant_type(fmt, quant).is_float:
            if fmt == "gguf":
                return _judge_gguf_own(path, ref, got)
            float_graph = Path(float_graph or path.with_name("model.onnx"))
            if float_graph.is_file() and own.is_nbits(path):
                return _judge_onnx_own(path, float_graph, ref, got, threads)
    except (RuntimeFailure, OSError, ValueError) as e:
        return failed_to_run(f"{type(e).__name__}: {e}", th)
    except Exception as e:  # onnxruntime raises its own exception types on bad models
        return failed_to_run(f"{type(e).__name__}: {str(e)[:300]}", th)
    return judge(figures(ref, got), th)


def _judge(ref: Reference, got, mine, rows: list[dict]) -> Verdict:
    """A quantized file's outputs ``got`` and its own weights' ``mine``: the verdict."""
    if ref.encoder:
        return own.judge_own(True, embedding_figures(ref.outputs, got),
                             embedding_figures(ref.outputs, mine),
                             embedding_figures(mine, got), rows)
    return own.judge_own(False, logit_figures(ref.outputs, got, ref.items),
                         logit_figures(ref.outputs, mine, ref.items),
                         logit_figures(mine, got), rows, own.centred_rel_rms(mine, got))


def _judge_gguf_own(path: Path, ref: Reference, got) -> Verdict:
    """torch with the GGUF file's decoded tensors is the file's own-weights reference."""
    import torch

    model = rt.torch_model(ref.model_dir, ref.encoder)
    state, rows = own.gguf_own_state(path, model, ref.shape)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(torch.from_numpy(state[name]))
    if ref.encoder:
        mine = rt.torch_sentence_embeddings(ref.model_dir, ref.items, ref.pooling, model=model)
    else:
        mine = rt.torch_causal_logits(ref.model_dir, ref.items, model=model)
    return _judge(ref, got, mine, rows)


def _judge_onnx_own(path: Path, float_graph: Path, ref: Reference, got,
                    threads: int) -> Verdict:
    """The float graph with the file's decoded MatMulNBits weights, in onnxruntime, is the
    file's own-weights reference (the float graph itself is verified against torch)."""
    decoded = path.with_name(f".{path.stem}.own.onnx")
    try:
        rows = own.onnx_own_graph(path, float_graph, decoded)
        mine = outputs(decoded, "onnx", ref, threads)
    finally:
        decoded.unlink(missing_ok=True)
    return _judge(ref, got, mine, rows)
