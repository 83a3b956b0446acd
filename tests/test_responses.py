"""Prompts in, teacher responses out (issue 27, part 1): prompt data, rendering, batched and
resumable generation, filters, prompt masking, and --generate stopping at EOS. Tiny models
built here."""
import json
import subprocess
import sys

import pytest
import torch

from edgedistill.data import load_prompts, load_texts
from edgedistill.distill.config import DataConfig, KDConfig
from edgedistill.distill.responses import (generate_responses, keep, render_prompts,
                                           response_key, response_sequences, split_prompts)
from edgedistill.errors import EdgeDistillError

CHATML_GEN = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_prompt_data_is_recognised_and_mixtures_refused(tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2+2?"},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Name a colour."}]}])
    got = load_prompts(prompts)
    assert got[0] == "What is 2+2?" and got[1][-1] == {"role": "user",
                                                       "content": "Name a colour."}
    assert load_texts(prompts)[0] == "What is 2+2?"  # held-out text for verification
    complete = _jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "completion": "b"},
                                             {"text": "plain"}])
    assert load_prompts(complete) is None
    (tmp_path / "t.txt").write_text("just text")
    assert load_prompts(tmp_path / "t.txt") is None
    mixed = _jsonl(tmp_path / "m.jsonl", [{"prompt": "a"}, {"text": "b"}])
    with pytest.raises(EdgeDistillError, match=r"mixes prompts .*m.jsonl:2 is complete"):
        load_prompts(mixed)


def test_prompts_render_with_the_chat_template_or_refuse(trained_llama):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained_llama)
    tok.chat_template = None
    assert render_prompts(tok, ["def f(x):"]) == ["def f(x):"]  # a base model continues it
    with pytest.raises(EdgeDistillError, match="no chat template"):
        render_prompts(tok, [[{"role": "user", "content": "hi"}]])
    tok.chat_template = CHATML_GEN
    assert render_prompts(tok, ["hi"]) == ["<|im_start|>user\nhi<|im_end|>\n"
                                           "<|im_start|>assistant\n"]


