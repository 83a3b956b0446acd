"""Tokenizer metadata for GGUF, written the way llama.cpp reads it.

Three kinds, detected from the HF tokenizer folder:

- ``gpt2``: byte-level BPE (tokens, token types, merges, and a pre-tokenizer name that selects
  the same split regex in llama.cpp: ``gpt-2``, ``llama-bpe``, ``qwen2`` or ``smollm``);
- ``llama``: SentencePiece (tokens, scores, types). From ``tokenizer.model`` the scores are the
  model's own; from a BPE ``tokenizer.json`` with byte fallback they follow the merge ranks,
  because llama.cpp's SPM tokenizer merges by score;
- ``bert``: WordPiece, with llama.cpp's phantom-space spelling (``##`` stripped, word-initial
  pieces prefixed with U+2581);
- ``t5``: SentencePiece Unigram (xlm-roberta, multilingual-e5), llama.cpp's UGM tokenizer: pieces
  and scores as tokenizer.json holds them, and the normalizer's precompiled character map
  (SentencePiece's NFKC rules) with its whitespace handling.

Anything else is refused with the reason, never written approximately. Tokenizer parity is
then checked by running llama.cpp's tokenizer (see parity checks in export/__init__.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError

# gguf TokenType values (gguf-py constants.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPM_SPACE = "\u2581"

# HF Split regexes of the byte-level BPE families llama.cpp knows, by pre-tokenizer name.
_SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


class TokenizerKindError(EdgeDistillError):
    """A tokenizer that cannot be written as GGUF without changing how it tokenizes."""


@dataclass
class Vocab:
    model: str
    """tokenizer.ggml.model: gpt2, llama, bert or t5."""
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    charsmap: bytes | None = None
    """t5: SentencePiece's precompiled normalization map."""


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _steps(tj: dict, key: str, inner: str) -> list[dict]:
    """The steps of tokenizer.json's ``key`` (a Sequence's ``inner`` list, or the one step)."""
    step = tj.get(key) or {}
    return step.get(inner, [step]) if step.get("type") == "Sequence" else [step]


def _pre_tokenizers(tj: dict) -> list[dict]:
    return _steps(tj, "pre_tokenizer", "pretokenizers")


def _normalizers(tj: dict) -> list[dict]:
    return _steps(tj, "normalizer", "normalizers")


def unicode_normalization(tj: dict) -> str | None:
    """The Unicode normalization form (NFC, NFKC, ...) a tokenizer.json applies, if any."""
    forms = [n["type"] for n in _normalizers(tj)
             if n.get("type") in ("NFC", "NFKC", "NFD", "NFKD")]
    return forms[0] if forms else None


def tokenizer_kind(model_dir: Path) -> str:
    """``gpt2``, ``llama``, ``bert`` or ``t5``; raises TokenizerKindError otherwise."""
    tj = _load_json(model_dir / "tokenizer.json")
    model = (tj.get("model") or {}).get("type")
    if model == "WordPiece":
        return "bert"
    if model == "Unigram":
        return "t5"
    if model == "BPE":
        # Byte-level BPE maps every byte to a vocabulary symbol first, so a byte_fallback flag
        # on it never fires (transformers' GGUF tokenizer conversion sets one): gpt2, not llama.
        if any(p.get("type") == "ByteLevel" for p in _pre_tokenizers(tj)):
            return "gpt2"
        if (tj["model"].get("byte_fallback") or
                any(p.get("type") == "Metaspace" for p in _pre_tokenizers(tj))):
            return "llama"
    if not tj and (model_dir / "tokenizer.model").is_file():
        return "llama"
    if not tj and (model_dir / "vocab.txt").is_file():
        return "bert"
    raise TokenizerKindError(
        f"{model_dir}: cannot write this tokenizer as GGUF (tokenizer.json model "
        f"{model!r}, pre-tokenizer {[p.get('type') for p in _pre_tokenizers(tj)]}).",
        "edgedistill writes byte-level BPE, SentencePiece (BPE and Unigram) and WordPiece "
        "tokenizers; export this "
        "model to ONNX instead (--formats onnx)")


def _check_wordpiece_case(model_dir: Path, tj: dict) -> None:
    """llama.cpp's WordPiece tokenizer lowercases all text (after NFD), whatever the GGUF
    says; a cased WordPiece vocabulary (bert-base-cased and its kin) cannot be written."""
    if tj:
        bert_norms = [n for n in _normalizers(tj) if n.get("type") == "BertNormalizer"]
        cased = bool(bert_norms) and not any(n.get("lowercase", True) for n in bert_norms)
    else:  # vocab.txt alone: BertTokenizer's do_lower_case (default True)
        cfg = _load_json(model_dir / "tokenizer_config.json")
        cased = cfg.get("do_lower_case", True) is False
    if cased:
        raise TokenizerKindError(
            f"{model_dir}: a cased WordPiece tokenizer (it does not lowercase), but llama.cpp's "
            "WordPiece tokenizer lowercases all text, so the GGUF would tokenize differently.",
            "export this model to ONNX instead (--formats onnx)")


