"""Model shapes of the supported families, read from and written to HF ``config.json`` dicts.

A :class:`ModelShape` is what the planner reasons about: sizes only, no weights. Parameter
counts follow the HF implementations exactly (tested against torch models built from the same
configs). Pure Python: imported by the planner.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from edgedistill.errors import TeacherError

CAUSAL_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3_text")
ENCODER_FAMILIES = ("bert", "xlm-roberta", "roberta", "distilbert")
FAMILIES = CAUSAL_FAMILIES + ENCODER_FAMILIES


@dataclass(frozen=True)
class ModelShape:
    family: str
    """HF ``model_type``: llama, qwen2, qwen3, mistral, phi3 (fused q/k/v and gate/up
    projections: the same weights as llama's, in two matrices), gemma3_text (Gemma 3's text
    models: q/k norms, a norm after attention and after the FFN too, embeddings scaled by
    sqrt(hidden), sliding-window layers), bert, xlm-roberta (bert's layers; positions
    counted from the padding id + 1, one token type, a SentencePiece Unigram tokenizer) or
    roberta (xlm-roberta's layers and positions, a byte-level BPE tokenizer) or distilbert
    (bert's layers under other names, no token types, no pooler; its config.json names the
    sizes dim, n_layers, n_heads and hidden_dim)."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool = False
    """Causal LMs: the output head shares the token-embedding matrix."""
    qkv_bias: bool = False
    """Bias on the q/k/v projections (qwen2; llama with attention_bias)."""
    o_bias: bool = False
    """Bias on the output projection (llama with attention_bias)."""
    qk_norm: bool = False
    """RMSNorm over each query and key head, weights of head_dim (qwen3, gemma3_text)."""
    sandwich_norms: bool = False
    """A norm after attention and after the FFN too: 4 per layer, not 2 (gemma3_text)."""
    max_position: int = 0
    """Encoders: rows of the learned position embeddings (xlm-roberta's include the
    padding id + 1 rows before the first position); 0 for rotary models."""
    type_vocab_size: int = 0
    """Encoders: token-type embeddings (bert)."""
    position_offset: int = 0
    """Encoders: position rows before the first position ((xlm-)roberta: padding id + 1)."""

    @property
    def is_encoder(self) -> bool:
        return self.family in ENCODER_FAMILIES

    @property
    def max_tokens(self) -> int | None:
        """Encoders: the longest input, in tokens, their position table allows."""
        return self.max_position - self.position_offset if self.is_encoder else None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    # -- parameter counts ---------------------------------------------------------------------
    def layer_matrix_params(self) -> int:
        """Weights of the 2-D matrices of one transformer layer (what a forward pass streams)."""
        h, f = self.hidden_size, self.intermediate_size
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        mlp = 2 * h * f if self.is_encoder else 3 * h * f  # bert: up/down; llama: gate/up/down
        return attn + mlp

    def layer_vector_params(self) -> int:
        """Norm weights and biases of one layer (kept in float by every quantization)."""
        h, f = self.hidden_size, self.intermediate_size
        if self.is_encoder:
            # q,k,v,o biases + 2 LayerNorms (weight+bias) + up/down biases
            return self.q_dim + 2 * self.kv_dim + h + 4 * h + f + h
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        bias += h if self.o_bias else 0
        qk = 2 * self.head_dim if self.qk_norm else 0
        return (4 if self.sandwich_norms else 2) * h + bias + qk

    def embedding_params(self) -> int:
        h = self.hidden_size
        n = self.vocab_size * h
        if self.is_encoder:
            n += self.max_position * h + self.type_vocab_size * h + 2 * h  # + embedding LN
        return n

    def head_params(self) -> int:
        """Output projection: the LM head (causal, untied) or the pooler (bert)."""
        h = self.hidden_size
        if self.is_encoder:
            return 0 if self.family == "distilbert" else h * h + h
        return 0 if self.tie_embeddings else self.vocab_size * h

    def non_embedding_params(self) -> int:
        return self.num_layers * (self.layer_matrix_params() + self.layer_vector_params())

    def total_params(self) -> int:
        final_norm = 0 if self.is_encoder else self.hidden_size
        return (self.embedding_params() + self.non_embedding_params() + self.head_params()
                + final_norm)

    def output_matrix_params(self) -> int:
        """Weights read to produce logits for one token (LM head, tied or not)."""
        return 0 if self.is_encoder else self.vocab_size * self.hidden_size

    def kv_cache_elements(self, context: int) -> int:
        return 0 if self.is_encoder else 2 * self.num_layers * self.kv_dim * context

    def describe(self) -> str:
        s = f"{self.num_layers}L h{self.hidden_size} ffn{self.intermediate_size} " \
            f"heads {self.num_heads}"
        if self.num_kv_heads != self.num_heads:
            s += f"/{self.num_kv_heads}kv"
        return s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"params": self.total_params()}


