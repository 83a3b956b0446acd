"""HF folder -> GGUF (F32, F16 or BF16), written with gguf-py's GGUFWriter.

Our own converter, after llama.cpp's conventions (tensor names, metadata keys, Q/K
permutation for llama). Families: llama and mistral (llama architecture, permuted Q/K),
qwen2 (QKV bias, no permutation), qwen3 (per-head q/k norms, no permutation), phi3 (fused
attn_qkv and gate|up ffn_up, NEOX rope: no permutation), gemma3_text (norms stored as 1 + w, as
Gemma's RMSNorm multiplies by; sandwich norms; llama.cpp's own sliding-window pattern, checked
against the config), bert, xlm-roberta and roberta (embeddings, with pooling from
sentence-transformers; (xlm-)roberta's position table loses the rows before its first position,
as llama.cpp's bert graph counts positions from 0).
Norms, biases and other 1-D tensors stay F32 whatever the file type, as llama.cpp expects.
The file is written beside its destination and renamed into place.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgedistill.arch import ENCODER_FAMILIES, shape_from_config
from edgedistill.convert.gguf_vocab import build_vocab, check_tokenizer, special_ids, tokenizer_kind
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import quant_names, quant_type
from edgedistill.teacher import sentence_pooling, weight_files

FLOAT_TYPES = tuple(q for q in quant_names("gguf") if quant_type("gguf", q).is_float)
# file type ids (gguf LlamaFileType): ALL_F32, MOSTLY_F16, MOSTLY_BF16
_FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}
_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
         "phi3": "phi3", "gemma3_text": "gemma3", "bert": "bert",
         "xlm-roberta": "bert", "roberta": "bert", "distilbert": "bert"}

# HF name (after the family prefix is removed) -> GGUF name; {i} is the layer index.
_DECODER_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "layers.{i}.self_attn.q_proj": "blk.{i}.attn_q",
    "layers.{i}.self_attn.k_proj": "blk.{i}.attn_k",
    "layers.{i}.self_attn.v_proj": "blk.{i}.attn_v",
    "layers.{i}.self_attn.o_proj": "blk.{i}.attn_output",
    "layers.{i}.self_attn.q_norm": "blk.{i}.attn_q_norm",  # qwen3
    "layers.{i}.self_attn.k_norm": "blk.{i}.attn_k_norm",
    "layers.{i}.self_attn.qkv_proj": "blk.{i}.attn_qkv",  # phi3: q, k, v rows in one
    "layers.{i}.mlp.gate_up_proj": "blk.{i}.ffn_up",  # phi3: gate rows, then up rows
    "layers.{i}.mlp.gate_proj": "blk.{i}.ffn_gate",
    "layers.{i}.mlp.up_proj": "blk.{i}.ffn_up",
    "layers.{i}.mlp.down_proj": "blk.{i}.ffn_down",
    "layers.{i}.input_layernorm": "blk.{i}.attn_norm",
    "layers.{i}.post_attention_layernorm": "blk.{i}.ffn_norm",
}
# gemma3: post_attention_layernorm follows attention (llama's is the FFN's input norm)
_GEMMA3_NAMES = _DECODER_NAMES | {
    "layers.{i}.post_attention_layernorm": "blk.{i}.post_attention_norm",
    "layers.{i}.pre_feedforward_layernorm": "blk.{i}.ffn_norm",
    "layers.{i}.post_feedforward_layernorm": "blk.{i}.post_ffw_norm",
}
_BERT_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
    "encoder.layer.{i}.attention.self.query": "blk.{i}.attn_q",
    "encoder.layer.{i}.attention.self.key": "blk.{i}.attn_k",
    "encoder.layer.{i}.attention.self.value": "blk.{i}.attn_v",
    "encoder.layer.{i}.attention.output.dense": "blk.{i}.attn_output",
    "encoder.layer.{i}.attention.output.LayerNorm": "blk.{i}.attn_output_norm",
    "encoder.layer.{i}.intermediate.dense": "blk.{i}.ffn_up",
    "encoder.layer.{i}.output.dense": "blk.{i}.ffn_down",
    "encoder.layer.{i}.output.LayerNorm": "blk.{i}.layer_output_norm",
}
_DISTILBERT_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
    "transformer.layer.{i}.attention.q_lin": "blk.{i}.attn_q",
    "transformer.layer.{i}.attention.k_lin": "blk.{i}.attn_k",
    "transformer.layer.{i}.attention.v_lin": "blk.{i}.attn_v",
    "transformer.layer.{i}.attention.out_lin": "blk.{i}.attn_output",
    "transformer.layer.{i}.sa_layer_norm": "blk.{i}.attn_output_norm",
    "transformer.layer.{i}.ffn.lin1": "blk.{i}.ffn_up",
    "transformer.layer.{i}.ffn.lin2": "blk.{i}.ffn_down",
    "transformer.layer.{i}.output_layer_norm": "blk.{i}.layer_output_norm",
}
_BERT_DROP = ("embeddings.position_ids", "pooler.", "cls.", "lm_head.",  # MLM heads
              "vocab_transform.", "vocab_layer_norm.", "vocab_projector.")
_ALWAYS_F32 = ("position_embd", "token_types")


@lru_cache(maxsize=None)
def _compiled(family: str) -> list:
    """The name table as regexes: ``{i}`` matches the layer index, and a key matches its own
    ``.weight`` / ``.bias`` too."""
    table = (_DISTILBERT_NAMES if family == "distilbert" else
             _BERT_NAMES if family in ENCODER_FAMILIES else
             _GEMMA3_NAMES if family == "gemma3_text" else _DECODER_NAMES)
    out = []
    for key, value in table.items():
        body = re.escape(key).replace(r"\{i\}", r"(?P<i>\d+)")
        if "(?P<i>" not in body:
            body += "(?P<i>)"
        out.append((re.compile(body + r"(?P<suffix>\.(?:weight|bias))?"), value))
    return out


def gguf_name(hf_name: str, family: str) -> str | None:
    """GGUF tensor name of an HF parameter; None for tensors llama.cpp does not use."""
    name = hf_name
    for prefix in ("model.", "bert.", "roberta.", "distilbert."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if family in ENCODER_FAMILIES:
        if name.startswith(_BERT_DROP):
            return None
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    for pattern, value in _compiled(family):
        m = pattern.fullmatch(name)
        if m:
            layer, suffix = m.group("i"), m.group("suffix") or ""
            return (value.replace("{i}", layer) if layer else value) + suffix
    raise EdgeDistillError(f"tensor {hf_name!r} of this {family} model has no GGUF name.",
                           "the checkpoint has weights edgedistill does not know; export ONNX")


def norm_shift(family: str, gguf_tensor: str) -> float:
    """What the file adds to an HF tensor: 1 for gemma3's norm weights (HF keeps w and
    multiplies by 1 + w; llama.cpp multiplies by the stored weight), else 0."""
    return 1.0 if family == "gemma3_text" and gguf_tensor.endswith("norm.weight") else 0.0


# llama.cpp's gemma3 graph: sliding-window attention on every layer but each 6th, local RoPE
# base 10000, attention scaled by 1/sqrt(head_dim)
_GEMMA3_PATTERN, _GEMMA3_LOCAL_BASE = 6, 10000.0


def _check_gemma3(cfg: dict) -> None:
    """Refuse a gemma3 config whose maths llama.cpp's graph would not reproduce."""
    hd = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    types = cfg.get("layer_types") or []
    want = ["sliding_attention" if (i + 1) % _GEMMA3_PATTERN else "full_attention"
            for i in range(int(cfg["num_hidden_layers"]))]
    problems = []
    if types and list(types) != want:
        problems.append("layer_types other than 5 sliding-window layers to each full one")
    if float(cfg.get("rope_local_base_freq", _GEMMA3_LOCAL_BASE)) != _GEMMA3_LOCAL_BASE:
        problems.append(f"rope_local_base_freq {cfg['rope_local_base_freq']} (llama.cpp: 10000)")
    if float(cfg.get("query_pre_attn_scalar", hd)) != hd:
        problems.append(f"query_pre_attn_scalar {cfg['query_pre_attn_scalar']} != head_dim {hd}")
    if cfg.get("attn_logit_softcapping"):
        problems.append("attention logit soft-capping")
    if cfg.get("use_bidirectional_attention"):
        problems.append("bidirectional attention")
    if problems:
        raise EdgeDistillError("this gemma3 model has " + "; ".join(problems) + ", which "
                               "llama.cpp's gemma3 graph does not compute.",
                               "export this model to ONNX (--formats onnx)")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rope layout -> llama.cpp's interleaved pairs, per head:
    rows (n_head, 2, hd/2) -> (n_head, hd/2, 2). Works for weights (rows, cols) and biases."""
    shape = w.shape
    return (w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def _load_state(model_dir: Path):
    """Yield (name, float32 numpy array) from the folder's weight files (safetensors, or
    PyTorch .bin checkpoints loaded with weights_only)."""
    files = weight_files(model_dir)
    if not files:
        raise EdgeDistillError(f"{model_dir} has no weights (.safetensors or pytorch_model.bin).",
                               "save the model with save_pretrained()")
    for f in files:
        if f.suffix == ".bin":
            import torch

            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            for k, t in state.items():
                yield k, t.float().numpy()
            continue
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                yield k, st.get_tensor(k).float().numpy()


def _write_tensor(w, name: str, arr: np.ndarray, ftype: str) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    keep_f32 = (arr.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
                or name.startswith(_ALWAYS_F32))
    if keep_f32 or ftype == "f32":
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    elif ftype == "f16":
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
    else:
        data = quantize(np.ascontiguousarray(arr, dtype=np.float32), GGMLQuantizationType.BF16)
        w.add_tensor(name, data, raw_dtype=GGMLQuantizationType.BF16)


def export_gguf(model_dir: str | Path, out_path: str | Path, ftype: str = "f16") -> Path:
    """Write the HF model in ``model_dir`` as a GGUF file of type ``ftype`` (f32/f16/bf16).
    Raises EdgeDistillError for an unsupported family, tokenizer or type."""
    import gguf
    from transformers import AutoTokenizer

    if ftype not in FLOAT_TYPES:
        raise EdgeDistillError(f"GGUF export writes {', '.join(FLOAT_TYPES)}, not {ftype!r}.",
                               "quantized types are made from the float file (quantize stage)")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    family, arch = shape.family, _ARCH[shape.family]
    if family == "gemma3_text":
        _check_gemma3(cfg)
    kind = tokenizer_kind(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = build_vocab(model_dir, tok, shape.vocab_size)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        _metadata(w, arch, cfg, shape, model_dir, ftype, vocab.tokens)
        _tokenizer(w, vocab, tok, kind, cfg)
        freqs = rope_freqs(cfg, shape.head_dim) if arch == "llama" else None
        if freqs is not None:
            w.add_tensor("rope_freqs.weight", freqs)
        for name, arr in _load_state(model_dir):
            gname = gguf_name(name, family)
            if gname is None:
                continue
            if arch == "llama" and gname.split(".")[-2] in ("attn_q", "attn_k"):
                heads = shape.num_heads if ".attn_q." in gname else shape.num_kv_heads
                arr = permute_qk(arr, heads)
            if shift := norm_shift(family, gname):
                arr = arr + np.float32(shift)
            if gname == "position_embd.weight":
                arr = arr[shape.position_offset:]
            _write_tensor(w, gname, arr, ftype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


# llama.cpp sets attributes on these tokens of any model whose general.name holds "phi3" or
# "phi-3", and fails to load one whose vocabulary lacks them
_PHI3_NAME, _PHI3_TOKENS = re.compile(r"(?i)phi(-?)3"), {"</s>", "<unk>", "<s>", "<|endoftext|>"}


def gguf_model_name(folder_name: str, tokens) -> str:
    """general.name: the folder's name, with "phi3" spelt "phi_3" where llama.cpp would look
    for Phi-3's special tokens in a vocabulary that lacks them."""
    if _PHI3_NAME.search(folder_name) and not _PHI3_TOKENS <= set(tokens):
        return _PHI3_NAME.sub(lambda m: "phi_3", folder_name)
    return folder_name


