import json

import pytest

from edgedistill.data import load_texts, pack, sentences_of, split_documents
from edgedistill.errors import EdgeDistillError


def test_load_text_jsonl_folder_and_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" +
                                      json.dumps({"text": "third"}) + "\n")
    assert load_texts(tmp_path / "a.txt") == ["first document"]
    assert load_texts(tmp_path / "b.jsonl") == ["second", "third"]
    assert load_texts(tmp_path) == ["first document", "second", "third"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["x one", "y two"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == ["x one", "y two"]


def test_bad_data_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(EdgeDistillError, match="holds no text"):
        load_texts(tmp_path / "empty.txt")
    with pytest.raises(EdgeDistillError, match="does not exist"):
        load_texts(tmp_path / "nope.txt")
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(EdgeDistillError, match=r"bad.jsonl:1: no string field 'text', no "
                                               r"'messages' \(or ShareGPT"):
        load_texts(tmp_path / "bad.jsonl")


CHATML = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]"
          "['role'] %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
          "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}")


def test_conversations_and_prompt_completion_pairs(tmp_path):
    """Chat data (TRL's conversational form) is rendered with the teacher's chat template, so
    the student trains and is verified on what the deployed model reads; without a template
    the contents are joined. Prompt/completion pairs are joined."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from conftest import _train_chatml_byte_bpe
    from edgedistill.data import chat_renderer

    convo = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Sum 2 and 2?"},
                          {"role": "assistant", "content": [{"type": "text", "text": "4."}]}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        convo, {"prompt": "def f(x):", "completion": " return x"}, {"text": "plain"})))
    assert load_texts(path) == ["Be brief.\n\nSum 2 and 2?\n\n4.", "def f(x): return x",
                                "plain"]
    (tmp_path / "list.json").write_text(json.dumps([convo, {"text": "plain"}]))
    assert load_texts(tmp_path / "list.json") == ["Be brief.\n\nSum 2 and 2?\n\n4.", "plain"]
    (tmp_path / "obj.json").write_text(json.dumps(convo))
    with pytest.raises(EdgeDistillError, match="obj.json: a JSON dict, not a list of records"):
        load_texts(tmp_path / "obj.json")
    share = tmp_path / "sharegpt.jsonl"  # ShareGPT's form of the same conversation
    share.write_text(json.dumps({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Sum 2 and 2?"},
        {"from": "gpt", "value": "4."}]}))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast = _train_chatml_byte_bpe(tok, "def f(x): return x\n" * 200 + "Sum 2 and 2? 4.", 300)
    fast.chat_template = CHATML
    texts = load_texts(path, chat_renderer(fast))
    assert texts[0] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSum 2 and "
                        "2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n")
    assert texts[1:] == ["def f(x): return x", "plain"]
    assert load_texts(share, chat_renderer(fast)) == texts[:1]
    ids = fast(texts[0], add_special_tokens=False)["input_ids"]  # as pack() tokenizes
    assert ids.count(fast.convert_tokens_to_ids("<|im_start|>")) == 3

    (tmp_path / "twice.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}))
    with pytest.raises(EdgeDistillError, match=r"twice.jsonl:2: the teacher's chat template "
                                               r"refused this conversation .*alternate"):
        load_texts(tmp_path / "twice.jsonl", chat_renderer(fast))

    datasets = pytest.importorskip("datasets")
    rows = [{"messages": convo["messages"][:2] + [{"role": "assistant", "content": "4."}]}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds", chat_renderer(fast)) == texts[:1]


class _Tok:
    eos_token_id = 0
    sep_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_pack_joins_documents_with_eos_and_cuts_blocks():
    blocks = pack(["abc", "de"], _Tok(), seq_len=3)
    assert blocks.tolist() == [[97, 98, 99], [0, 100, 101]]  # trailing EOS dropped
    with pytest.raises(EdgeDistillError, match="fewer than one block"):
        pack(["a"], _Tok(), seq_len=64)


def test_validation_split_is_stable_and_disjoint():
    docs = [f"document number {i} " * 5 for i in range(200)]
    a = split_documents(docs)
    assert a == split_documents(docs)
    train, val = a
    assert val and not set(train) & set(val) and len(train) + len(val) == 200
    single = split_documents(["x" * 1000], 0.1)
    assert len(single[1][0]) == 100


def test_a_large_document_among_many_small_ones_is_cut_not_held_out_whole():
    big = "b" * 100_000
    chats = [f"chat {i} " * 20 for i in range(300)]  # 300 x ~160 characters
    train, val = split_documents([big] + chats, 0.05)
    assert "b" * 90_000 in "".join(train)  # the file trains ...
    assert val[0] == "b" * 5000  # ... and its last 5% validates, beside some chats
    held = sum(len(v) for v in val) / (len(big) + sum(map(len, chats)))
    assert 0.02 < held < 0.10 and set(chats) & set(val) and set(chats) & set(train)


def test_sentences_of_splits_and_deduplicates():
    out = sentences_of(["One sentence here. Another one follows.\nOne sentence here."])
    assert out == ["One sentence here.", "Another one follows."]


def test_length_groups_cover_every_item_once_and_cut_padding():
    import random

    from edgedistill.distill.recipes import length_groups

    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    groups = length_groups(lengths, 32)
    assert sorted(i for g in groups for i in g) == list(range(1000))
    assert all(len(g) == 32 for g in groups[:-1]) and len(groups[-1]) == 1000 % 32
    padded = sum(max(lengths[i] for i in g) * len(g) for g in groups)
    random_batches = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    padded_random = sum(max(lengths[i] for i in g) * len(g) for g in random_batches)
    assert padded < 0.6 * padded_random and padded >= sum(lengths)
