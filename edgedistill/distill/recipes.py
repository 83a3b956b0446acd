"""What one training step needs, per model kind: the loss module, the teacher's outputs for a
batch, how a batch is made from sample indices, and validation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from edgedistill.distill.loop import DistillModule, TrainConfig, pool_embeddings
from edgedistill.distill.losses import (HiddenStateLoss, KDConfig, layer_map, mixture_logits,
                                        topk_kd_loss)
from edgedistill.distill.on_policy import student_batch
from edgedistill.distill.teacher_data import (cache_topk, end_tokens, generate_continuations,
                                              label_logp)
from edgedistill.data import spread
from edgedistill.english import EVAL_SENTENCES, heldout_available, heldout_sentences
from edgedistill.runstate import files_id, fingerprint
from edgedistill.similarity import neighbour_overlap
from edgedistill.teacher import sentence_pooling


@dataclass
class Recipe:
    module: DistillModule
    teacher_fn: object
    batch_fn: object
    val_fn: object
    train_cfg: TrainConfig
    extra: dict = field(default_factory=dict)
    policy_fn: object = None
    """policy_fn(student, batch, seed) -> the batch written by the student (on-policy KD)."""


def _hidden_loss(student, teacher, weight: float,
                 last_only: bool = False) -> HiddenStateLoss | None:
    """The hidden-state loss: every student layer against its mapped teacher layer, or
    (``last_only``, sentence encoders) the last layer's token states alone. On the main job's
    2-layer MiniLM student the last layer alone kept 0.0045 more news cosine at 800 steps
    (two seeds; README, "The main job"): a middle layer pinned to the teacher's middle
    layer costs a shallow student more than it teaches it."""
    if weight <= 0:
        return None
    s_cfg, t_cfg = student.config, teacher.config
    return HiddenStateLoss(layer_map(s_cfg.num_hidden_layers, t_cfg.num_hidden_layers,
                                     last_only), s_cfg.hidden_size, t_cfg.hidden_size)


def length_groups(lengths: list[int], batch: int) -> list[list[int]]:
    """Item indices sorted by length and cut into consecutive groups of ``batch``: every
    item in exactly one group, and each group's lengths as close as the data allows."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def causal_recipe(t, tok, teacher, student, train_blocks, val_blocks, kd: KDConfig,
                  cfg: TrainConfig, data_cfg, run_dir, device, log, train_labels=None,
                  val_labels=None, more_teachers=(), teacher_weight: float = 1.0,
                  train_routes=None, load_model=None) -> Recipe:
    """Token-level KD on (N, T) blocks of token ids. ``train_labels`` / ``val_labels``: the
    same shape, -100 where no loss is taken (prompt tokens, padding); None: every token.
    ``more_teachers``: (model, weight) of further teachers with the same tokenizer; the
    target is then the mixture, ``teacher`` weighing ``teacher_weight``; ``train_routes``:
    per block, the one teacher (0: ``teacher``, i: ``more_teachers[i - 1]``) whose
    distribution it learns alone, or -1 for the mixture. With ``data_cfg.cache_topk``, the
    further teachers are given as folders instead of models, and take turns: ``load_model``
    loads each in turn to cache its top-K logits (training and validation blocks), and frees
    it before the next; training and validation read the caches."""
    vocab = len(tok)  # padded logit rows beyond the tokenizer are cut (Qwen-style teachers)
    extra: dict = {}
    if data_cfg.generate:
        gen_path = (run_dir / "data" /
                    f"generated-eos-{data_cfg.generate}x{data_cfg.gen_tokens}.pt")
        if gen_path.is_file():
            gen, gen_labels = torch.load(gen_path)
        else:
            log(f"teacher generating {data_cfg.generate} continuations of up to "
                f"{data_cfg.gen_tokens} tokens")
            gen, gen_labels = generate_continuations(teacher, tok, train_blocks,
                                                     data_cfg.generate, data_cfg.gen_tokens,
                                                     seed=cfg.seed, device=device)
            gen_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = gen_path.with_name(f".{gen_path.name}.tmp")
            torch.save((gen, gen_labels), tmp)
            tmp.replace(gen_path)
        seq = train_blocks.shape[1]
        if gen.shape[1] >= seq:
            gen, gen_labels = gen[:, :seq], gen_labels[:, :seq]
        else:
            fill = seq - gen.shape[1]
            gen = torch.nn.functional.pad(gen, (0, fill), value=tok.eos_token_id or 0)
            gen_labels = torch.nn.functional.pad(gen_labels, (0, fill), value=-100)
        if train_labels is None:
            train_labels = train_blocks.clone()
        train_blocks = torch.cat([train_blocks, gen])
        train_labels = torch.cat([train_labels, gen_labels])
        extra["generated_sequences"] = int(len(gen))
        extra["generated_tokens"] = int((gen_labels[:, 32:] != -100).sum())
    cache = None
    n_val = min(len(val_blocks), cfg.eval_batches * cfg.batch_size)
    turns = bool(data_cfg.cache_topk and more_teachers)
    if turns:
        cache, val_cache, info = _cache_in_turns(t, teacher, teacher_weight, more_teachers,
                                                 load_model,
                                                 train_blocks, val_blocks[:n_val],
                                                 val_labels, data_cfg.cache_topk,
                                                 run_dir / "cache" / f"top{data_cfg.cache_topk}",
                                                 device, log)
        extra |= info
    elif data_cfg.cache_topk:
        log(f"caching the teacher's top-{data_cfg.cache_topk} logits for "
            f"{len(train_blocks)} blocks")
        vals, ids, bpt = cache_topk(teacher, train_blocks, data_cfg.cache_topk,
                                    run_dir / "cache" / f"top{data_cfg.cache_topk}",
                                    device=device)
        cache = [(vals, ids)]
        extra |= {"cache_topk": data_cfg.cache_topk, "cache_bytes_per_token": bpt,
                  "cache_bytes": int(vals.nbytes + ids.nbytes)}
        log(f"top-{data_cfg.cache_topk} cache: {bpt} bytes per token, "
            f"{(vals.nbytes + ids.nbytes) / 2**20:.1f} MiB")
    hidden = None if cache is not None else _hidden_loss(student, teacher, cfg.hidden_weight)
    module = DistillModule(student, False, kd, hidden, cfg.hidden_weight, vocab)
    want_states = hidden is not None
    head = teacher.get_output_embeddings().weight

    def batch_fn(idx):
        b = {"input_ids": train_blocks[idx]}
        if train_routes is not None:
            b["route"] = train_routes[idx]
        if train_labels is not None:
            b["labels"] = train_labels[idx]
        if cache is not None:  # several teachers: their top-K side by side
            b["topk_values"] = torch.cat([torch.from_numpy(v[idx].astype("float32"))
                                          for v, _ in cache], -1)
            b["topk_ids"] = torch.cat([torch.from_numpy(i[idx].astype("int64"))
                                       for _, i in cache], -1)
        return b

    def row_weights(batch):
        """Each teacher's weight: a number, or per token where rows are routed (the routed
        teacher's weight 1, the others' 0)."""
        if "route" not in batch:
            return weights
        route = batch["route"]
        w = torch.tensor(weights, device=route.device).expand(len(route), -1).clone()
        routed = route >= 0
        w[routed] = torch.nn.functional.one_hot(route[routed].long(), len(weights)).to(w.dtype)
        per_token = w.unsqueeze(1).expand(-1, batch["input_ids"].shape[1] - 1, -1)
        return list(per_token.reshape(-1, len(weights)).unbind(-1))

    def teacher_fn(batch):
        if "topk_values" in batch:
            return {"topk_values": batch["topk_values"], "topk_ids": batch["topk_ids"]} | (
                {"weights": row_weights(batch)} if turns else {})
        # right padding: a causal model's outputs at real tokens do not see the padding
        out = teacher.model(input_ids=batch["input_ids"], output_hidden_states=want_states)
        res = {"last_hidden": out.last_hidden_state[:, :-1], "head": head,
               "states": out.hidden_states if want_states else None}
        if more_teachers:  # several teachers: their hidden states and heads, and weights
            res["last_hidden"] = [res["last_hidden"]] + [
                m.model(input_ids=batch["input_ids"]).last_hidden_state[:, :-1]
                for m, _ in more_teachers]
            res["head"] = [head] + [m.get_output_embeddings().weight for m, _ in more_teachers]
            res["weights"] = row_weights(batch)
        return res

    weights = [teacher_weight] + [w for _, w in more_teachers]

    def teacher_logits(ids):
        """The (mixed) teacher's logits at temperature 1, shared vocabulary."""
        return mixture_logits([m(input_ids=ids).logits[:, :-1, :vocab].float()
                               for m in [teacher] + [m for m, _ in more_teachers]],
                              weights, 1.0)

    def val_batches():
        for i in range(0, n_val, cfg.batch_size):
            ids = val_blocks[i:i + cfg.batch_size].to(device)
            lab = (ids if val_labels is None else val_labels[i:i + cfg.batch_size].to(device))
            yield ids, lab[:, 1:]

    def val_fn(module):
        student_m = module.student
        ce_sum, kd_sum, n = 0.0, 0.0, 0
        for i, (ids, labels) in enumerate(val_batches()):
            keep = labels.reshape(-1) != -100
            s_all = student_m(input_ids=ids).logits[:, :-1, :vocab].float().reshape(-1, vocab)
            s = s_all[keep]
            ce_sum += torch.nn.functional.cross_entropy(
                s, labels.reshape(-1)[keep], reduction="sum").item()
            if turns:  # KL to the mixture of the teachers' cached top-K distributions
                rows = slice(i * cfg.batch_size, i * cfg.batch_size + len(ids))
                vals = torch.cat([torch.from_numpy(v[rows, :-1].astype("float32"))
                                  for v, _ in val_cache], -1)
                tops = torch.cat([torch.from_numpy(x[rows, :-1].astype("int64"))
                                  for _, x in val_cache], -1)
                kd_sum += topk_kd_loss(s_all, vals.reshape(len(s_all), -1).to(device),
                                       tops.reshape(len(s_all), -1).to(device),
                                       labels.reshape(-1), _KL1, weights).item() * int(keep.sum())
            else:
                tl = teacher_logits(ids).reshape(-1, vocab)[keep]
                lt, ls = tl.log_softmax(-1), s.log_softmax(-1)
                kd_sum += (lt.exp() * (lt - ls)).sum().item()
            n += int(keep.sum())
        n = max(n, 1)
        return {"loss": ce_sum / n, "ppl": math.exp(min(50.0, ce_sum / n)), "kl": kd_sum / n}

    # the teacher's own held-out loss, once: the bar the student is measured against
    if turns:  # the mixture's probability of each label, from each teacher's stored one
        extra["teacher_val_loss"] = info.pop("mixture_val_loss")
    else:
        with torch.no_grad():
            ce, count = 0.0, 0
            for ids, labels in val_batches():
                keep = labels.reshape(-1) != -100
                tl = teacher_logits(ids).reshape(-1, vocab)[keep]
                ce += torch.nn.functional.cross_entropy(tl, labels.reshape(-1)[keep],
                                                        reduction="sum").item()
                count += int(keep.sum())
        extra["teacher_val_loss"] = ce / max(count, 1)
    if kd.on_policy > 0:
        extra["on_policy"] = kd.on_policy
    return Recipe(module, teacher_fn, batch_fn, val_fn, cfg, extra,
                  _policy(teacher, tok) if kd.on_policy > 0 else None)


