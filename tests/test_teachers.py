"""Several teachers (issue 27, part 4): the mixture of their distributions in the chunked loss,
the largest planned from, weights, a teacher with another tokenizer transferring its responses
as text, and the errors. Tiny models built here."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.config import DistillConfig, KDConfig
from edgedistill.distill.losses import chunked_kd_loss, kd_loss, mixture_logits, topk_kd_loss
from edgedistill.distill.teachers import panel
from edgedistill.errors import EdgeDistillError


def test_the_mixture_is_the_weighted_sum_of_the_tempered_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(5, 11), torch.randn(5, 11)
    assert torch.equal(mixture_logits([a], [1.0], 2.0), a)
    m = mixture_logits([a, b], [0.25, 0.75], 2.0)
    want = 0.25 * F.softmax(a / 2, -1) + 0.75 * F.softmax(b / 2, -1)
    assert torch.allclose(F.softmax(m / 2, -1), want, atol=1e-6)


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd"])
def test_chunked_loss_with_two_teachers_matches_the_plain_formula(loss):
    torch.manual_seed(1)
    n, h, v = 37, 8, 13
    s_h = torch.randn(n, h, requires_grad=True)
    s_w = torch.randn(v, h, requires_grad=True)
    t1, w1, t2, w2 = torch.randn(n, 6), torch.randn(v, 6), torch.randn(n, 9), torch.randn(v, 9)
    labels = torch.randint(0, v, (n,))
    labels[:5] = -100
    cfg = KDConfig(loss=loss, temperature=1.5, kd_weight=0.7, chunk_tokens=8)
    got = chunked_kd_loss(s_h, s_w, [t1, t2], [w1, w2], labels, cfg, weights=[0.4, 0.6])
    got.backward()
    g_h, g_w = s_h.grad.clone(), s_w.grad.clone()
    s_h.grad, s_w.grad = None, None
    mix = mixture_logits([t1 @ w1.T, t2 @ w2.T], [0.4, 0.6], 1.5)
    want = kd_loss(s_h @ s_w.T, mix, labels, cfg)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(g_h, s_h.grad, atol=1e-5) and torch.allclose(g_w, s_w.grad, atol=1e-5)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, trained_llama):
    """trained_llama, a larger llama with its tokenizer, and one with another tokenizer."""
    from edgedistill.toy import make_causal_lm
    root = tmp_path_factory.mktemp("teachers")
    big = make_causal_lm(root / "big", hidden=96, layers=3, heads=4, kv_heads=2, ffn=192,
                         vocab=320, steps=30, seq_len=64, batch=8, chars=150_000, lr=1e-2)
    other = make_causal_lm(root / "other", hidden=64, layers=2, heads=4, kv_heads=2, ffn=128,
                           vocab=280, steps=30, seq_len=64, batch=8, chars=60_000, lr=1e-2)
    return trained_llama, big, other


def test_panel_mixes_same_tokenizer_teachers_and_plans_from_the_largest(teachers):
    small, big, other = teachers
    pn = panel([small, big], (1, 3), prompts=False)
    assert pn.primary.path == big
    assert [(t.path, w) for t, w in pn.mixed] == [(big, 0.75), (small, 0.25)]
    pn = panel([small, big, other], None, prompts=True)
    assert [t.path for t in pn.text_only] == [other] and len(pn.mixed) == 2
    with pytest.raises(EdgeDistillError, match="another tokenizer .* no prompts"):
        panel([small, other], None, prompts=False)
    with pytest.raises(EdgeDistillError, match="3 weights for 2 teachers"):
        panel([small, big], (1, 2, 3), prompts=False)
    with pytest.raises(EdgeDistillError, match="positive numbers"):
        DistillConfig(teacher_weights=(1, -1))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "edgedistill", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_two_teachers_from_the_cli(teachers, tmp_path):
    small, big, other = teachers
    common = ["--steps", "3", "--batch-size", "2", "--seq-len", "32", "--speedup", "1",
              "--max-params", "200k"]
    r = _run("distill", "--teacher", small, "--teacher", big, "--teacher-weights", "0.25,0.75",
             "--out", tmp_path / "mix", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "mix" / "distill.json").read_text())
    assert [(x["teacher"], x["weight"]) for x in d["teachers"]] == [(str(big), 0.75),
                                                                    (str(small), 0.25)]
    plan = json.loads((tmp_path / "mix" / "plan.json").read_text())
    assert plan["teacher"]["path"] == str(big)  # planned from the largest
    assert "KD on the mixture 0.75 x big + 0.25 x" in r.stderr
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def h_{i}(x):\n    "}) + "\n"
                               for i in range(12)))
    r = _run("distill", "--teacher", small, "--teacher", other, "--data", prompts,
             "--max-new-tokens", "8", "--out", tmp_path / "text", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "text" / "distill.json").read_text())
    assert d["data"]["responses"] == 24  # each teacher answered each prompt
    assert d["teachers"][1] == {"teacher": str(other), "mixed": False,
                                "transfers": "responses (text)"}
    assert "another tokenizer; its responses transfer as text only" in r.stderr
    rows = [json.loads(x) for f in (tmp_path / "text" / "data").glob("responses-*.jsonl")
            for x in f.read_text().splitlines()]
    assert len(rows) == 24  # both teachers' responses cached, each in its own file
    bad = _run("distill", "--teacher", small, "--teacher", other, "--out", tmp_path / "bad",
               *common)
    assert bad.returncode == 2 and "only its written text can transfer" in bad.stderr
    bad = _run("distill", "--teacher", small, "--teacher-weights", "1", "--out",
               tmp_path / "bad", *common)
    assert bad.returncode == 2 and "one was given" in bad.stderr
    bad = _run("distill", "--teacher", small, "--teacher", big, "--stages", "2", "--out",
               tmp_path / "bad", *common)
    assert bad.returncode == 2 and "do not combine with --progressive / --stages" in bad.stderr


def test_routed_tokens_learn_their_teacher_alone():
    """Per-token weights 0/1 (a routed block) give that teacher's distribution exactly."""
    torch.manual_seed(2)
    n, h, v = 12, 8, 13
    s_h, s_w = torch.randn(n, h), torch.randn(v, h)
    t1, w1, t2, w2 = torch.randn(n, 6), torch.randn(v, 6), torch.randn(n, 9), torch.randn(v, 9)
    labels = torch.randint(0, v, (n,))
    cfg = KDConfig(loss="fkl", chunk_tokens=5)
    first = torch.tensor([1.0] * 6 + [0.5] * 6)  # 6 tokens routed to teacher 1, 6 mixed
    got = chunked_kd_loss(s_h, s_w, [t1, t2], [w1, w2], labels, cfg,
                          weights=[first, 1 - first])
    half = mixture_logits([t1 @ w1.T, t2 @ w2.T], [0.5, 0.5], 1.0)
    target = torch.cat([(t1 @ w1.T)[:6], half[6:]])
    want = kd_loss(s_h @ s_w.T, target, labels, cfg)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_route_sends_files_to_their_teacher(teachers, tmp_path):
    from edgedistill.data import stdlib_sentences, stdlib_source
    small, big, other = teachers
    data = tmp_path / "data"
    data.mkdir()
    (data / "code.txt").write_text(stdlib_source(20_000))
    (data / "prose.txt").write_text("\n".join(stdlib_sentences()[:1500]))
    common = ["--steps", "2", "--batch-size", "2", "--seq-len", "32", "--speedup", "1",
              "--max-params", "200k", "--data", data]
    r = _run("distill", "--teacher", small, "--teacher", big, "--route", "code*=1",
             "--route", "prose.txt=2", "--out", tmp_path / "r", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "r" / "distill.json").read_text())["data"]
    assert set(d["routed_blocks"]) == {str(small), str(big)} and all(
        n > 0 for n in d["routed_blocks"].values())
    for route, msg in (("nothing*=1", "matches no file"), ("code*=3", "there are 2 teachers")):
        bad = _run("distill", "--teacher", small, "--teacher", big, "--route", route,
                   "--out", tmp_path / "bad", *common)
        assert bad.returncode == 2 and msg in bad.stderr, bad.stderr[-500:]


