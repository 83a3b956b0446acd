"""What the teacher produces for distillation beyond its logits on the user's text: sampled
continuations (sequence-level KD) and a cache of its top-k logits."""
from __future__ import annotations

import json
from pathlib import Path


def end_tokens(model, tok) -> tuple[set[int], int]:
    """(the ids that end a generation: the model's generation config's and the tokenizer's
    EOS, the id to pad with: the tokenizer's pad, else the smallest end id)."""
    ids = model.generation_config.eos_token_id
    eos = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    return eos, tok.pad_token_id if tok.pad_token_id is not None else min(eos, default=0)


def generate_continuations(teacher, tok, blocks, n: int, new_tokens: int, prompt_len: int = 32,
                           seed: int = 0, device="cpu", progress=None):
    """Sequence-level KD data: the teacher samples ``n`` continuations of up to
    ``new_tokens`` tokens of prompts drawn from ``blocks``, stopping where it ends (EOS).
    Returns (ids, labels), each (n, prompt_len + new_tokens): labels are the ids up to and
    including the end token, and -100 on the padding after it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(blocks), (n,), generator=g)
    out = []
    torch.manual_seed(seed)
    eos, pad = end_tokens(teacher, tok)
    for i in range(0, n, 8):
        prompts = blocks[rows[i:i + 8], :prompt_len].to(device)
        with torch.inference_mode():
            seq = teacher.generate(prompts, attention_mask=torch.ones_like(prompts),
                                   do_sample=True, top_k=50, temperature=1.0,
                                   max_new_tokens=new_tokens, pad_token_id=pad,
                                   eos_token_id=sorted(eos) or None)
        seq = seq.cpu()
        width = prompt_len + new_tokens
        if seq.shape[1] < width:  # every row ended early
            seq = torch.nn.functional.pad(seq, (0, width - seq.shape[1]), value=pad)
        out.append(seq)
        if progress:
            progress(min(i + 8, n))
    ids = torch.cat(out)
    labels = ids.clone()
    for r in range(len(ids)):
        gen = ids[r, prompt_len:].tolist()
        end = next((p for p, t in enumerate(gen) if t in eos), None)
        if end is not None:
            labels[r, prompt_len + end + 1:] = -100
    return ids, labels


def cache_topk(teacher, blocks, k: int, path, batch: int = 4, device="cpu", progress=None,
               key: str = "", labels=None):
    """Store the teacher's top-``k`` logits of every position of ``blocks`` under ``path``
    (values fp16, ids int32, as .npy memmaps). Returns (values, ids, bytes_per_token).

    ``teacher``: the model, or a function that loads it, called only when the cache is not
    already complete for these blocks, ``k`` and ``key`` (what else identifies the teacher
    and the data). ``labels`` ((n, t), -100 where no loss is taken): also store the teacher's
    log-probability of each next label, ``label_logp.npy`` (n, t - 1), 0 where ignored;
    :func:`label_logp` reads it."""
    import numpy as np
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n, t = blocks.shape
    done = path / "complete"
    vals_f, ids_f = path / "values.npy", path / "ids.npy"
    marker = {"n": n, "t": t, "k": k} | ({"key": key} if key else {})
    if done.is_file() and json.loads(done.read_text()) == marker:
        return (np.load(vals_f, mmap_mode="r"), np.load(ids_f, mmap_mode="r"), k * 6)
    done.unlink(missing_ok=True)
    model = teacher() if callable(teacher) and not isinstance(teacher, torch.nn.Module) \
        else teacher
    vals = np.lib.format.open_memmap(vals_f, "w+", np.float16, (n, t, k))
    ids = np.lib.format.open_memmap(ids_f, "w+", np.int32, (n, t, k))
    lp = (np.lib.format.open_memmap(path / "label_logp.npy", "w+", np.float32, (n, t - 1))
          if labels is not None else None)
    with torch.inference_mode():
        for i in range(0, n, batch):
            logits = model(input_ids=blocks[i:i + batch].to(device)).logits.float()
            top = logits.topk(k, dim=-1)
            vals[i:i + batch] = top.values.cpu().numpy().astype(np.float16)
            ids[i:i + batch] = top.indices.cpu().numpy().astype(np.int32)
            if lp is not None:
                lab = labels[i:i + batch, 1:].to(logits.device)
                got = logits[:, :-1].log_softmax(-1).gather(-1, lab.clamp(min=0).unsqueeze(-1))
                lp[i:i + batch] = got.squeeze(-1).masked_fill(lab == -100, 0).cpu().numpy()
            if progress:
                progress(min(i + batch, n))
    for m in (vals, ids) + ((lp,) if lp is not None else ()):
        m.flush()
    done.write_text(json.dumps(marker))
    return np.load(vals_f, mmap_mode="r"), np.load(ids_f, mmap_mode="r"), k * 6


def label_logp(path):
    """The teacher's log-probabilities of the next labels that :func:`cache_topk` stored."""
    import numpy as np

    return np.load(Path(path) / "label_logp.npy", mmap_mode="r")
