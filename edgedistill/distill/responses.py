"""Prompts in, teacher responses out: response (and reasoning) distillation.

The teacher answers each prompt, rendered with its chat template, ``num_responses`` times
(greedy, or sampled at ``gen_temperature`` / ``top_p``), in batches. Each finished batch is
appended to a JSONL file in the run folder whose name is the key of the teacher, the
settings and the prompts: a killed generation keeps what it wrote and resumes, a changed
teacher or setting writes a new file. Responses may be filtered (``keep_if`` on the final
line, ``drop_unfinished``). The student then trains on prompt + response with the loss on
the response tokens only (labels -100 on the prompt and the padding)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from edgedistill.data import is_holdout
from edgedistill.distill.config import DataConfig
from edgedistill.distill.teacher_data import end_tokens
from edgedistill.errors import EdgeDistillError
from edgedistill.runstate import fingerprint

GEN_BATCH = 8
"""Prompts per generate() call."""


def render_prompts(tok, prompts: list[str | list]) -> list[str]:
    """Each prompt as the text the teacher continues: a conversation (or a bare prompt, as
    one user turn) through its chat template with the generation prompt; without a template,
    a bare prompt is continued as it is and a conversation is an error."""
    template = getattr(tok, "chat_template", None)
    out = []
    for i, p in enumerate(prompts):
        if template:
            msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
            try:
                out.append(tok.apply_chat_template(msgs, tokenize=False,
                                                   add_generation_prompt=True))
            except Exception as e:  # jinja's TemplateError
                raise EdgeDistillError(
                    f"prompt {i}: the teacher's chat template refused it "
                    f"({type(e).__name__}: {str(e)[:160]}).",
                    "fix the conversation (roles in the order the template expects)") from None
        elif isinstance(p, list):
            raise EdgeDistillError(
                f"prompt {i} is a conversation, and the teacher's tokenizer has no chat "
                "template to render it with.",
                'write prompts as {"prompt": "..."} (continued as they are), or use a teacher '
                "with a chat template")
        else:
            out.append(p)
    return out


def generate_responses(model, tok, texts: list[str], cfg: DataConfig, folder: Path, key: str,
                       seed: int = 0, device="cpu", log=print) -> list[dict]:
    """The teacher's responses to ``texts`` (rendered prompts): rows ``{"i": prompt index,
    "j": response index, "ids": response token ids (its end token included when it ended),
    "text", "finished"}``, cached in ``folder/responses-<key>.jsonl`` and resumed from it."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"responses-{key[:16]}.jsonl"
    rows: dict[tuple[int, int], dict] = {}
    if path.is_file():
        text = path.read_text()
        if text and not text.endswith("\n"):  # cut the line a killed run was writing
            text = text[:text.rfind("\n") + 1]
            with path.open("r+", encoding="utf-8") as f:
                f.truncate(len(text.encode("utf-8")))
        for line in text.splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # the line a killed run was writing
                continue
            rows[(r["i"], r["j"])] = r
    n = cfg.num_responses
    todo = [i for i in range(len(texts)) if any((i, j) not in rows for j in range(n))]
    if rows:
        log(f"responses: {len(texts) - len(todo)} of {len(texts)} prompts already answered "
            f"({path.name})")
    if todo:
        eos, pad = end_tokens(model, tok)
        enc = [tok(texts[i], add_special_tokens=False)["input_ids"] for i in todo]
        order = sorted(range(len(todo)), key=lambda k: len(enc[k]))  # similar lengths together
        sample = cfg.gen_temperature > 0
        bar = tqdm(total=len(todo), desc="teacher responses", unit="prompt")
        with path.open("a", encoding="utf-8") as f:
            for b in range(0, len(order), GEN_BATCH):
                ks = order[b:b + GEN_BATCH]
                width = max(len(enc[k]) for k in ks)
                ids = torch.tensor([[pad] * (width - len(enc[k])) + enc[k] for k in ks])
                mask = torch.tensor([[0] * (width - len(enc[k])) + [1] * len(enc[k])
                                     for k in ks])
                torch.manual_seed(seed * 1_000_003 + todo[ks[0]])
                kw = {"do_sample": True, "temperature": cfg.gen_temperature,
                      "top_p": cfg.top_p, "top_k": 0} if sample else {"do_sample": False}
                with torch.inference_mode():
                    out = model.generate(ids.to(device), attention_mask=mask.to(device),
                                         max_new_tokens=cfg.max_new_tokens,
                                         num_return_sequences=n, pad_token_id=pad,
                                         eos_token_id=sorted(eos), **kw).cpu()
                for r, seq in enumerate(out[:, width:].tolist()):
                    i, j = todo[ks[r // n]], r % n
                    end = next((p for p, t in enumerate(seq) if t in eos), None)
                    got = seq if end is None else seq[:end + 1]
                    rec = {"i": i, "j": j, "ids": got, "finished": end is not None,
                           "text": tok.decode(got, skip_special_tokens=True)}
                    rows[(i, j)] = rec
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                bar.update(len(ks))
        bar.close()
    return [rows[(i, j)] for i in range(len(texts)) for j in range(n)]


def response_key(teacher_id: str, texts: list[str], cfg: DataConfig, seed: int) -> str:
    """What the cached responses depend on: the teacher, the rendered prompts, the settings."""
    return fingerprint(teacher_id, texts, cfg.num_responses, cfg.gen_temperature, cfg.top_p,
                       cfg.max_new_tokens, seed if cfg.gen_temperature > 0 else None)


FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


def keep_pattern(keep_if: str, fields: dict, where: str) -> re.Pattern:
    """``--keep-if`` for one prompt: each ``{name}`` of a field of its record replaced by
    that field's value, escaped (so ``Answer: {answer}$`` checks each prompt's own answer);
    regex quantifiers such as ``{2}`` are left alone."""
    def value(m):
        if m.group(1) not in fields:
            raise EdgeDistillError(f"--keep-if names {{{m.group(1)}}}, which {where} does not "
                                   f"have (its fields: {', '.join(fields) or 'none'}).",
                                   f'add "{m.group(1)}" to every prompt record, or drop it '
                                   "from --keep-if")
        return re.escape(str(fields[m.group(1)]))
    return re.compile(FIELD.sub(value, keep_if))


def keep(rows: list[dict], cfg: DataConfig,
         fields: list[dict] | None = None) -> tuple[list[dict], dict]:
    """The responses the filters keep, and how many each filter dropped. ``fields``: each
    prompt's record fields, for a ``--keep-if`` that names them. Raises EdgeDistillError
    when nothing is kept."""
    patterns: dict[int, re.Pattern] = {}  # per prompt: its fields fill the {name}s
    dropped = {"unfinished": 0, "keep_if": 0}
    out = []
    for r in rows:
        if cfg.drop_unfinished and not r["finished"]:
            dropped["unfinished"] += 1
            continue
        if cfg.keep_if:
            if r["i"] not in patterns:
                patterns[r["i"]] = keep_pattern(cfg.keep_if, fields[r["i"]] if fields else {},
                                                f"prompt {r['i']}")
            lines = [ln.strip() for ln in r["text"].splitlines() if ln.strip()]
            if not lines or not patterns[r["i"]].search(lines[-1]):
                dropped["keep_if"] += 1
                continue
        out.append(r)
    if not out:
        why = "; ".join(f"{v} by {'--drop-unfinished' if k == 'unfinished' else '--keep-if'}"
                        for k, v in dropped.items() if v)
        raise EdgeDistillError(f"the filters kept none of the teacher's {len(rows)} responses "
                               f"({why}).",
                               "loosen --keep-if (it is matched against each response's last "
                               "non-empty line), raise --max-new-tokens, or drop the filter")
    return out, dropped


def response_sequences(tok, texts: list[str], rows: list[dict], seq_len: int):
    """(ids, labels), each (N, seq_len): prompt + response, right-padded; labels are the ids
    on response tokens and -100 on the prompt and the padding. A sequence longer than
    ``seq_len`` loses the start of its prompt first, then the end of its response."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    prompt_ids = {}
    ids_out, labels_out = [], []
    for r in rows:
        if r["i"] not in prompt_ids:
            prompt_ids[r["i"]] = tok(texts[r["i"]], add_special_tokens=False)["input_ids"]
        p, a = prompt_ids[r["i"]], r["ids"]
        if not a:
            continue
        over = len(p) + len(a) - seq_len
        if over > 0:
            cut = min(over, max(0, len(p) - 1))
            p = p[cut:]
            a = a[:seq_len - len(p)]
        seq = p + a
        lab = [-100] * len(p) + a
        fill = seq_len - len(seq)
        ids_out.append(seq + [pad] * fill)
        labels_out.append(lab + [-100] * fill)
    return (torch.tensor(ids_out, dtype=torch.long),
            torch.tensor(labels_out, dtype=torch.long))


def split_prompts(texts: list[str], fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) prompt indices: a stable hash of each prompt picks the held-out ones
    (the same split on every run); at least one of each when there are two prompts."""
    if len(texts) < 2:
        raise EdgeDistillError(f"the data has {len(texts)} prompt; need at least 2 (one is held "
                               "out to validate on).", "pass more prompts with --data")
    held = [i for i, t in enumerate(texts) if is_holdout(t, fraction)]
    if not held or len(held) == len(texts):
        held = list(range(len(texts) - max(1, round(len(texts) * fraction)), len(texts)))
    hs = set(held)
    return [i for i in range(len(texts)) if i not in hs], held


def response_data(tok, texts: list[str], rows: list[dict], train_idx: list[int],
                  cfg: DataConfig, fields: list[dict] | None = None):
    """((train ids, labels), (held-out ids, labels), figures) from the teacher's responses:
    the filters applied to both splits, held-out prompts never trained on."""
    kept, dropped = keep(rows, cfg, fields)
    train_set = set(train_idx)
    tr = [r for r in kept if r["i"] in train_set]
    va = [r for r in kept if r["i"] not in train_set]
    if not tr or not va:
        raise EdgeDistillError(
            f"the filters left {len(tr)} training and {len(va)} held-out responses of "
            f"{len(rows)}; both are needed.",
            "pass more prompts, or loosen --keep-if / --drop-unfinished")
    desc = {"responses": len(rows), "kept": len(kept),
            "dropped_unfinished": dropped["unfinished"], "dropped_keep_if": dropped["keep_if"],
            "unfinished": sum(not r["finished"] for r in rows),
            "response_tokens": sum(len(r["ids"]) for r in tr)}
    return (response_sequences(tok, texts, tr, cfg.seq_len),
            response_sequences(tok, texts, va, cfg.seq_len), desc)
