"""Distillation losses.

Token-level KD on logits: forward KL (teacher || student), reverse KL (student || teacher) and
generalised JSD(beta), at temperature T (scaled by T**2, as in Hinton et al.), mixed with the
usual cross-entropy on the data:

    loss = kd_weight * KD + (1 - kd_weight) * CE

Memory: for large vocabularies the (tokens x vocab) logits dominate. :func:`chunked_kd_loss`
takes the *hidden states* and LM-head weights of both models and computes logits, loss and
gradients a chunk of tokens at a time (a fused linear KD, after Liger-Kernel's fused linear
cross-entropy): the full (B*T, V) logit or probability tensors never exist. :func:`kd_loss`
is the plain formula on full logits, kept as the reference the chunked one is tested against.

Teachers whose logit dimension is padded beyond the tokenizer (Qwen: 151936 rows for 151665
tokens) are cut to the shared vocabulary first (``vocab`` argument).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgedistill.distill.config import KDConfig


def _divergence(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: KDConfig) -> torch.Tensor:
    """Sum over tokens of the divergence at temperature T (fp32). (N, V), (N, V) -> ()."""
    T = cfg.temperature
    s_log = F.log_softmax(s_logits.float() / T, dim=-1)
    t_log = F.log_softmax(t_logits.float() / T, dim=-1)
    if cfg.loss == "fkl":
        d = (t_log.exp() * (t_log - s_log)).sum(-1)
    elif cfg.loss == "rkl":
        d = (s_log.exp() * (s_log - t_log)).sum(-1)
    else:  # generalised JSD: beta * KL(t || m) + (1 - beta) * KL(s || m), m = beta t + (1-beta) s
        b = cfg.jsd_beta
        if b <= 0.0:
            d = (t_log.exp() * (t_log - s_log)).sum(-1)
        elif b >= 1.0:
            d = (s_log.exp() * (s_log - t_log)).sum(-1)
        else:
            m_log = torch.logsumexp(torch.stack([t_log + math.log(b), s_log + math.log(1 - b)]),
                                    dim=0)
            d = (b * (t_log.exp() * (t_log - m_log)).sum(-1)
                 + (1 - b) * (s_log.exp() * (s_log - m_log)).sum(-1))
    return d.sum() * T * T


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor | None,
            cfg: KDConfig, vocab: int | None = None) -> torch.Tensor:
    """Plain (unchunked) KD + CE on full logits (N, V). Labels -100 are ignored, for both
    terms. ``vocab`` cuts both to the shared vocabulary (padded teachers)."""
    v = vocab or min(s_logits.shape[-1], t_logits.shape[-1])
    s, t = s_logits[..., :v].reshape(-1, v), t_logits[..., :v].reshape(-1, v)
    keep = (labels.reshape(-1) != -100) if labels is not None else torch.ones(len(s), dtype=bool)
    n = keep.sum().clamp(min=1)
    total = s.new_zeros((), dtype=torch.float32)
    if cfg.kd_weight > 0:
        total = total + cfg.kd_weight * _divergence(s[keep], t[keep], cfg) / n
    if cfg.kd_weight < 1 and labels is not None:
        ce = F.cross_entropy(s[keep].float(), labels.reshape(-1)[keep], reduction="sum")
        total = total + (1 - cfg.kd_weight) * ce / n
    return total


def mixture_logits(teacher_logits: list[torch.Tensor], weights: list,
                   temperature: float) -> torch.Tensor:
    """Logits whose tempered softmax is the weighted mixture of the teachers' tempered
    distributions: ``T * log(sum_i w_i softmax(z_i / T))``, so that :func:`_divergence`
    (which divides by T again) sees the mixture. One teacher: its logits unchanged. A weight
    is a number, or a tensor of one weight per token (rows routed to one teacher: 0 or 1)."""
    if len(teacher_logits) == 1:
        return teacher_logits[0]

    def log_w(w, z):
        if torch.is_tensor(w):
            return torch.log(w.to(z.device).float()).unsqueeze(-1)  # log 0 = -inf: left out
        return math.log(w)
    logs = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) + log_w(w, z)
                        for z, w in zip(teacher_logits, weights)])
    return temperature * torch.logsumexp(logs, dim=0)


def _forward_kl(cfg: KDConfig) -> bool:
    return cfg.loss == "fkl" or (cfg.loss == "jsd" and cfg.jsd_beta <= 0.0)


def _fkl_chunk(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor,
               cfg: KDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, its gradient with respect to the student's logits) of one chunk, for
    forward KL at temperature T mixed with CE, in closed form: d/dz of T^2 KL(p_t || p_s) is
    T (p_s - p_t), of CE softmax(z) - onehot(label). Rows labelled -100 add nothing. Made in
    place where it can: a chunk holds at most five (chunk, V) float tensors at once."""
    T, w_kd = cfg.temperature, cfg.kd_weight
    keep = (labels != -100).unsqueeze(-1)
    z = s_logits.float()
    total = z.new_zeros(())
    grad = torch.zeros_like(z)
    if w_kd > 0:
        t_log = torch.log_softmax(t_logits.float() / T, dim=-1)
        p_t = t_log.exp()
        s_log = torch.log_softmax(z / T if T != 1 else z, dim=-1)
        kl = (p_t * t_log.sub_(s_log)).sum(-1, keepdim=True)  # t_log now t_log - s_log
        total += w_kd * T * T * (kl * keep).sum()
        grad += s_log.exp_().sub_(p_t).mul_(w_kd * T)  # s_log now T (p_s - p_t) * w
        del t_log, p_t, s_log
    if w_kd < 1:
        log_p = torch.log_softmax(z, dim=-1)
        safe = labels.clamp(min=0).unsqueeze(-1)
        total += (1 - w_kd) * -(log_p.gather(-1, safe) * keep).sum()
        p = log_p.exp_()
        p.scatter_add_(-1, safe, torch.full_like(safe, -1, dtype=p.dtype))
        grad += p.mul_(1 - w_kd)
    return total, grad.mul_(keep)