def check_tokenizer(model_dir: Path) -> str:
    """The GGUF tokenizer kind of ``model_dir``, after checking that it can be written (kind and,
    for byte-level BPE, a pre-tokenizer llama.cpp knows; for WordPiece, lowercasing); raises
    TokenizerKindError."""
    kind = tokenizer_kind(model_dir)
    if kind == "bert":
        _check_wordpiece_case(model_dir, _load_json(model_dir / "tokenizer.json"))
    if kind == "gpt2":
        _gpt2_pre_name(_load_json(model_dir / "tokenizer.json"), model_dir)
    if kind == "t5":
        _unigram_settings(_load_json(model_dir / "tokenizer.json"), model_dir)
    if kind == "llama" and (model_dir / "tokenizer.model").is_file():
        try:
            import sentencepiece as spm
        except ImportError:
            spm = None
        if spm is not None:
            _sentencepiece(spm, model_dir / "tokenizer.model")
    return kind


def _sentencepiece(spm, sp_file: Path):
    try:
        return spm.SentencePieceProcessor(model_file=str(sp_file))
    except RuntimeError as e:  # not a SentencePiece model (e.g. a GGUF saved under that name)
        raise TokenizerKindError(f"{sp_file} is not a SentencePiece model ({str(e)[:80]}).",
                                 "remove or replace that file (tokenizer.json alone is "
                                 "enough)") from e