def _policy(teacher, tok):
    """policy_fn for on-policy steps: the student samples until the teacher's end tokens."""
    eos, pad = end_tokens(teacher, tok)

    def policy_fn(student_m, batch, seed):
        return student_batch(student_m, batch, seed, eos, pad)
    return policy_fn


_KL1 = KDConfig(loss="fkl", temperature=1.0, kd_weight=1.0)


def _cache_in_turns(t, teacher, teacher_weight: float, more, load_model, blocks, val_blocks,
                    val_labels, k: int, folder, device, log):
    """Several teachers that take turns: each teacher's top-``k`` logits over the training
    and validation blocks, and its log-probability of each validation label, cached under
    ``folder/teacherI`` with only that teacher in memory (``teacher``, the primary, is
    already loaded; ``more``: (folder, weight) of the others, loaded by ``load_model`` one at
    a time). Returns (train caches, val caches, figures for distill.json)."""
    import numpy as np

    data_key = fingerprint(int(blocks.shape[0]), int(blocks.sum()), int(val_blocks.sum()),
                           None if val_labels is None else int((val_labels != -100).sum()))
    labels = val_labels[:len(val_blocks)] if val_labels is not None else val_blocks
    train, val, logps = [], [], []
    for i, (src, _) in enumerate([(t.path, None)] + list(more)):
        key = fingerprint(files_id(src), data_key)
        held = []

        def get(src=src, i=i):
            if i == 0:
                return teacher
            if held:  # loaded for the training blocks, kept for the validation blocks
                return held[-1]
            log(f"teachers take turns: loading {src} to cache its top-{k} logits")
            held.append(load_model(src))
            return held[-1]
        d = folder / f"teacher{i}"
        train.append(cache_topk(get, blocks, k, d / "train", device=device, key=key)[:2])
        val.append(cache_topk(get, val_blocks, k, d / "val", device=device, key=key,
                              labels=labels)[:2])
        logps.append(torch.from_numpy(np.array(label_logp(d / "val"))))
        held.clear()  # this teacher leaves memory before the next one loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    w = torch.tensor([teacher_weight] + [x for _, x in more]).log().view(-1, 1, 1)
    mix = torch.logsumexp(torch.stack(logps) + w, dim=0)  # log sum_i w_i p_i(label)
    kept = labels[:, 1:] != -100
    return train, val, {"cache_topk": k, "cache_bytes_per_token": 6 * k * len(train),
                        "teachers_took_turns": len(train),
                        "mixture_val_loss": float(-mix[kept].sum() / kept.sum().clamp(min=1))}