def _teacher(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


class Killed(BaseException):
    """What a kill looks like to the code: not an Exception it could catch."""


class _Dies:
    """The teacher, killed in the middle of the ``after``-th generate call."""

    def __init__(self, model, after):
        self.model, self.after, self.calls = model, after, 0
        self.generation_config = model.generation_config

    def generate(self, *a, **kw):
        self.calls += 1
        if self.calls > self.after:
            raise Killed
        return self.model.generate(*a, **kw)


def test_generation_is_batched_cached_and_resumes_after_a_kill(trained_llama, tmp_path):
    model, tok = _teacher(trained_llama)
    texts = [f"def f_{i}(x):\n    return" + " x" * (i % 5) for i in range(20)]
    cfg = DataConfig(max_new_tokens=12)
    key = response_key("t", texts, cfg, 0)
    whole = generate_responses(model, tok, texts, cfg, tmp_path / "a", key)
    assert [(r["i"], r["j"]) for r in whole] == [(i, 0) for i in range(20)]
    assert all(0 < len(r["ids"]) <= 12 for r in whole)
    assert all(r["text"] == tok.decode(r["ids"], skip_special_tokens=True) for r in whole)
    dying = _Dies(model, after=1)  # one batch of 8 written, then killed
    with pytest.raises(Killed):
        generate_responses(dying, tok, texts, cfg, tmp_path / "b", key)
    path = next((tmp_path / "b").glob("responses-*.jsonl"))
    assert len(path.read_text().splitlines()) == 8
    with path.open("a") as f:
        f.write('{"i": 19, "j": 0, "ids": [1, 2')  # the line being written when it died
    again = _Dies(model, after=99)
    resumed = generate_responses(again, tok, texts, cfg, tmp_path / "b", key)
    assert again.calls == 2  # the 12 prompts left, in batches of 8
    assert resumed == whole  # greedy: the same responses as one uninterrupted run
    cached = _Dies(model, after=0)
    assert generate_responses(cached, tok, texts, cfg, tmp_path / "b", key) == whole
    # a changed setting is another key, so another file: generated anew
    other = DataConfig(max_new_tokens=6)
    assert response_key("t", texts, other, 0) != key
    assert response_key("t2", texts, cfg, 0) != key  # and a changed teacher


def test_filters_and_what_they_drop():
    rows = [{"i": 0, "j": 0, "ids": [1], "text": "step\nAnswer: 4", "finished": True},
            {"i": 1, "j": 0, "ids": [1], "text": "Answer: five\n", "finished": True},
            {"i": 2, "j": 0, "ids": [1], "text": "Answer: 7", "finished": False}]
    kept, dropped = keep(rows, DataConfig(keep_if=r"^Answer: \d+$"))
    assert [r["i"] for r in kept] == [0, 2] and dropped == {"unfinished": 0, "keep_if": 1}
    kept, dropped = keep(rows, DataConfig(keep_if=r"^Answer: \d+$", drop_unfinished=True))
    assert [r["i"] for r in kept] == [0] and dropped == {"unfinished": 1, "keep_if": 1}
    with pytest.raises(EdgeDistillError, match=r"kept none of the teacher's 3 responses "
                       r"\(3 by --keep-if\)"):
        keep(rows, DataConfig(keep_if="nothing matches"))
    with pytest.raises(EdgeDistillError, match="--keep-if"):
        DataConfig(keep_if="(unclosed")
    with pytest.raises(EdgeDistillError, match="--top-p"):
        DataConfig(top_p=0)
    with pytest.raises(EdgeDistillError, match="same response each time"):
        DataConfig(num_responses=3)


def test_keep_if_checks_each_prompts_own_answer(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 2+2=?", "answer": 4},
                                         {"prompt": "Q: 3+4=?", "answer": "7"}])
    prompts, fields = load_prompts(path, fields=True)
    assert prompts == ["Q: 2+2=?", "Q: 3+4=?"] and fields == [{"answer": 4}, {"answer": "7"}]
    rows = [{"i": 0, "j": 0, "ids": [1], "text": "2+2... Answer: 4", "finished": True},
            {"i": 0, "j": 1, "ids": [1], "text": "Answer: 5", "finished": True},
            {"i": 1, "j": 0, "ids": [1], "text": "Answer: 7", "finished": True},
            {"i": 1, "j": 1, "ids": [1], "text": "Answer: 77", "finished": True}]
    kept, dropped = keep(rows, DataConfig(keep_if=r"Answer: {answer}$"), fields)
    assert [(r["i"], r["j"]) for r in kept] == [(0, 0), (1, 0)] and dropped["keep_if"] == 2
    # a quantifier is not a field; a field the records lack is an error that names it
    kept, _ = keep(rows, DataConfig(keep_if=r"Answer: \d{1}$"), fields)
    assert len(kept) == 3
    with pytest.raises(EdgeDistillError, match=r"names \{result\}, which prompt 0 does not "
                       r"have \(its fields: answer\)"):
        keep(rows, DataConfig(keep_if=r"Answer: {result}$"), fields)


