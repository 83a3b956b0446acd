"""``distill --stream``: the run's data read while it trains (:mod:`edgedistill.datastream`),
checked against what streaming cannot do before any model work."""
from __future__ import annotations

from pathlib import Path

from edgedistill.data import chat_renderer
from edgedistill.datastream import BlockStream, open_reader, source_id
from edgedistill.errors import EdgeDistillError
from edgedistill.runstate import atomic_write
from edgedistill.runstate import fingerprint


def _stream(data, tok, data_cfg, seed: int) -> BlockStream:
    return BlockStream(open_reader(str(data), chat_renderer(tok)), tok, data_cfg.seq_len, seed,
                       fraction=data_cfg.val_fraction)


HELDOUT_TEXT = Path("data") / "heldout.txt"
"""In the run folder: the held-out documents that validate a streamed run, for the whole
chain's verification and bench (the stream itself is not read again)."""


def open_stream(data, tok, encoder: bool, routes, data_cfg, train, run_dir: Path):
    """(stream, validation blocks, data description, data fingerprint) of ``data``; writes
    :data:`HELDOUT_TEXT` in ``run_dir``."""
    if data is None:
        raise EdgeDistillError("--stream reads --data as it trains; no --data was given.",
                               "pass --data PATH or --data hf://datasets/ORG/NAME, or drop "
                               "--stream")
    if encoder:
        raise EdgeDistillError("--stream trains causal LMs; a sentence encoder's sentences are "
                               "loaded whole.", "drop --stream for a sentence encoder")
    if routes:
        raise EdgeDistillError("--route sends whole files to teachers; a stream mixes them.",
                               "drop --route or --stream")
    stream = _stream(data, tok, data_cfg, train.seed)
    val = stream.validation(train.eval_batches * train.batch_size)
    out = run_dir / HELDOUT_TEXT
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, "\n\n".join(stream.heldout))  # every process of a launch writes it
    desc = {"stream": str(data), "seq_len": data_cfg.seq_len, "val_blocks": len(val),
            "shuffle_buffer_blocks": stream.size}
    return stream, val, desc, fingerprint(source_id(str(data)), data_cfg.val_fraction)


def calibration_blocks(data, tok, data_cfg, seed: int, n: int = 16):
    """The first ``n`` training blocks, from a stream of their own (for the student's
    activation-based initialisation; the run's stream is not advanced)."""
    return _stream(data, tok, data_cfg, seed).sample(n)
