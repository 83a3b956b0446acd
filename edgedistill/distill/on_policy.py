"""On-policy distillation (GKD, Agarwal et al. 2024; TRL's ``lmbda``): on a share of the
steps the student continues prompts taken from the batch with its own samples, and learns the
teacher's distribution over what it wrote, which fixes the mismatch of learning only from
text the student would not write itself."""
from __future__ import annotations

import torch


def prompt_lengths(ids: torch.Tensor, labels: torch.Tensor | None) -> list[int]:
    """Per row, the tokens kept as the prompt: those before the first labelled token
    (response data), else the first half of the block (packed text)."""
    T = ids.shape[1]
    out = []
    for r in range(ids.shape[0]):
        first = 0
        if labels is not None:
            hit = (labels[r] != -100).nonzero()
            first = int(hit[0]) if len(hit) else 0
        out.append(first if 0 < first < T - 1 else T // 2)
    return out


def student_batch(student, batch: dict, seed: int, eos: set[int], pad: int,
                  temperature: float = 1.0) -> dict:
    """The batch rewritten by ``student``: each row's prompt continued by sampling (at
    ``temperature``) up to the block's length or an end token; labels on the student's
    tokens only (its end token included), -100 on the prompt and the padding. The global RNG
    is seeded with ``seed`` for the draw and restored after, so a resumed run draws the same."""
    ids, labels = batch["input_ids"], batch.get("labels")
    B, T = ids.shape
    plen = prompt_lengths(ids, labels)
    width = max(plen)
    prompts = torch.full((B, width), pad, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros((B, width), dtype=torch.long, device=ids.device)
    for r, p in enumerate(plen):
        prompts[r, width - p:] = ids[r, :p]
        mask[r, width - p:] = 1
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if ids.is_cuda else None
    torch.manual_seed(seed)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            out = student.generate(prompts, attention_mask=mask, do_sample=True,
                                   temperature=temperature, top_k=0, top_p=1.0,
                                   max_new_tokens=T - min(plen), pad_token_id=pad,
                                   eos_token_id=sorted(eos) or None)
    finally:
        student.train(was_training)
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    gen = out[:, width:]
    new_ids = torch.full_like(ids, pad)
    new_labels = torch.full_like(ids, -100)
    for r, p in enumerate(plen):
        g = gen[r, :T - p].tolist()
        end = next((k for k, t in enumerate(g) if t in eos), None)
        g = g if end is None else g[:end + 1]
        new_ids[r, :p] = ids[r, :p]
        new_ids[r, p:p + len(g)] = torch.tensor(g, dtype=ids.dtype)
        new_labels[r, p:p + len(g)] = torch.tensor(g, dtype=ids.dtype)
    return {"input_ids": new_ids, "labels": new_labels,
            "on_policy": torch.ones((), dtype=torch.bool, device=ids.device)}
