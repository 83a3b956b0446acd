"""Several teachers for one student (causal LMs).

The largest teacher is the primary: the planner plans from it and the student is cut from it.
Teachers whose tokenizer is the primary's are mixed: the student learns the weighted mixture
of their distributions (``--teacher-weights``, equal by default), token by token. A teacher
with another tokenizer shares no token ids with the student, so only its text transfers: on
prompt data it writes responses, which join the training set as text the student learns (with
the mixed teachers' KD on them, and CE by ``--kd-weight``); the log says so."""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from edgedistill.data import TEXT_SUFFIXES
from edgedistill.distill.responses import generate_responses, render_prompts, response_key
from edgedistill.errors import EdgeDistillError
from edgedistill.runstate import files_id, fingerprint
from edgedistill.teacher import Teacher, check_model_files, load_teacher


@dataclass
class Panel:
    primary: Teacher
    """The largest teacher: planned from, pruned from, the baseline."""
    mixed: list[tuple[Teacher, float]] = field(default_factory=list)
    """The primary first, then every teacher with its tokenizer: (teacher, weight), weights
    summing to 1."""
    text_only: list[Teacher] = field(default_factory=list)
    """Teachers with another tokenizer: their responses transfer as text."""
    given: list[int] = field(default_factory=list)
    """For each of ``mixed``, its place in the order the teachers were given."""


def teacher_list(teacher) -> list:
    """``--teacher`` as a list: None (the bundled default), one, or several."""
    if isinstance(teacher, (list, tuple)):
        return list(teacher) or [None]
    return [teacher]


def primary_index(teachers: list) -> int:
    """The index of the largest teacher (by parameters, from its config)."""
    sizes = [load_teacher(x).shape.total_params() for x in teachers]
    return max(range(len(sizes)), key=sizes.__getitem__)


def panel(teachers: list, weights: tuple | None, prompts: bool) -> Panel:
    """Load and check several teachers; raises EdgeDistillError naming the fix."""
    from transformers import AutoTokenizer

    if weights is not None and len(weights) != len(teachers):
        raise EdgeDistillError(f"--teacher-weights has {len(weights)} weights for "
                               f"{len(teachers)} teachers.",
                               "give one weight per --teacher, in the same order")
    loaded = [load_teacher(x, weights=True) for x in teachers]
    for x in loaded:
        check_model_files(x.path)
        if x.shape.is_encoder:
            raise EdgeDistillError(f"several teachers: {x.name} is a sentence embedder; "
                                   "mixing teachers is built for causal LMs.",
                                   "pass one encoder teacher")
    w = list(weights) if weights is not None else [1.0] * len(loaded)
    first = max(range(len(loaded)), key=lambda i: loaded[i].shape.total_params())
    vocab = AutoTokenizer.from_pretrained(loaded[first].path).get_vocab()
    mixed, text_only, given = [], [], []
    for i in [first] + [i for i in range(len(loaded)) if i != first]:
        same = AutoTokenizer.from_pretrained(loaded[i].path).get_vocab() == vocab
        if same:
            mixed.append((loaded[i], w[i]))
            given.append(i)
        else:
            text_only.append(loaded[i])
    if text_only and not prompts:
        names = ", ".join(x.name for x in text_only)
        raise EdgeDistillError(f"{names} has another tokenizer than {loaded[first].name}, so "
                               "only its written text can transfer, and the data holds no "
                               "prompts for it to answer.",
                               'pass prompts ({"prompt": ...} JSONL) with --data, or teachers '
                               "that share one tokenizer")
    total = sum(x for _, x in mixed)
    return Panel(loaded[first], [(t, x / total) for t, x in mixed], text_only, given)


def routed_files(data: Path, routes: tuple, pn: Panel) -> list[tuple[Path, int]]:
    """Each data file with the place (in ``pn.mixed``) of the teacher its ``--route`` names,
    or -1 (the mixture). ``routes``: (glob, teacher number counted from 1 in --teacher
    order) pairs, matched against the file's name and its path under ``data``."""
    data = Path(data)
    files = ([data] if data.is_file() else
             sorted(p for p in data.rglob("*")
                    if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl")))
    n_given = len(pn.mixed) + len(pn.text_only)
    out, used = [], set()
    for f in files:
        rel = f.relative_to(data).as_posix() if data.is_dir() else f.name
        place = -1
        for glob, number in routes:
            if fnmatch(f.name, glob) or fnmatch(rel, glob):
                if not 1 <= number <= n_given:
                    raise EdgeDistillError(f"--route {glob}={number}: there are {n_given} "
                                           "teachers.", "number them from 1, in --teacher order")
                if number - 1 not in pn.given:
                    raise EdgeDistillError(f"--route {glob}={number}: that teacher has another "
                                           "tokenizer, so it has no distribution to route to.",
                                           "route files to a teacher with the student's "
                                           "tokenizer")
                place = pn.given.index(number - 1)
                used.add(glob)
                break
        out.append((f, place))
    unused = [g for g, _ in routes if g not in used]
    if unused:
        raise EdgeDistillError(f"--route {unused[0]} matches no file of {data}.",
                               "write a glob that matches file names under --data, e.g. "
                               "--route 'code*.txt=1'")
    return out


def describe(pn: Panel) -> str:
    mixed = " + ".join(f"{w:.2f} x {Path(str(t.name)).name}" for t, w in pn.mixed)
    out = f"teachers: KD on the mixture {mixed} (the largest, {pn.primary.name}, is planned from)"
    if pn.text_only:
        out += ("; " + ", ".join(str(t.name) for t in pn.text_only)
                + ": another tokenizer, so only their responses (text) transfer")
    return out


def text_only_rows(teacher: Teacher, student_tok, prompts: list, cfg, folder: Path, seed: int,
                   dtype, device, log, index_base: int) -> list[dict]:
    """A teacher with another tokenizer answers the prompts with its own chat template; its
    responses, as text, re-tokenized with the student's tokenizer (response rows, ``j``
    offset by ``index_base`` so they sit beside the mixed teachers' own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher.path)
    texts = render_prompts(tok, prompts)
    model = AutoModelForCausalLM.from_pretrained(teacher.path, dtype=dtype).to(device).eval()
    key = response_key(fingerprint(teacher.config, files_id(teacher.path), str(dtype)), texts,
                       cfg, seed)
    log(f"{teacher.name}: another tokenizer; its responses transfer as text only")
    rows = generate_responses(model, tok, texts, cfg, folder, key, seed=seed, device=device,
                              log=log)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    eos = student_tok.eos_token_id
    out = []
    for r in rows:
        ids = student_tok(r["text"], add_special_tokens=False)["input_ids"]
        if r["finished"] and eos is not None:
            ids.append(eos)
        out.append(r | {"ids": ids, "j": index_base + r["j"], "teacher": str(teacher.name)})
    return out