def _gpt2_pre_name(tj: dict, where: Path) -> str:
    pres = _pre_tokenizers(tj)
    kinds = [p.get("type") for p in pres]
    if kinds == ["ByteLevel"] and pres[0].get("use_regex", True):
        if pres[0].get("add_prefix_space"):
            raise TokenizerKindError(f"{where}: ByteLevel with add_prefix_space is not "
                                     "supported by llama.cpp's gpt2 tokenizer.",
                                     "export this model to ONNX instead (--formats onnx)")
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and pres[0].get("individual_digits")
            and pres[1].get("use_regex", True) and not pres[1].get("add_prefix_space")):
        return "smollm"  # SmolLM, StarCoder: each digit alone, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not pres[1].get("use_regex", True):
        regex = (pres[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_PRE:
            return _SPLIT_PRE[regex]
    raise TokenizerKindError(
        f"{where}: the byte-level BPE pre-tokenizer {kinds} has no llama.cpp equivalent "
        "that edgedistill knows (known: GPT-2, Llama-3, Qwen2 and SmolLM splits).",
        "export this model to ONNX instead (--formats onnx), or file the tokenizer.json")


_SPACES = {"Regex": " {2,}"}


def _unigram_settings(tj: dict, where: Path) -> tuple[bool, bool, bytes | None]:
    """(add_space_prefix, remove_extra_whitespaces, precompiled charsmap) of a Unigram
    tokenizer.json, as llama.cpp's UGM tokenizer applies them; raises TokenizerKindError for
    steps it has no equivalent of."""
    import base64

    norms = [n for n in _normalizers(tj) if n]
    charsmap, collapse, other = None, False, []
    for n in norms:
        if n.get("type") == "Precompiled":
            charsmap = base64.b64decode(n.get("precompiled_charsmap") or "") or None
        elif (n.get("type") == "Replace" and n.get("pattern") == _SPACES
              and n.get("content") in (" ", _SPM_SPACE)):
            collapse = True
        elif n.get("type") != "Strip":
            other.append(n.get("type"))
    pres = [p for p in _pre_tokenizers(tj) if p]
    kinds = [p.get("type") for p in pres]
    if kinds not in (["Metaspace"], ["WhitespaceSplit", "Metaspace"]) or other:
        raise TokenizerKindError(
            f"{where}: this Unigram tokenizer's steps (normalizers {other or 'as usual'}, "
            f"pre-tokenizers {kinds}) have no llama.cpp equivalent that edgedistill knows "
            "(known: SentencePiece's precompiled map, then Metaspace).",
            "export this model to ONNX instead (--formats onnx)")
    meta = pres[-1]
    prefix = meta.get("prepend_scheme", "always" if meta.get("add_prefix_space", True)
                      else "never") != "never"
    return prefix, collapse, charsmap


def _unigram_vocab(model_dir: Path, tok, tj: dict, vocab_size: int) -> Vocab:
    prefix, collapse, charsmap = _unigram_settings(tj, model_dir)
    tokens, types, _ = _base(tok, vocab_size)
    pieces = tj["model"]["vocab"]
    unk = tj["model"].get("unk_id")
    scores = []
    for i, t in enumerate(tokens):
        if i < len(pieces) and pieces[i][0] == t:
            scores.append(float(pieces[i][1]))
            if i == unk:
                types[i] = UNKNOWN
            elif (types[i] == NORMAL and tj["model"].get("byte_fallback") and len(t) == 6
                  and t.startswith("<0x") and t.endswith(">")):
                types[i] = BYTE
        else:
            scores.append(0.0 if types[i] in (CONTROL, USER_DEFINED) else -10000.0)
    return Vocab("t5", tokens, types, scores=scores, pre="default", add_space_prefix=prefix,
                 remove_extra_whitespaces=collapse, charsmap=charsmap)


def _base(tok, vocab_size: int) -> tuple[list[str], list[int], dict[int, str]]:
    """Tokens by id (holes filled as UNUSED) and their types from the HF tokenizer."""
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(CONTROL if added[t].special else USER_DEFINED)
        else:
            tokens.append(t)
            types.append(NORMAL)
    return tokens, types, by_id


def build_vocab(model_dir: Path, tok, vocab_size: int) -> Vocab:
    """Build the GGUF vocabulary of the tokenizer in ``model_dir`` (``tok`` is its HF
    tokenizer). ``vocab_size`` is the model's (may exceed the tokenizer's: padded vocabs)."""
    kind = tokenizer_kind(model_dir)
    tj = _load_json(model_dir / "tokenizer.json")
    if kind == "gpt2":
        tokens, types, _ = _base(tok, vocab_size)
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        return Vocab("gpt2", tokens, types, merges=merges, pre=_gpt2_pre_name(tj, model_dir))
    if kind == "bert":
        _check_wordpiece_case(model_dir, tj)
        tokens, types, _ = _base(tok, vocab_size)
        special = set(tok.all_special_ids)
        out = []
        for i, t in enumerate(tokens):
            if i in special or types[i] == CONTROL:
                types[i] = CONTROL
                out.append(t)
            elif t.startswith("##"):
                out.append(t[2:])
            else:
                out.append(_SPM_SPACE + t)
        return Vocab("bert", out, types, pre="default")
    if kind == "t5":
        return _unigram_vocab(model_dir, tok, tj, vocab_size)
    return _spm_vocab(model_dir, tok, tj, vocab_size)


def _spm_vocab(model_dir: Path, tok, tj: dict, vocab_size: int) -> Vocab:
    sp_file = model_dir / "tokenizer.model"
    if sp_file.is_file():
        try:
            import sentencepiece as spm
        except ImportError:
            spm = None
        if spm is not None:
            sp = _sentencepiece(spm, sp_file)
            tokens, types, scores = [], [], []
            for i in range(sp.vocab_size()):
                tokens.append(sp.id_to_piece(i))
                scores.append(float(sp.get_score(i)))
                types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
                             UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
            for t in tok.added_tokens_decoder.values():  # added on top of the SP model
                if t.content not in tokens:
                    tokens.append(t.content)
                    scores.append(-1000.0)
                    types.append(CONTROL if t.special else USER_DEFINED)
            while len(tokens) < vocab_size:
                tokens.append(f"[PAD{len(tokens)}]")
                scores.append(-10000.0)
                types.append(UNUSED)
            return Vocab("llama", tokens, types, scores=scores,
                         add_space_prefix=_adds_space_prefix(tok))
    if not tj:
        raise TokenizerKindError(f"{model_dir}: tokenizer.model needs the sentencepiece package.",
                                 "pip install sentencepiece")
    # BPE tokenizer.json with byte fallback: score = -merge rank, so llama.cpp's highest-score-
    # first merging replays the BPE merge order.
    tokens, types, _ = _base(tok, vocab_size)
    rank = {}
    for r, m in enumerate(tj["model"]["merges"]):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    scores = []
    unk = tok.unk_token
    for i, t in enumerate(tokens):
        if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types[i] = BYTE
        elif t == unk:
            types[i] = UNKNOWN
        scores.append(-float(rank[t]) if t in rank else (0.0 if types[i] == NORMAL else -1000.0))
    return Vocab("llama", tokens, types, scores=scores,
                 add_space_prefix=_adds_space_prefix(tok))


def _adds_space_prefix(tok) -> bool:
    """True when the HF tokenizer puts U+2581 before the first word (Llama/Mistral style).
    Asked of the tokenizer itself: tokenizer.json, tokenizer_config's add_prefix_space and the
    transformers version all decide it."""
    ids = tok("a", add_special_tokens=False)["input_ids"]
    first = tok.convert_ids_to_tokens(ids[:1])
    return bool(first) and first[0].startswith(_SPM_SPACE)


def special_ids(tok, kind: str) -> dict[str, int | bool]:
    """bos/eos/unk/pad/sep/mask ids and the add_bos/add_eos flags, as HF applies them."""
    out: dict[str, int | bool] = {}
    if kind in ("bert", "t5") and tok.cls_token_id is not None:  # encoders: [CLS] ... [SEP]
        pairs = [("bos", tok.cls_token_id), ("eos", tok.sep_token_id), ("sep", tok.sep_token_id)]
    else:
        pairs = [("bos", tok.bos_token_id), ("eos", tok.eos_token_id)]
    pairs += [("unk", tok.unk_token_id), ("pad", tok.pad_token_id), ("mask", tok.mask_token_id)]
    for name, i in pairs:
        if i is not None:
            out[name] = int(i)
    # What HF adds around a text decides the flags (tokenizer_config and post-processor alike).
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    out["add_bos"] = bool(len(full) > len(plain) and full[0] == out.get("bos"))
    out["add_eos"] = bool(len(full) > len(plain) and full[-1] == out.get("eos"))
    return out
