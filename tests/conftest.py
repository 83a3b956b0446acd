"""Shared fixtures: tiny teacher folders written in-process (config.json only, or a real
save_pretrained folder where weights matter). No network, no downloads."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Hermetic: a calibration made on this machine by 'edgedistill calibrate' must not change what
# the tests see (labels, plans). Subprocesses inherit this.
os.environ["EDGEDISTILL_CACHE"] = tempfile.mkdtemp(prefix="edgedistill-test-cache-")

# Real shapes of public models (their config.json values), used only for planning: the planner
# needs no weights. Kept small in number; each family is covered.
REAL_CONFIGS = {
    "tinyllama-1.1b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                       "hidden_size": 2048, "intermediate_size": 5632,
                       "num_attention_heads": 32, "num_hidden_layers": 22,
                       "num_key_value_heads": 4, "vocab_size": 32000,
                       "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "qwen2-0.5b": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                   "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                   "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 151936,
                   "max_position_embeddings": 32768, "tie_word_embeddings": True,
                   "max_window_layers": 24, "use_sliding_window": False},
    "qwen3-0.6b": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                   "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
                   "num_hidden_layers": 28, "num_key_value_heads": 8, "head_dim": 128,
                   "vocab_size": 151936, "max_position_embeddings": 40960,
                   "tie_word_embeddings": True, "rope_theta": 1000000, "max_window_layers": 28,
                   "use_sliding_window": False, "attention_bias": False},
    "phi-3.5-mini": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
                     "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32,
                     "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                     "max_position_embeddings": 131072, "tie_word_embeddings": False,
                     "original_max_position_embeddings": 4096, "sliding_window": 262144,
                     "pad_token_id": 32000},
    "multilingual-e5-small": {"model_type": "xlm-roberta", "architectures": ["BertModel"],
                              "hidden_size": 384, "intermediate_size": 1536,
                              "num_attention_heads": 12, "num_hidden_layers": 12,
                              "vocab_size": 250037, "max_position_embeddings": 514,
                              "type_vocab_size": 1, "pad_token_id": 1,
                              "layer_norm_eps": 1e-12},
    "all-distilroberta-v1": {"model_type": "roberta", "architectures": ["RobertaModel"],
                             "hidden_size": 768, "intermediate_size": 3072,
                             "num_attention_heads": 12, "num_hidden_layers": 6,
                             "vocab_size": 50265, "max_position_embeddings": 514,
                             "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0,
                             "eos_token_id": 2, "layer_norm_eps": 1e-5},
    "multi-qa-distilbert-cos-v1": {"model_type": "distilbert",
                                   "architectures": ["DistilBertModel"], "dim": 768,
                                   "hidden_dim": 3072, "n_heads": 12, "n_layers": 6,
                                   "vocab_size": 30522, "max_position_embeddings": 512,
                                   "activation": "gelu", "pad_token_id": 0,
                                   "sinusoidal_pos_embds": False},
    "mistral-7b": {"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                   "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                   "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32768,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False},
}

# Tiny configs that torch builds in milliseconds (for exact parameter-count checks).
TINY_CONFIGS = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
              "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
              "vocab_size": 300, "max_position_embeddings": 128, "tie_word_embeddings": False},
    "llama_tied_bias": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
                        "num_attention_heads": 4, "num_hidden_layers": 2,
                        "num_key_value_heads": 4, "vocab_size": 300, "attention_bias": True,
                        "max_position_embeddings": 128, "tie_word_embeddings": True},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 192,
              "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
              "vocab_size": 320, "max_position_embeddings": 128, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 192,
              "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
              "head_dim": 32, "vocab_size": 320, "max_position_embeddings": 128,
              "tie_word_embeddings": True},
    "mistral": {"model_type": "mistral", "hidden_size": 96, "intermediate_size": 256,
                "num_attention_heads": 6, "num_hidden_layers": 2, "num_key_value_heads": 2,
                "head_dim": 32, "vocab_size": 280, "max_position_embeddings": 128},
    "phi3": {"model_type": "phi3", "hidden_size": 64, "intermediate_size": 160,
             "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
             "vocab_size": 300, "max_position_embeddings": 128, "pad_token_id": 0},
    "gemma3_text": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 160,
                    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1,
                    "head_dim": 32, "vocab_size": 300, "max_position_embeddings": 128,
                    "query_pre_attn_scalar": 32},
    "bert": {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 250,
             "max_position_embeddings": 64, "type_vocab_size": 2},
    "xlm-roberta": {"model_type": "xlm-roberta", "hidden_size": 64, "intermediate_size": 128,
                    "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 250,
                    "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1},
    "distilbert": {"model_type": "distilbert", "dim": 64, "hidden_dim": 128, "n_heads": 4,
                   "n_layers": 2, "vocab_size": 250, "max_position_embeddings": 64},
    "roberta": {"model_type": "roberta", "hidden_size": 64, "intermediate_size": 128,
                "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 300,
                "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 1},
}


def write_config(folder: Path, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def teacher_dir(tmp_path):
    """Factory: teacher_dir('tinyllama-1.1b') -> a folder holding that config.json."""
    def make(name: str) -> Path:
        cfg = REAL_CONFIGS.get(name) or TINY_CONFIGS[name]
        return write_config(tmp_path / name, cfg)
    return make


# -- small real models (trained here, so verification thresholds mean something) ------------

def _trained(tmp_path_factory, family: str = "llama") -> Path:
    """A tiny causal LM of ``family`` with a byte-level BPE tokenizer, trained for a few
    seconds on stdlib text (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 320)."""
    from edgedistill.toy import make_causal_lm
    return make_causal_lm(tmp_path_factory.mktemp("m") / family.split("_")[0], family=family,
                          hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=320,
                          steps=100, seq_len=64, batch=8, chars=150_000, lr=1e-2)


@pytest.fixture(scope="session")
def trained_llama(tmp_path_factory):
    """A tiny llama."""
    return _trained(tmp_path_factory)


@pytest.fixture(scope="session")
def trained_phi3(tmp_path_factory):
    """A tiny phi3 (fused q/k/v and gate/up projections)."""
    return _trained(tmp_path_factory, "phi3")


@pytest.fixture(scope="session")
def trained_gemma3_text(tmp_path_factory):
    """A tiny Gemma 3 text model (q/k norms, sandwich norms, scaled embeddings, heads wider
    than hidden/heads, tied embeddings)."""
    return _trained(tmp_path_factory, "gemma3_text")


@pytest.fixture(scope="session")
def trained_qwen3(tmp_path_factory):
    """A tiny qwen3 (q/k head norms, heads wider than hidden/heads, tied embeddings)."""
    return _trained(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def trained_qwen2(tmp_path_factory):
    """A tiny qwen2 (tied embeddings, QKV bias), trained like trained_llama."""
    return _trained(tmp_path_factory, "qwen2")


def sentencepiece_llama(folder: Path, keep_model_file: bool = True, legacy: bool = True) -> Path:
    """A tiny llama with a real SentencePiece BPE tokenizer (byte fallback), random weights.
    ``legacy=True`` is the Llama-2 / Mistral tokenizer.json layout (a space prefix on every
    text segment); ``legacy=False`` prefixes only the start of the text."""
    import sentencepiece as spm
    import torch
    import transformers

    from edgedistill.data import stdlib_sentences

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(stdlib_sentences()[:3000]))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"),
                                   vocab_size=600, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                                   minloglevel=2)
    slow = transformers.LlamaTokenizer(vocab_file=str(folder / "sp.model"), legacy=legacy)
    fast = transformers.LlamaTokenizerFast(vocab_file=str(folder / "sp.model"), legacy=legacy,
                                           from_slow=True)
    out = folder / "model"
    fast.save_pretrained(out)
    if keep_model_file:
        slow.save_pretrained(out)  # tokenizer.model beside tokenizer.json
    else:
        (out / "tokenizer.model").unlink(missing_ok=True)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _train_chatml_byte_bpe(tok, text: str, vocab_size: int):
    """Train the byte-level BPE ``tok`` (pre-tokenizer set) on ``text`` with ChatML special
    tokens; returns it as a transformers fast tokenizer."""
    import transformers
    from tokenizers import decoders, pre_tokenizers, trainers

    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i:i + 20000] for i in range(0, len(text), 20000)], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                                eos_token="<|im_end|>")


def digits_bpe_llama(folder: Path) -> Path:
    """A tiny tied-embedding llama (random weights) with a SmolLM-style byte-level BPE: each
    digit split off before GPT-2's split, and ChatML special tokens."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from edgedistill.data import stdlib_source

    text = stdlib_source(150_000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    fast = _train_chatml_byte_bpe(tok, text, 400)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_sentence_bert(folder: Path) -> Path:
    """A tiny BERT sentence embedder with the bundled MiniLM's WordPiece tokenizer and its
    sentence-transformers pooling files, random weights."""
    import shutil

    import torch
    import transformers

    from edgedistill.teacher import default_teacher_path

    src = default_teacher_path()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "modules.json"):
        shutil.copy2(src / name, folder / name)
    shutil.copytree(src / "1_Pooling", folder / "1_Pooling", dirs_exist_ok=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=128)
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