def encoder_recipe(t, tok, teacher, student, train_items, val_items, kd, cfg: TrainConfig,
                   data_cfg, run_dir, device, log) -> Recipe:

    pooling = sentence_pooling(t.path)
    hidden = _hidden_loss(student, teacher, cfg.hidden_weight, last_only=True)
    module = DistillModule(student, True, kd, hidden, cfg.hidden_weight, len(tok), pooling,
                           cfg.similarity_weight)

    def encode(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=data_cfg.seq_len,
                  return_tensors="pt")
        return {k: v for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}

    # Length-grouped batches (as transformers' group_by_length): sentences sorted by length are
    # cut into groups of one batch each, and the sampler's first index picks the group. A random
    # batch of stdlib sentences pads to ~2.5x its mean length; a group pads to almost none.
    groups = length_groups([len(ids) for ids in tok(list(train_items), truncation=True,
                                                    max_length=data_cfg.seq_len)["input_ids"]],
                           cfg.batch_size)
    group_of = {item: g for g, members in enumerate(groups) for item in members}

    def batch_fn(idx):
        return encode([train_items[i] for i in groups[group_of[int(idx[0])]]])

    def teacher_fn(batch):
        out = teacher(**batch, output_hidden_states=True)
        return {"embedding": pool_embeddings(out.last_hidden_state, batch["attention_mask"],
                                             pooling),
                "states": out.hidden_states}

    n = cfg.eval_batches * 32
    held = sorted(spread(val_items, n), key=len)  # every source
    # general English no training source shares (english.py), when installed
    general = (sorted(heldout_sentences()[:EVAL_SENTENCES], key=len) if heldout_available()
               else [])

    refs: dict[str, torch.Tensor] = {}  # the frozen teacher's embeddings, once per set

    def embed(model_fn, texts):
        out = []
        for i in range(0, len(texts), 32):
            b = {k: v.to(device) for k, v in encode(texts[i:i + 32]).items()}
            out.append(model_fn(b).float())  # bf16 teacher: compare in fp32
        return torch.cat(out)

    def val_fn(module):
        def student_emb(b):
            return pool_embeddings(module.student(**b).last_hidden_state, b["attention_mask"],
                                   pooling)

        out = {}
        for suffix, texts in (("", held), ("_general_english", general)):
            if not texts:
                continue
            if suffix not in refs:
                refs[suffix] = embed(lambda b: teacher_fn(b)["embedding"], texts)
            s, te = embed(student_emb, texts), refs[suffix]
            out[f"cosine{suffix}"] = torch.nn.functional.cosine_similarity(
                s, te, dim=-1).mean().item()
            if suffix:
                out[f"top10{suffix}"] = neighbour_overlap(s.cpu().numpy(), te.cpu().numpy())
        return out

    return Recipe(module, teacher_fn, batch_fn, val_fn, cfg, {"pooling": pooling.mode})
