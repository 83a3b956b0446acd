"""distill --stream: documents read while training, held out by hash, drawn through a seeded
buffer, resumable at any block; the whole run on a tiny llama, resumed after a kill, and on
2 processes."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from edgedistill import datastream
from edgedistill.data import is_holdout, pack
from edgedistill.datastream import BlockStream, open_reader

from conftest import kill_after_checkpoint

SEQ = 16


@pytest.fixture(scope="module")
def tok(trained_llama):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(trained_llama)


@pytest.fixture
def corpus(tmp_path):
    """A folder: 300 JSONL records (a text, a chat) and a text file of many paragraphs."""
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    with (root / "a.jsonl").open("w") as f:
        for i in range(300):
            rec = ({"text": f"record {i}: the quick brown fox {i * 7} jumps."} if i % 3 else
                   {"messages": [{"role": "user", "content": f"question {i}?"},
                                 {"role": "assistant", "content": f"answer {i}."}]})
            f.write(json.dumps(rec) + "\n")
    (root / "b" / "long.txt").write_text("\n\n".join(
        f"Paragraph {i} says something about the number {i * i} and walks on." for i in
        range(2000)))
    (root / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: not read
    return root


def _docs(root):
    """Every document of one pass, as the reader sees them."""
    reader, out = open_reader(str(root), None), []
    while (d := reader.next_doc()) is not None:
        out.append(d)
    return out


def test_a_pass_reads_every_document_once_and_pieces_cut_at_line_ends(corpus, monkeypatch):
    monkeypatch.setattr(datastream, "PIECE", 4096)
    docs = _docs(corpus)
    text = (corpus / "b" / "long.txt").read_text()
    pieces = docs[300:]
    assert len(docs[:300]) == 300 and "".join(pieces) == text  # nothing lost or doubled
    assert len(pieces) > 10 and all(p.endswith("\n") for p in pieces[:-1])
    assert docs[0] == "question 0?\n\nanswer 0." and docs[1].startswith("record 1:")


def test_blocks_are_the_trained_documents_packed_and_held_out_ones_validate(corpus, tok,
                                                                          monkeypatch):
    monkeypatch.setattr(datastream, "PIECE", 4096)
    docs = _docs(corpus)
    held = [d for d in docs if is_holdout(d)]
    trained = [d for d in docs if not is_holdout(d)]
    assert held and trained
    packed = pack(trained, tok, SEQ)
    # buffer 1: no shuffling, the packed blocks in order
    plain = BlockStream(open_reader(str(corpus), None), tok, SEQ, seed=0, buffer=1)
    assert torch.equal(plain.sample(len(packed)), packed)
    # the validation blocks: the held-out documents packed, in order
    val = plain.validation(4)
    assert torch.equal(val, pack(held, tok, SEQ)[:4])
    # a buffer of 32: the same blocks in another order, every one drawn once
    mixed = BlockStream(open_reader(str(corpus), None), tok, SEQ, seed=0, buffer=32)
    got = mixed.sample(len(packed) - 32)
    assert not torch.equal(got, packed[:len(got)])
    rows = Counter(map(tuple, packed.tolist()))
    drawn = Counter(map(tuple, got.tolist()))
    assert all(rows[r] >= n for r, n in drawn.items())
    # past the end: the next pass, whose blocks come in another order
    assert len(mixed.sample(64)) == 64 and mixed.describe()["passes_completed"] == 1


@pytest.mark.parametrize("source", ["files", "saved-dataset"])
def test_a_restored_stream_reads_the_blocks_the_first_would(corpus, tok, tmp_path, source,
                                                            monkeypatch):
    monkeypatch.setattr(datastream, "PIECE", 4096)
    data = str(corpus)
    if source == "saved-dataset":
        from datasets import Dataset
        Dataset.from_dict({"text": _docs(corpus)}).save_to_disk(str(tmp_path / "ds"))
        data = str(tmp_path / "ds")
    a = BlockStream(open_reader(data, None), tok, SEQ, seed=3, buffer=16)
    a.sample(37)
    state = a.state_dict()
    ahead = a.sample(200)  # across the end of the first pass and into the second
    b = BlockStream(open_reader(data, None), tok, SEQ, seed=99, buffer=16)
    b.load_state_dict(json.loads(json.dumps(state)))  # plain data: it survives a checkpoint
    assert torch.equal(b.sample(200), ahead)
    # positions are read in order; another rank's positions are skipped
    with pytest.raises(RuntimeError, match="already read"):
        b[[0]]
    skip = BlockStream(open_reader(data, None), tok, SEQ, seed=3, buffer=16)
    assert torch.equal(skip[[37, 38]], ahead[:2])


def test_bad_sources_are_one_line_errors(tmp_path, tok):
    from edgedistill.errors import EdgeDistillError
    (tmp_path / "list.json").write_text("[]")
    for data, msg in ((tmp_path / "nope", "does not exist"),
                      (tmp_path / "list.json", "one JSON document"),
                      ("hf://datasets/onlyname", "not a hub dataset address")):
        with pytest.raises(EdgeDistillError, match=msg):
            open_reader(str(data), None)
    (tmp_path / "one.txt").write_text("a single short document.")
    s = BlockStream(open_reader(str(tmp_path / "one.txt"), None), tok, SEQ, seed=0)
    with pytest.raises(EdgeDistillError, match="none .* was held out"):
        s.validation(4)
    (tmp_path / "bin.txt").write_bytes(bytes(range(128, 256)) * 20)
    with pytest.raises(EdgeDistillError, match="not UTF-8"):
        _docs(tmp_path / "bin.txt")


ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
SMALL = ["--steps", "12", "--batch-size", "2", "--seq-len", "32", "--eval-every", "6",
         "--save-every", "2", "--speedup", "1", "--lr", "1e-3", "--stream"]


def _cli(*args, env=ENV, **kw):
    return subprocess.run([sys.executable, "-m", "edgedistill", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, **kw)


def _weights(run):
    from safetensors.torch import load_file
    return load_file(str(run / "student" / "model.safetensors"))


@pytest.mark.slow
def test_streamed_distillation_resumes_after_a_kill_exactly(trained_llama, corpus, tmp_path):
    args = ["distill", "--teacher", trained_llama, "--data", corpus, *SMALL]
    straight = _cli(*args, "--out", tmp_path / "a", "--json")
    assert straight.returncode == 0, straight.stderr[-3000:]
    doc = json.loads(straight.stdout)
    assert doc["data"]["stream"] == str(corpus) and doc["data"]["val_blocks"] > 0
    assert doc["data"]["blocks_read"] == 12 * 2 and doc["validation"]["kl"] > 0
    kill_after_checkpoint(args, tmp_path / "b", 4, ENV)
    resumed = _cli(*args, "--out", tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # what streaming cannot do is refused before any work
    bad = _cli(*args, "--cache-topk", "8", "--out", tmp_path / "c")
    assert bad.returncode == 2 and "--stream reads the data once" in bad.stderr
    gone = _cli("distill", "--teacher", trained_llama, *SMALL, "--out", tmp_path / "d",
                "--data", "hf://datasets/nobody-here/no-such-dataset",
                env=ENV | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                           "HF_HOME": str(tmp_path / "hf")})
    assert gone.returncode == 2 and "cannot be streamed" in gone.stderr
    assert len(gone.stderr.strip().splitlines()[-1]) < 400


@pytest.mark.slow
def test_two_processes_read_their_slices_of_one_stream(trained_llama, corpus, tmp_path):
    args = ["distill", "--teacher", trained_llama, "--data", corpus, *SMALL, "--steps", "6",
            "--save-every", "0"]
    one = _cli(*args, "--batch-size", "4", "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                          "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "29563", "-m", "edgedistill",
                          *map(str, args), "--batch-size", "2", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst  # the same blocks in each global batch (see test_distill)


@pytest.mark.slow
def test_the_whole_chain_streams_and_checks_files_on_the_held_out_documents(trained_llama,
                                                                            corpus, tmp_path):
    run = tmp_path / "run"
    r = _cli("export", "--teacher", trained_llama, "--target", "laptop", "--data", corpus,
             "--stream", "--out", run, "--steps", "4", "--seq-len", "32", "--batch-size", "2",
             "--quant", "q8_0", "--formats", "gguf", "--new-tokens", "8", "--repeats", "1",
             "--speedup", "1", "--no-baselines")
    assert r.returncode == 0, r.stderr[-3000:]
    held = (run / "data" / "heldout.txt").read_text()
    assert held and all(is_holdout(d) for d in held.split("\n\n")[:3])
    doc = json.loads((run / "report.json").read_text())
    gguf = [a for a in doc["artifacts"] if a["format"] == "gguf"]
    assert gguf and gguf[0]["parity"]["status"] == "passed"
    assert doc["training"]["steps"] == 4