def _metadata(w, arch: str, cfg: dict, shape, model_dir: Path, ftype: str, tokens=()) -> None:
    w.add_name(gguf_model_name(model_dir.name, tokens))
    w.add_file_type(_FILE_TYPE[ftype])
    w.add_quantization_version(2)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)) - shape.position_offset)
    w.add_embedding_length(shape.hidden_size)
    w.add_block_count(shape.num_layers)
    w.add_feed_forward_length(shape.intermediate_size)
    w.add_head_count(shape.num_heads)
    if arch == "bert":
        from gguf import PoolingType

        w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
        w.add_causal_attention(False)
        pooling = sentence_pooling(model_dir)
        w.add_pooling_type(PoolingType.CLS if pooling.mode == "cls" else PoolingType.MEAN)
        w.add_token_type_count(shape.type_vocab_size or 1)  # distilbert: none (1, as llama.cpp)
        return
    w.add_head_count_kv(shape.num_kv_heads)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    # phi3 (Phi-4-mini): rope on the first partial_rotary_factor of each head's dimensions
    w.add_rope_dimension_count(int(shape.head_dim * float(cfg.get("partial_rotary_factor")
                                                          or 1.0)))
    if arch in ("phi3", "gemma3"):  # 0: none. llama.cpp runs phi3 without a window anyway
        w.add_sliding_window(int(cfg.get("sliding_window") or 0))
    if arch == "gemma3":
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if shape.head_dim * shape.num_heads != shape.hidden_size or "head_dim" in cfg:
        w.add_key_length(shape.head_dim)
        w.add_value_length(shape.head_dim)
    if arch == "llama":
        w.add_vocab_size(shape.vocab_size)
    _rope_scaling(w, arch, cfg)