def test_cached_top_k_of_two_teachers_is_their_mixture():
    """Full-K caches of two teachers side by side train toward the same target as their
    mixture, including per-row (routed) weights; a cut K renormalises each teacher alone."""
    torch.manual_seed(3)
    s, a, b = torch.randn(6, 17), torch.randn(6, 17), torch.randn(6, 17)
    labels = torch.randint(0, 17, (6,))
    cfg = KDConfig(temperature=2.0, kd_weight=0.8)
    (va, ia), (vb, ib) = a.topk(17, dim=-1), b.topk(17, dim=-1)
    vals, ids = torch.cat([va, vb], -1), torch.cat([ia, ib], -1)
    got = topk_kd_loss(s, vals, ids, labels, cfg, [0.3, 0.7])
    want = kd_loss(s, mixture_logits([a, b], [0.3, 0.7], 2.0), labels, cfg)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    first = torch.tensor([1.0] * 3 + [0.5] * 3)
    got = topk_kd_loss(s, vals, ids, labels, cfg, [first, 1 - first])
    half = mixture_logits([a, b], [0.5, 0.5], 2.0)
    want = (kd_loss(s[:3], a[:3], labels[:3], cfg) + kd_loss(s[3:], half[3:], labels[3:], cfg)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    (va, ia), (vb, ib) = a.topk(4, dim=-1), b.topk(4, dim=-1)
    only_a = topk_kd_loss(s, torch.cat([va, vb], -1), torch.cat([ia, ib], -1), None, cfg,
                          [1.0, 0.0])
    assert only_a.item() == pytest.approx(topk_kd_loss(s, va, ia, None, cfg).item(), rel=1e-5)


def test_teachers_take_turns_through_a_top_k_cache(teachers, tmp_path):
    """With --cache-topk, each further teacher is loaded alone to cache its top-K logits;
    the teachers' held-out loss is the exact mixture's, as when they are all held."""
    small, big, _ = teachers
    common = ["--teacher", small, "--teacher", big, "--steps", "3", "--batch-size", "2",
              "--seq-len", "32", "--speedup", "1", "--max-params", "200k"]
    held = _run("distill", *common, "--out", tmp_path / "held")
    turns = _run("distill", *common, "--cache-topk", "8", "--out", tmp_path / "turns")
    assert held.returncode == 0 and turns.returncode == 0, turns.stderr[-3000:]
    assert turns.stderr.count("teachers take turns: loading") == 1  # the primary is held
    d = json.loads((tmp_path / "turns" / "distill.json").read_text())
    ref = json.loads((tmp_path / "held" / "distill.json").read_text())
    assert d["teachers_took_turns"] == 2 and d["cache_bytes_per_token"] == 2 * 8 * 6
    assert d["teacher_val_loss"] == pytest.approx(ref["teacher_val_loss"], rel=1e-4)
    assert 0 < d["validation"]["kl"] < 20 and d["validation"]["loss"] > 0
    for i in (0, 1):
        for part in ("train", "val"):
            assert (tmp_path / "turns" / "cache" / "top8" / f"teacher{i}" / part
                    / "complete").is_file()
    again = _run("distill", *common, "--cache-topk", "8", "--steps", "4", "--resume",
                 "--out", tmp_path / "turns")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teachers take turns: loading" not in again.stderr  # the caches are reused