def _need(cfg: dict, key: str, source: str):
    if key not in cfg:
        raise TeacherError(f"{source}: config.json has no '{key}'.",
                           "pass a complete Hugging Face config.json for the model")
    return cfg[key]


NATIVE_KEYS = {"distilbert": {"hidden_size": "dim", "num_hidden_layers": "n_layers",
                              "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim"}}
"""Families whose config.json names the sizes otherwise: common name -> the family's."""


def canonical(cfg: dict) -> dict:
    """``cfg`` with the common size names (hidden_size, ...) for a family that names them
    otherwise (distilbert's dim, n_layers, n_heads, hidden_dim)."""
    keys = NATIVE_KEYS.get(cfg.get("model_type"), {})
    return cfg | {k: cfg[v] for k, v in keys.items() if v in cfg} if keys else cfg


def shape_from_config(cfg: dict, source: str = "config.json") -> ModelShape:
    """Read a ModelShape from an HF config dict. Raises TeacherError for other families."""
    cfg = canonical(cfg)
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise TeacherError(
            f"{source}: unsupported architecture model_type={family!r}.",
            f"edgedistill supports {', '.join(FAMILIES)}; pick a teacher of one of these")
    h = int(_need(cfg, "hidden_size", source))
    nh = int(_need(cfg, "num_attention_heads", source))
    hd = int(cfg.get("head_dim") or h // nh)
    common = dict(
        family=family,
        vocab_size=int(_need(cfg, "vocab_size", source)),
        hidden_size=h,
        num_layers=int(_need(cfg, "num_hidden_layers", source)),
        num_heads=nh,
        head_dim=hd,
        intermediate_size=int(_need(cfg, "intermediate_size", source)),
    )
    if family in ENCODER_FAMILIES:
        types = 0 if family == "distilbert" else int(cfg.get("type_vocab_size", 2))
        return ModelShape(num_kv_heads=nh, max_position=int(cfg.get("max_position_embeddings", 512)),
                          type_vocab_size=types,
                          position_offset=position_offset(cfg), **common)
    return ModelShape(
        num_kv_heads=int(cfg.get("num_key_value_heads") or nh),
        # llama, qwen2, qwen3, mistral and phi3 configs default to an untied head, gemma3's
        # to a tied one
        tie_embeddings=bool(cfg.get("tie_word_embeddings", family == "gemma3_text")),
        qkv_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
        o_bias=family != "qwen2" and bool(cfg.get("attention_bias", False)),
        qk_norm=family in ("qwen3", "gemma3_text"),
        sandwich_norms=family == "gemma3_text",
        **common,
    )


def position_offset(cfg: dict) -> int:
    """Rows of the position embeddings before the first position: xlm-roberta and roberta
    count positions from their padding id + 1 (fairseq's convention), bert from 0."""
    if cfg.get("model_type") in ("xlm-roberta", "roberta"):
        return int(cfg.get("pad_token_id", 1)) + 1
    return 0


def config_for_shape(teacher_cfg: dict, shape: ModelShape) -> dict:
    """The teacher's HF config with the student's sizes: same family, vocabulary, tokenizer
    ids, rope and norm settings; everything that depends on depth is cut to the new depth."""
    cfg = copy.deepcopy(teacher_cfg)
    cfg.pop("_name_or_path", None)
    sizes = dict(hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                 num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size)
    native = NATIVE_KEYS.get(cfg.get("model_type"), {})
    cfg.update({native.get(k, k): v for k, v in sizes.items()})
    if not shape.is_encoder:
        cfg["num_key_value_heads"] = shape.num_kv_heads
    if "head_dim" in cfg or shape.head_dim * shape.num_heads != shape.hidden_size:
        cfg["head_dim"] = shape.head_dim
    if isinstance(cfg.get("layer_types"), list):  # per-layer attention kinds (qwen2 >= 4.53)
        cfg["layer_types"] = cfg["layer_types"][: shape.num_layers]
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = min(int(cfg["max_window_layers"]), shape.num_layers)
    return cfg