# rope_scaling keys each supported type may carry (others change the maths: refused)
_ROPE_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow"},
}


def _rope_config(cfg: dict) -> tuple[str | None, dict]:
    """(scaling type or None, its parameters): ``rope_type`` or the older ``type`` (configs
    may carry both), removed from the parameters."""
    rope = dict(cfg.get("rope_scaling") or {})
    rtype, legacy = rope.pop("rope_type", None), rope.pop("type", None)
    rtype = rtype or legacy
    return (None if rtype == "default" else rtype), rope


def sliding_window(model_dir: str | Path) -> int | None:
    """The attention window, in tokens, of a model whose layers (some or all) attend only to
    the last N positions (Mistral v0.1: 4096; Qwen2 with ``use_sliding_window``), as
    transformers configures it; None for full attention. llama.cpp's llama, qwen2 and qwen3
    graphs have no window, and its phi3 graph turns the window off: a GGUF of such a model
    attends to the whole context. None too for gemma3, whose llama.cpp graph has the window
    (its pattern checked by check_writable)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    if _ARCH.get(cfg.model_type) in _GGUF_WINDOWED:
        return None
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


_GGUF_WINDOWED = {"gemma3"}


def window_note(window: int, context: int) -> str:
    """What a GGUF of a sliding-window model leaves out, for the artifact's note."""
    return (f"the model attends to a sliding window of {window} tokens, which llama.cpp's "
            f"graph for it does not have: the file matches torch only while the context is at "
            f"most {window} tokens" + (f" (the profile allows {context})" if context > window
                                       else ""))