class _ChunkedLinearKD(torch.autograd.Function):
    """Loss and its gradients, one chunk of tokens at a time; saves only the gradients of the
    (small) inputs for backward, never the logits."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, labels, cfg: KDConfig, vocab: int,
                more: tuple = (), weights: tuple = ()):
        n_tokens = (labels != -100).sum().clamp(min=1)
        g_hidden = torch.zeros_like(s_hidden)
        g_weight = torch.zeros_like(s_weight)
        total = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
        for i in range(0, s_hidden.shape[0], cfg.chunk_tokens):
            sl = slice(i, i + cfg.chunk_tokens)
            lab = labels[sl]
            if not (lab != -100).any():
                continue
            with torch.no_grad():
                t_logits = t_hidden[sl] @ t_weight[:vocab].T
                if more:  # further teachers (hidden states, head): their mixture
                    t_logits = mixture_logits(
                        [t_logits] + [h[sl] @ w[:vocab].T for h, w in more],
                        [w[sl] if torch.is_tensor(w) else w for w in weights],
                        cfg.temperature)
            if _forward_kl(cfg):  # the gradient in closed form: fewer passes over (chunk, V)
                h = s_hidden[sl].detach()
                w = s_weight.detach()[:vocab]
                with torch.no_grad():
                    loss, g = _fkl_chunk(h @ w.T, t_logits, lab, cfg)
                    g_hidden[sl] += g.to(w.dtype) @ w
                    g_weight[:vocab] += g.T.to(h.dtype) @ h
            else:
                with torch.enable_grad():
                    h = s_hidden[sl].detach().requires_grad_(True)
                    w = s_weight.detach().requires_grad_(True)
                    s_logits = h @ w[:vocab].T  # (chunk, V)
                    loss = kd_loss(s_logits, t_logits, lab, cfg, vocab) * (lab != -100).sum()
                    gh, gw = torch.autograd.grad(loss, (h, w))
                g_hidden[sl] += gh
                g_weight += gw
            total += loss.detach()
        ctx.save_for_backward(g_hidden / n_tokens, g_weight / n_tokens)
        return total / n_tokens

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight = ctx.saved_tensors
        return g_hidden * grad_out, g_weight * grad_out, None, None, None, None, None, None, None


def chunked_kd_loss(s_hidden: torch.Tensor, s_head: torch.Tensor, t_hidden, t_head,
                    labels: torch.Tensor, cfg: KDConfig, vocab: int | None = None,
                    weights: list[float] | None = None) -> torch.Tensor:
    """KD + CE from final hidden states and LM-head weights, chunked over tokens.

    s_hidden (N, Hs), s_head (Vs, Hs), t_hidden (N, Ht), t_head (Vt, Ht), labels (N,) with -100
    for ignored positions. Equal to ``kd_loss(s_hidden @ s_head.T, t_hidden @ t_head.T, ...)``
    in value and gradient, in O(chunk x V) extra memory. Gradients flow to s_hidden and s_head.
    Several teachers (same tokenizer): ``t_hidden`` and ``t_head`` as lists, and ``weights``:
    the target is the weighted mixture of their distributions (:func:`mixture_logits`).
    """
    if isinstance(t_hidden, (list, tuple)):
        more = tuple((h.detach(), w.detach()) for h, w in zip(t_hidden[1:], t_head[1:]))
        t_hidden, t_head = t_hidden[0], t_head[0]
        weights = tuple(weights or [1 / (len(more) + 1)] * (len(more) + 1))
    else:
        more, weights = (), ()
    v = vocab or min(s_head.shape[0], t_head.shape[0], *(w.shape[0] for _, w in more))
    return _ChunkedLinearKD.apply(s_hidden, s_head, t_hidden.detach(), t_head.detach(),
                                  labels, cfg, v, more, weights)


def topk_kd_loss(s_logits: torch.Tensor, t_values: torch.Tensor, t_indices: torch.Tensor,
                 labels: torch.Tensor | None, cfg: KDConfig,
                 weights: list | None = None) -> torch.Tensor:
    """Forward KL against a cached top-K teacher distribution (renormalised over its K ids).
    s_logits (N, V); t_values / t_indices (N, K) teacher logits and their ids. Several
    teachers: their caches side by side, (N, n*K), and ``weights`` (n numbers, or n tensors of
    one weight per row): the target is the weighted mixture of their top-K distributions,
    each renormalised over its own K ids (ids two teachers share add up)."""
    T = cfg.temperature
    keep = labels.reshape(-1) != -100 if labels is not None else slice(None)
    s_log = F.log_softmax(s_logits.float() / T, dim=-1)[keep]
    n = max(1, int(s_log.shape[0]))
    if weights is None:
        t_log = F.log_softmax(t_values.float()[keep] / T, dim=-1)  # over the K cached ids
        kd = (t_log.exp() * (t_log - s_log.gather(-1, t_indices[keep].long()))).sum()
    else:
        groups = t_values.float()[keep].chunk(len(weights), dim=-1)
        scale = [w[keep].unsqueeze(-1).float() if torch.is_tensor(w) else w for w in weights]
        probs = torch.cat([F.softmax(v / T, dim=-1) * w for v, w in zip(groups, scale)], -1)
        q = torch.zeros_like(s_log).scatter_add_(-1, t_indices[keep].long(), probs)
        kd = (torch.xlogy(q, q) - q * s_log).sum()
    total = cfg.kd_weight * kd * T * T / n
    if cfg.kd_weight < 1 and labels is not None:
        ce = F.cross_entropy(s_logits.float()[keep], labels.reshape(-1)[keep])
        total = total + (1 - cfg.kd_weight) * ce
    return total


class HiddenStateLoss(torch.nn.Module):
    """MSE between student and teacher hidden states over a layer map, with a learned linear
    projection when widths differ. ``layer_map``: [(student_layer, teacher_layer), ...]."""

    def __init__(self, layer_map: list[tuple[int, int]], s_width: int, t_width: int):
        super().__init__()
        self.layer_map = list(layer_map)
        self.proj = (torch.nn.Linear(s_width, t_width, bias=False)
                     if s_width != t_width else torch.nn.Identity())

    def forward(self, s_states, t_states, mask: torch.Tensor | None = None) -> torch.Tensor:
        total = 0.0
        for si, ti in self.layer_map:
            diff = (self.proj(s_states[si]) - t_states[ti].detach()).float().pow(2).mean(-1)
            if mask is not None:
                m = mask.float()
                total = total + (diff * m).sum() / m.sum().clamp(min=1)
            else:
                total = total + diff.mean()
        return total / max(1, len(self.layer_map))


def embedding_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Sentence-embedding KD for encoders: 1 - cosine, or MSE. (B, H) each (same width, or
    projected first)."""
    if kind == "cosine":
        return (1 - F.cosine_similarity(s_emb.float(), t_emb.float().detach(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(s_emb.float(), t_emb.float().detach())
    raise ValueError(f"unknown embedding loss {kind!r}; use cosine or mse")


def similarity_loss(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """In-batch relational KD for encoders: the mean squared difference between the student's
    and the teacher's cosine-similarity matrices of the batch's sentences (diagonal left out).
    It trains what search and clustering read, which sentences lie near which."""
    s = F.normalize(s_emb.float(), dim=-1)
    t = F.normalize(t_emb.float().detach(), dim=-1)
    n = s.shape[0]
    if n < 2:
        return s.new_zeros(())
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    return ((s @ s.T - t @ t.T)[off] ** 2).mean()


def layer_map(n_student: int, n_teacher: int, last_only: bool = False) -> list[tuple[int, int]]:
    """Student layer i matched to teacher layer round(i * (Lt/Ls)), by hidden-state index
    (0 = embeddings, L = last layer), so the last maps to the last. ``last_only``: the last
    layer's pair alone (what encoders train on: ``recipes._hidden_loss``)."""
    if last_only:
        return [(n_student, n_teacher)]
    return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
