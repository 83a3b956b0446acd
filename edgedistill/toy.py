"""Small real models for tests, benchmarks and demos, made here from text that ships with Python.

No weights can be downloaded on our machines, so a *trained* causal LM is made on the spot:
a byte-level BPE tokenizer and a small llama/qwen2/qwen3/mistral/phi3/gemma3_text trained on
standard-library source for a few hundred steps. Trained (not random) weights matter for checks like top-1 agreement,
which random logits make meaningless.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from edgedistill.data import stdlib_source


def train_bpe_tokenizer(text: str, vocab_size: int = 1024):
    """A GPT-2-style byte-level BPE tokenizer (transformers PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    chunks = [text[i:i + 20000] for i in range(0, len(text), 20000)]
    tok.train_from_iterator(chunks, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token=None)


def make_causal_lm(out_dir: str | Path, *, family: str = "llama", hidden: int = 256,
                   layers: int = 4, heads: int = 4, kv_heads: int = 2, ffn: int = 512,
                   vocab: int = 1024, steps: int = 200, seq_len: int = 128, batch: int = 8,
                   lr: float = 3e-3, chars: int = 2_000_000, seed: int = 0,
                   text: str | None = None, overrides: dict | None = None,
                   device: str | None = None, log=None,
                   tokenizer_text: str | None = None) -> Path:
    """Train a small causal LM on standard-library source and save it (HF folder with
    tokenizer) to ``out_dir``. Returns ``out_dir``. Deterministic for a given seed.

    ``text``: train on this instead of the first ``chars`` of standard-library source (the
    tokenizer is then learnt from the first ``chars`` of ``text``). ``overrides``: config
    values set last (e.g. ``{"attention_bias": True}``). ``device``: where to train (default:
    the CPU; "cuda" for a GPU: the batches drawn are the same, the arithmetic not bit-equal).
    ``tokenizer_text``: learn the tokenizer from this instead (models trained on different
    text then share one tokenizer)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    text = stdlib_source(chars) if text is None else text
    tok = train_bpe_tokenizer(text[:chars] if tokenizer_text is None else tokenizer_text, vocab)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
               "phi3": transformers.Phi3Config,
               "gemma3_text": transformers.Gemma3TextConfig}[family]
    # qwen3: heads wider than hidden/heads, as in the real ones (Qwen3-0.6B: 16 x 128 > 1024)
    extra = {"head_dim": 2 * hidden // heads} if family == "qwen3" else {}
    values = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=max(512, seq_len),
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  tie_word_embeddings=family in ("qwen2", "qwen3"), **extra)
    if family == "phi3":  # its config defaults pad to id 32000, beyond a small vocabulary
        values["pad_token_id"] = tok.eos_token_id
    if family == "gemma3_text":  # heads of 2 hidden/heads as in Gemma 3 (270M: 4 x 256 > 640)
        hd = 2 * hidden // heads
        values |= {"head_dim": hd, "query_pre_attn_scalar": hd, "pad_token_id": tok.eos_token_id,
                   "tie_word_embeddings": True}
    cfg = cfg_cls(**{**values, **(overrides or {})})
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(device or "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        lr_now = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr_now
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seq_len] for s in starts]).to(device or "cpu")  # (B, T)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"toy {family}: step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    model.eval().to("cpu")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