def check_writable(model_dir: str | Path, cfg: dict) -> None:
    """Refuse, before any work, a model the GGUF writer cannot write exactly: its family,
    tokenizer kind and pre-tokenizer, and RoPE scaling. Raises EdgeDistillError."""
    shape = shape_from_config(cfg, str(Path(model_dir) / "config.json"))
    check_tokenizer(Path(model_dir))
    _rope_scaling(None, _ARCH[shape.family], cfg)
    if shape.family == "gemma3_text":
        _check_gemma3(cfg)


def _rope_scaling(w, arch: str, cfg: dict) -> None:
    """RoPE scaling metadata as llama.cpp reads it, written to ``w`` (None: only check).
    llama3's per-frequency factors go in the rope_freqs tensor (see rope_freqs()); linear and
    YaRN are GGUF keys. Anything whose maths llama.cpp would not reproduce is refused rather
    than written approximately."""
    from gguf import RopeScalingType

    rtype, rope = _rope_config(cfg)
    if rtype is None:
        return
    supported = {"linear", "yarn"} | ({"llama3"} if arch == "llama" else set())
    if rope.get("truncate", True) is not False:  # llama.cpp always truncates YaRN's range
        rope.pop("truncate", None)
    extra = set(rope) - _ROPE_KEYS.get(rtype, set())
    if rtype not in supported or extra:
        what = f"rope scaling {rtype!r}" + (f" with {sorted(extra)}" if extra else "")
        raise EdgeDistillError(
            f"{what} is not supported by the GGUF writer for {arch} (supported: "
            f"{', '.join(sorted(supported))}).", "export this model to ONNX (--formats onnx)")
    if w is None:
        return
    factor = float(rope.get("factor", 1.0))
    if rtype == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif rtype == "yarn":
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                            or cfg["max_position_embeddings"]))
        w.add_rope_scaling_yarn_beta_fast(float(rope.get("beta_fast") or 32.0))
        w.add_rope_scaling_yarn_beta_slow(float(rope.get("beta_slow") or 1.0))


def rope_freqs(cfg: dict, head_dim: int) -> np.ndarray | None:
    """llama3 RoPE scaling as llama.cpp's rope_freqs tensor: for each frequency, the factor
    its angle is divided by (HF's inv_freq / llama3-scaled inv_freq). None for other types."""
    rtype, rope = _rope_config(cfg)
    if rtype != "llama3":
        return None
    factor = float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    inv = 1.0 / float(cfg.get("rope_theta", 10000.0)) ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / inv
    smooth = (old / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))
    return out.astype(np.float32)


def _tokenizer(w, vocab, tok, kind: str, cfg: dict) -> None:
    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        w.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.charsmap:
        w.add_precompiled_charsmap(vocab.charsmap)
    ids = special_ids(tok, kind)
    setters = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
               "pad": w.add_pad_token_id, "sep": w.add_sep_token_id, "mask": w.add_mask_token_id}
    for name, setter in setters.items():
        if name in ids:
            setter(ids[name])
    w.add_add_bos_token(ids["add_bos"])
    w.add_add_eos_token(ids["add_eos"])
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