def mean_pooling_files(folder: Path, dim: int) -> None:
    """sentence-transformers' modules: the transformer, mean pooling, normalisation."""
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    write_config(folder / "1_Pooling", {"word_embedding_dimension": dim,
                                        "pooling_mode_mean_tokens": True})


def tiny_distilbert(folder: Path) -> Path:
    """A tiny msmarco-distilbert-style embedder (distilbert, random weights): the bundled
    MiniLM's uncased WordPiece vocabulary saved as DistilBERT's tokenizer (no token types),
    config.json in DistilBERT's own names (dim, n_layers, n_heads, hidden_dim), mean pooling
    and normalisation declared as sentence-transformers does."""
    import torch
    import transformers

    from edgedistill.teacher import default_teacher_path

    folder.mkdir(parents=True, exist_ok=True)
    tok = transformers.DistilBertTokenizerFast(
        vocab_file=str(default_teacher_path() / "vocab.txt"))
    tok.save_pretrained(folder)
    mean_pooling_files(folder, 64)
    torch.manual_seed(0)
    cfg = transformers.DistilBertConfig(vocab_size=len(tok), dim=64, hidden_dim=128,
                                        n_layers=2, n_heads=4, max_position_embeddings=128)
    transformers.DistilBertModel(cfg).save_pretrained(folder)
    return folder