def test_prompt_tokens_and_padding_carry_no_loss(trained_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from edgedistill.distill.loop import DistillModule
    from edgedistill.distill.losses import kd_loss
    tok = AutoTokenizer.from_pretrained(trained_llama)
    texts = ["def f(x):\n    return", "class A:\n    pass\n"]
    rows = [{"i": 0, "ids": tok(" x + 1\n")["input_ids"]},
            {"i": 1, "ids": tok("\n\nclass B(A):")["input_ids"]}]
    ids, labels = response_sequences(tok, texts, rows, seq_len=24)
    p0 = len(tok(texts[0], add_special_tokens=False)["input_ids"])
    assert (labels[0, :p0] == -100).all() and labels[0, p0:p0 + len(rows[0]["ids"])].tolist() \
        == rows[0]["ids"] and (labels[0, p0 + len(rows[0]["ids"]):] == -100).all()
    short, short_labels = response_sequences(tok, texts, rows, seq_len=6)  # prompt cut first
    assert short.shape == (2, 6) and (short_labels[0] != -100).sum() == min(
        len(rows[0]["ids"]), 5)
    student = AutoModelForCausalLM.from_pretrained(trained_llama).float()
    teacher = AutoModelForCausalLM.from_pretrained(trained_llama).float()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kd = KDConfig(kd_weight=0.5)
    module = DistillModule(student, False, kd, None, 0.0, len(tok))
    t_out = teacher.model(input_ids=ids)
    head = teacher.get_output_embeddings().weight
    loss = module({"input_ids": ids, "labels": labels},
                  {"last_hidden": t_out.last_hidden_state[:, :-1], "head": head})
    with torch.no_grad():
        want = kd_loss(student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1],
                       labels[:, 1:], kd, len(tok))
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    # and changing a prompt token's target changes nothing
    other = ids.clone()
    other[0, 1] = (other[0, 1] + 1) % len(tok)
    with torch.no_grad():
        also = kd_loss(student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1],
                       torch.where(labels[:, 1:] == -100, -100, other[:, 1:]), kd, len(tok))
    assert also.item() == pytest.approx(want.item())


def test_split_prompts_holds_some_out():
    texts = [f"prompt {i}" for i in range(100)]
    tr, va = split_prompts(texts, 0.1)
    assert va and tr and not set(tr) & set(va) and sorted(tr + va) == list(range(100))
    assert split_prompts(texts, 0.1) == (tr, va)
    assert split_prompts(["a", "b"], 0.05) == ([0], [1])
    with pytest.raises(EdgeDistillError, match="at least 2"):
        split_prompts(["a"], 0.05)


def test_generate_stops_at_eos_and_pads_are_not_trained_on(trained_llama):
    from edgedistill.distill.teacher_data import generate_continuations
    model, tok = _teacher(trained_llama)
    blocks = torch.tensor([tok("def f(x):\n    return x + 1\n" * 4)["input_ids"][:40]] * 4)
    common = torch.bincount(blocks.flatten()).argmax().item()
    model.generation_config.eos_token_id = common  # a token it writes soon: it ends early
    ids, labels = generate_continuations(model, tok, blocks, 8, 24, prompt_len=16)
    assert ids.shape == labels.shape == (8, 40)
    ended = 0
    for r in range(8):
        gen = ids[r, 16:].tolist()
        if common in gen:
            end = 16 + gen.index(common)
            ended += 1
            assert (labels[r, :end + 1] == ids[r, :end + 1]).all()  # its end token is learnt
            assert (labels[r, end + 1:] == -100).all()
        else:
            assert (labels[r] == ids[r]).all()
    assert ended >= 1


def test_distill_on_prompts_from_the_cli(trained_llama, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"def g_{i}(a, b):\n    return"}
                                            for i in range(30)])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgedistill", "distill", "--teacher", str(trained_llama),
           "--data", str(prompts), "--out", str(out), "--steps", "3", "--batch-size", "4",
           "--seq-len", "48", "--max-new-tokens", "16", "--num-responses", "2",
           "--gen-temperature", "0.7", "--top-p", "0.9", "--speedup", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((out / "distill.json").read_text())
    assert d["data"]["prompts"] == 30 and d["data"]["responses"] == 60
    assert d["data"]["train_prompts"] + d["data"]["val_prompts"] == 30
    assert d["data_config"]["num_responses"] == 2 and d["data_config"]["top_p"] == 0.9
    assert "teacher writes 2 response(s) to each (sampled at temperature 0.7" in r.stderr
    bad = subprocess.run(cmd[:-2] + ["--speedup", "1", "--keep-if", "^never$"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "kept none of the teacher's 60 responses (60 by --keep-if)" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 or "Traceback" not in bad.stderr
