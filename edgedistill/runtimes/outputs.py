"""Run a model in each runtime and return what verification compares: logits per token for
causal LMs, sentence embeddings for encoders, token ids for tokenizers.

torch and onnxruntime run in this process. llama.cpp runs in a child process
(:mod:`edgedistill.runtimes.llama_worker`): a segfault there (they happen) becomes an error
message, not a dead pipeline.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgedistill.formats import SENTENCE_EMBEDDING
from edgedistill.runtimes.child import llama_worker
from edgedistill.teacher import Pooling


# -- torch (the reference) --------------------------------------------------------------------

def torch_model(model_dir: Path, encoder: bool):
    """The HF model in float32, in eval mode (AutoModel for encoders)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if encoder else AutoModelForCausalLM
    return cls.from_pretrained(model_dir, dtype=torch.float32).eval()


def torch_causal_logits(model_dir: Path, seqs: list[list[int]], model=None) -> list[np.ndarray]:
    """``model``: run this one (e.g. with other weights) instead of loading ``model_dir``'s."""
    import torch

    model = model or torch_model(model_dir, False)
    out = []
    with torch.inference_mode():
        for ids in seqs:
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
            out.append(logits.float().numpy())
    return out


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """sentence-transformers pooling in numpy: (B, S, H), (B, S) -> (B, H)."""
    if pooling.mode == "cls":
        v = hidden[:, 0]
    else:
        m = mask[..., None].astype(hidden.dtype)
        v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if pooling.normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def torch_sentence_embeddings(model_dir: Path, texts: list[str], pooling: Pooling,
                              max_len: int = 128, batch: int = 32, model=None) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = model or torch_model(model_dir, True)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float().numpy()
            out.append(pool(hidden, enc["attention_mask"].numpy(), pooling))
    return np.concatenate(out)


# -- tokenizers without transformers ----------------------------------------------------------

@functools.lru_cache(maxsize=16)
def tokenizer_spec(folder: str) -> dict | None:
    """What a child process needs to tokenize as transformers' fast tokenizer of ``folder``
    does (``tok(texts, padding=True, truncation=True, max_length=N)``) with the
    ``tokenizers`` library alone: importing transformers takes a bench child about 6 s here,
    more than the work it times. The Rust backend as transformers set it up (its normalizer
    and post-processor included), the padding it applies and the inputs it returns. None
    where there is no fast backend or no pad token (the child then loads transformers)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if not getattr(tok, "is_fast", False) or tok.pad_token is None:
        return None
    return {"json": tok.backend_tokenizer.to_str(), "pad_id": tok.pad_token_id,
            "pad_token": str(tok.pad_token), "pad_type_id": tok.pad_token_type_id,
            "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
            "inputs": list(tok.model_input_names)}


def spec_encoder(spec: dict, max_length: int):
    """texts -> {input name: int64 array (batch, longest)}: :func:`tokenizer_spec`'s
    tokenizer, padded to the batch's longest text and cut at ``max_length`` tokens."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(spec["json"])
    tk.enable_truncation(max_length, direction=spec["truncation_side"])
    tk.enable_padding(direction=spec["padding_side"], pad_id=spec["pad_id"],
                      pad_type_id=spec["pad_type_id"], pad_token=spec["pad_token"])

    def encode(texts: list[str]) -> dict:
        encs = tk.encode_batch(list(texts))
        got = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask
                                                                      for e in encs],
               "token_type_ids": [e.type_ids for e in encs]}
        return {k: np.asarray(v, dtype=np.int64) for k, v in got.items() if k in spec["inputs"]}
    return encode


# -- onnxruntime ------------------------------------------------------------------------------

def ort_session(path: Path, threads: int | None = None, providers=None, spin: bool = True,
                basic: bool = False):
    """An onnxruntime session. ``spin=False`` stops its idle threads from busy-waiting: needed
    when several sessions share a process and take turns (their spinning steals the cores).
    ``basic``: only basic graph optimizations (the NPU graphs, already QNN-fused, trip
    onnxruntime 1.32's extended CPU fusions: "Attempt to replace the existing tensor")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _empty_past(sess, batch: int) -> dict:
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            _, heads, _, dim = i.shape
            feeds[i.name] = np.zeros((batch, heads, 0, dim), _ORT_FLOAT.get(i.type, np.float32))
    return feeds


def onnx_causal_feeds(sess, ids: list[int], past_len: int = 0) -> dict:
    t = len(ids)
    names = {i.name for i in sess.get_inputs()}
    feeds = {"input_ids": np.array([ids], dtype=np.int64)}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((1, past_len + t), dtype=np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(past_len, past_len + t, dtype=np.int64)[None]
    return feeds


def onnx_causal_logits(path: Path, seqs: list[list[int]], threads: int | None = None,
                       sess=None) -> list[np.ndarray]:
    sess = sess or ort_session(path, threads)
    out = []
    for ids in seqs:
        feeds = onnx_causal_feeds(sess, ids) | _empty_past(sess, 1)
        logits = sess.run(["logits"], feeds)[0][0]  # (T, V)
        out.append(logits.astype(np.float32))
    return out


def onnx_greedy(path: Path, prompt: list[int], new_tokens: int,
                threads: int | None = None) -> list[int]:
    """Greedy generation with the KV cache: one prefill call, then one call per token."""
    sess = ort_session(path, threads)
    outputs = [o.name for o in sess.get_outputs()]
    feeds = onnx_causal_feeds(sess, prompt) | _empty_past(sess, 1)
    ids, past_len = list(prompt), 0
    for _ in range(new_tokens):
        res = dict(zip(outputs, sess.run(outputs, feeds)))
        nxt = int(res["logits"][0, -1].argmax())
        past_len = len(ids)
        ids.append(nxt)
        feeds = onnx_causal_feeds(sess, [nxt], past_len)
        for name in outputs:
            if name.startswith("present."):
                feeds[name.replace("present.", "past_key_values.")] = res[name]
    return ids[len(prompt):]


def onnx_sentence_embeddings(path: Path, tokenizer, texts: list[str], max_len: int = 128,
                             batch: int = 32, threads: int | None = None) -> np.ndarray:
    sess = ort_session(path, threads)
    names = {i.name for i in sess.get_inputs()}
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_len,
                        return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        out.append(sess.run([SENTENCE_EMBEDDING], feeds)[0])
    return np.concatenate(out)


# -- llama.cpp, in a child process -----------------------------------------------------------

def gguf_causal_logits(path: Path, seqs: list[list[int]], threads: int,
                       kv_f32: bool = False) -> list[np.ndarray]:
    n_ctx = max(len(s) for s in seqs) + 8
    res = llama_worker({"op": "logits", "model": str(path), "seqs": seqs, "n_ctx": n_ctx,
                        "threads": threads, "kv_f32": kv_f32})
    return [res[f"logits_{i}"] for i in range(len(seqs))]


def gguf_tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    return llama_worker({"op": "tokenize", "model": str(path), "texts": texts})["ids"]


def gguf_sentence_embeddings(path: Path, texts: list[str], threads: int,
                             normalize: bool) -> np.ndarray:
    res = llama_worker({"op": "embed", "model": str(path), "texts": texts, "threads": threads,
                        "normalize": normalize})
    return res["embeddings"]
