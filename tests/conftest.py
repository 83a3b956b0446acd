"""Shared fixtures: tiny teacher folders written in-process (config.json only, or a real
save_pretrained folder where weights matter). No network, no downloads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    "mistral": {"model_type": "mistral", "hidden_size": 96, "intermediate_size": 256,
                "num_attention_heads": 6, "num_hidden_layers": 2, "num_key_value_heads": 2,
                "head_dim": 32, "vocab_size": 280, "max_position_embeddings": 128},
    "bert": {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 250,
             "max_position_embeddings": 64, "type_vocab_size": 2},
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
