"""Chunked KD against the plain formulas, and the plain formulas against first principles."""
import math

import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.losses import (HiddenStateLoss, KDConfig, chunked_kd_loss, embedding_loss,
                                        kd_loss, layer_map, topk_kd_loss)


def _setup(seed=0, n=37, hs=16, ht=24, v=50, vt=56):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, hs, generator=g, requires_grad=True)
    s_w = torch.randn(v, hs, generator=g, requires_grad=True)
    t_h = torch.randn(n, ht, generator=g)
    t_w = torch.randn(vt, ht, generator=g)  # padded teacher: more rows than the vocabulary
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return s_h, s_w, t_h, t_w, labels


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("kd_weight,temperature", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0)])
def test_chunked_equals_plain_value_and_gradient(loss, kd_weight, temperature):
    cfg = KDConfig(loss=loss, temperature=temperature, kd_weight=kd_weight, chunk_tokens=8)
    s_h, s_w, t_h, t_w, labels = _setup()
    vocab = 50
    plain = kd_loss(s_h @ s_w.T, t_h @ t_w[:vocab].T, labels, cfg, vocab)
    g_plain = torch.autograd.grad(plain, (s_h, s_w))
    chunked = chunked_kd_loss(s_h, s_w, t_h, t_w, labels, cfg, vocab)
    g_chunk = torch.autograd.grad(chunked, (s_h, s_w))
    assert torch.allclose(plain, chunked, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_plain, g_chunk):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_forward_kl_matches_definition_with_temperature():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    T = 3.0
    p, q = F.softmax(t / T, -1), F.softmax(s / T, -1)
    ref = (p * (p.log() - q.log())).sum(-1).mean() * T * T
    got = kd_loss(s, t, None, KDConfig("fkl", temperature=T))
    assert torch.allclose(got, ref, atol=1e-6)
    rkl = kd_loss(s, t, None, KDConfig("rkl", temperature=T))
    assert torch.allclose(rkl, (q * (q.log() - p.log())).sum(-1).mean() * T * T, atol=1e-6)


def test_jsd_limits_and_symmetry():
    s, t = torch.randn(6, 12), torch.randn(6, 12)
    half = kd_loss(s, t, None, KDConfig("jsd", jsd_beta=0.5))
    swapped = kd_loss(t, s, None, KDConfig("jsd", jsd_beta=0.5))
    assert torch.allclose(half, swapped, atol=1e-6) and 0 < half < math.log(2)
    assert torch.allclose(kd_loss(s, t, None, KDConfig("jsd", jsd_beta=0.0)),
                          kd_loss(s, t, None, KDConfig("fkl")))
    assert kd_loss(s, s, None, KDConfig("jsd")).abs() < 1e-6


def test_kd_weight_zero_is_plain_cross_entropy():
    s, t = torch.randn(8, 20), torch.randn(8, 20)
    labels = torch.randint(0, 20, (8,))
    assert torch.allclose(kd_loss(s, t, labels, KDConfig(kd_weight=0.0)),
                          F.cross_entropy(s, labels))


def test_topk_cache_loss_with_full_k_equals_forward_kl():
    s, t = torch.randn(5, 30), torch.randn(5, 30)
    vals, idx = t.topk(30, dim=-1)
    assert torch.allclose(topk_kd_loss(s, vals, idx, None, KDConfig(temperature=2.0)),
                          kd_loss(s, t, None, KDConfig(temperature=2.0)), atol=1e-5)


def test_unknown_loss_is_an_error():
    from edgedistill.errors import EdgeDistillError
    with pytest.raises(EdgeDistillError, match="unknown --loss 'mse'"):  # before any training
        KDConfig(loss="mse")


def test_hidden_state_and_embedding_losses():
    hs = HiddenStateLoss(layer_map(2, 6), s_width=8, t_width=12)
    assert hs.layer_map == [(1, 3), (2, 6)]
    assert layer_map(2, 6, last_only=True) == [(2, 6)]  # what encoders train on
    s_states = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
    t_states = [torch.randn(2, 5, 12) for _ in range(7)]
    loss = hs(s_states, t_states, torch.ones(2, 5))
    loss.backward()
    assert loss > 0 and hs.proj.weight.grad is not None
    e = torch.randn(4, 8)
    assert embedding_loss(e, e) < 1e-6 and embedding_loss(e, -e) > 1.9
    assert embedding_loss(e, e, "mse") == 0


def test_the_similarity_loss_compares_neighbourhoods_not_lengths():
    from edgedistill.distill.losses import similarity_loss

    torch.manual_seed(0)
    t = torch.randn(8, 16)
    assert similarity_loss(t * 3, t).item() < 1e-10  # cosines: a scaled copy loses nothing
    rot = torch.linalg.qr(torch.randn(16, 16))[0]
    assert similarity_loss(t @ rot, t).item() < 1e-10  # nor does a rotated one
    assert similarity_loss(torch.randn(8, 16), t).item() > 0.01
    assert similarity_loss(t[:1], t[:1]).item() == 0  # one sentence has no neighbours
    s = torch.randn(8, 16, requires_grad=True)
    similarity_loss(s, t).backward()
    assert s.grad.abs().sum() > 0