def tiny_xlm_roberta(folder: Path, vocab: int = 600) -> Path:
    """A tiny multilingual-e5-style embedder (xlm-roberta, random weights): a SentencePiece
    Unigram tokenizer trained here with SentencePiece's NFKC rules, converted by transformers
    as XLM-R's tokenizer.json is (precompiled character map, fairseq ids), mean pooling and
    normalisation declared as sentence-transformers does."""
    import io

    import sentencepiece as spm
    import torch
    import transformers

    from edgedistill.data import stdlib_source

    folder.mkdir(parents=True, exist_ok=True)
    text = stdlib_source(150_000) + "\nnaïve café ＡＢＣ ﬁ ① Größe 日本語 и русский\n" * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=vocab,
        model_type="unigram", normalization_rule_name="nmt_nfkc", character_coverage=1.0,
        num_threads=1, minloglevel=2)
    sp_file = folder / "sentencepiece.bpe.model"
    sp_file.write_bytes(buf.getvalue())
    tok = transformers.XLMRobertaTokenizerFast(vocab_file=str(sp_file))
    tok.save_pretrained(folder)
    sp_file.unlink()  # tokenizer.json alone, as the fast tokenizer saves it
    mean_pooling_files(folder, 64)
    torch.manual_seed(0)
    cfg = transformers.XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=130, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    transformers.XLMRobertaModel(cfg).save_pretrained(folder)
    return folder


def tiny_roberta(folder: Path, vocab: int = 700) -> Path:
    """A tiny all-distilroberta-style embedder (roberta, random weights): a byte-level BPE
    trained here and saved by transformers as RoBERTa's tokenizer is (GPT-2's split, <s> ...
    </s> around each text), positions from the padding id + 1, mean pooling and
    normalisation declared as sentence-transformers does."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    from edgedistill.data import stdlib_source

    folder.mkdir(parents=True, exist_ok=True)
    text = stdlib_source(150_000) + "\nnaïve café Größe 日本語 и русский 2024 don't\n" * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text.splitlines(), vocab_size=vocab, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    bpe.save_model(str(folder))
    tok = transformers.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"),
                                            merges_file=str(folder / "merges.txt"))
    tok.save_pretrained(folder)
    mean_pooling_files(folder, 64)
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=130, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    transformers.RobertaModel(cfg).save_pretrained(folder)
    return folder


def split_bpe_model(folder: Path, pre: str, family: str = "llama", nfc: bool = False) -> Path:
    """A tiny model (random weights) with a Llama-3 or Qwen2 style byte-level BPE: the family's
    Split regex, then ByteLevel without its own regex (``pre``: 'llama-bpe' or 'qwen2', the
    llama.cpp names), ChatML special tokens and a chat template; ``nfc``: an NFC normalizer
    first, as Qwen2's tokenizer.json has."""
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    from edgedistill.data import stdlib_source
    from edgedistill.convert.gguf_vocab import _SPLIT_PRE

    regex = {name: rx for rx, name in _SPLIT_PRE.items()}[pre]
    text = stdlib_source(150_000) + "\nI'LL say WE'VE, naïve café 12345 日本語 🙂\n" * 20
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if nfc:
        tok.normalizer = normalizers.NFC()
    fast = _train_chatml_byte_bpe(tok, text, 500)
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                          "<|im_end|>\n{% endfor %}")
    fast.save_pretrained(folder)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    torch.manual_seed(0)
    cfg = cls(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def kill_after_checkpoint(args: list, out: Path, step: int, env: dict) -> None:
    """Start ``edgedistill ARGS --out OUT``, SIGKILL it once checkpoint ``step`` (or a later
    one) is written, and check it left no student behind."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", *map(str, args), "--out",
                             str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.is_file() and
                                          latest.read_text().strip() >= f"step-{step:07d}"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.is_file() and not (out / "student").exists()
