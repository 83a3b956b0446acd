"""Distillation: plan the student, build it from the teacher, train it on the teacher's soft
targets, and save an HF folder.

    distill(teacher, target, data, out) -> DistillResult

Run folder: plan.json, student_init/ (before training), checkpoints/, train_log.jsonl,
student/ (the result: safetensors, config, tokenizer), distill.json (figures).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from edgedistill.arch import shape_from_config
from edgedistill.data import (chat_renderer, load_prompts, load_texts, pack, plain_render,
                              sentences_of, split_documents, split_holdout, default_sentences,
                              stdlib_source)
from edgedistill.distill.config import (DataConfig, DistillConfig, DistillResult, KDConfig,
                                        TRAIN_DEFAULTS, TrainConfig, auto_teacher_dtype)
from edgedistill.distill import quant_aware, sharding
from edgedistill.distill.loop import train as run_training
from edgedistill.distill.progressive import distill_progressive
from edgedistill.distill.recipes import causal_recipe, encoder_recipe
from edgedistill.distill.streamed import calibration_blocks, open_stream
from edgedistill.distill.responses import (generate_responses, render_prompts, response_data,
                                           response_key, split_prompts)
from edgedistill.distill.teachers import (describe, panel, routed_files, teacher_list,
                                          text_only_rows)
from edgedistill.errors import EdgeDistillError, writable_dir
from edgedistill.logs import get_logger
from edgedistill.machine import machine_info
from edgedistill.plan import PlanConfig, plan, progressive_chain
from edgedistill.profiles import DeviceProfile, resolve_profile
from edgedistill.runstate import files_id, fingerprint
from edgedistill.student import build_student, copy_tokenizer, set_dropout
from edgedistill.teacher import check_model_files, load_teacher

DEFAULT_CAUSAL_CHARS = 2_000_000
"""Default causal-LM data: this many characters of standard-library source."""


_logger = get_logger("distill")


def _quiet(msg: str) -> None:
    """Logger of the non-main processes of a distributed run."""


def check_same_tokenizer(teacher_dir: Path, student_dir: Path) -> None:
    """The student must read and write the teacher's token ids."""
    from transformers import AutoTokenizer

    a, b = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_dir)
    if a.get_vocab() != b.get_vocab():
        diff = len(set(a.get_vocab().items()) ^ set(b.get_vocab().items()))
        raise EdgeDistillError(
            f"the tokenizers of teacher {teacher_dir} and student {student_dir} differ "
            f"({len(a)} vs {len(b)} tokens, {diff} entries differ).",
            "use a student with the teacher's tokenizer (edgedistill builds one from the plan "
            "when --student is not given)")


def _require_alone(config: DistillConfig) -> None:
    """What several teachers do not combine with (yet)."""
    for given, flag in ((config.stages != 1, "--progressive / --stages"),
                        (config.student is not None, "--student")):
        if given:
            raise EdgeDistillError(f"several teachers do not combine with {flag} yet.",
                                   f"drop {flag}, or distil from one teacher")


def distill(teacher: str | Path | list | None = None, target: str | DeviceProfile = "laptop",
            data: str | Path | None = None, out: str | Path = "runs/distill",
            config: DistillConfig = DistillConfig(), *, plan_config: PlanConfig = PlanConfig(),
            resume: bool = False, log=_logger.info,
            student_config: dict | None = None, init_from: str | Path | None = None
            ) -> DistillResult:
    """Distil ``teacher`` into the student planned for ``target`` with ``plan_config`` (or
    into ``config.student``, an existing HF folder with the teacher's tokenizer; or into
    ``student_config``, an HF config of the teacher's family built from the teacher, or from
    ``init_from``, a model of the same family and tokenizer), on
    ``data`` (default: stdlib text). ``config.train``'s unset fields take the defaults of the
    teacher's kind (TRAIN_DEFAULTS). ``config.stages`` other than 1 distils through a
    progressive chain of students (run_dir/stages/K/). Returns the run folder, the student
    folder and the figures."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    kd, data_cfg, init = config.kd, config.data, config.init
    train_routes = None
    student = Path(config.student) if config.student is not None else None
    run_dir = Path(out)
    if resume and not ((run_dir / "checkpoints" / "latest").is_file()
                       or (config.stages != 1 and (run_dir / "stages").is_dir())):
        raise EdgeDistillError(f"--resume: nothing to resume in {run_dir} (no checkpoint).",
                               "run without --resume first, or point --out at the run folder")
    teachers = teacher_list(teacher)
    pn = None
    if len(teachers) > 1:
        _require_alone(config)
        pn = panel(teachers, config.teacher_weights,
                   data is not None and not config.data.stream
                   and load_prompts(data) is not None)
        t = pn.primary
        log(describe(pn))
    else:
        if config.teacher_weights is not None:
            raise EdgeDistillError("--teacher-weights weighs several teachers; one was given.",
                                   "pass a --teacher for each weight, or drop "
                                   "--teacher-weights")
        t = load_teacher(teachers[0], weights=True)  # a hub id: downloaded, or found cached
    check_model_files(t.path)
    encoder = t.shape.is_encoder
    if encoder and data_cfg.seq_len > t.shape.max_tokens:
        log(f"sentences cut at {t.shape.max_tokens} tokens, as many positions as the teacher "
            f"has (--seq-len {data_cfg.seq_len})")
        data_cfg = replace(data_cfg, seq_len=t.shape.max_tokens)
    if encoder and kd.on_policy:
        raise EdgeDistillError("--on-policy trains on text the student writes; a sentence "
                               "embedder writes none.", "drop --on-policy for encoders")
    train = config.train.resolved(encoder)
    writable_dir(run_dir)
    tok = AutoTokenizer.from_pretrained(t.path)

    # -- the student's shape --------------------------------------------------------------
    if config.quant_aware:  # a file the device runs, before any work
        quant_aware.check_deployed(config.quant_aware, resolve_profile(target))
    if student is not None:
        check_model_files(student, "student", "--student")
        check_same_tokenizer(t.path, student)
        student_cfg = json.loads((student / "config.json").read_text())
        if config.quant_aware and config.train.lr is None and \
                shape_from_config(student_cfg, str(student)) == t.shape:
            train = config.train.resolved(encoder, qat_checkpoint=True)
            log(f"a QAT checkpoint (the teacher's own shape, trained quant-aware): lr "
                f"{train.lr:g} (--lr sets another)")
    elif student_config is not None:
        student_cfg = student_config
    else:
        pl = plan(t, target, plan_config)
        (run_dir / "plan.json").write_text(json.dumps(pl.to_dict(), indent=2, default=str))
        student_cfg = pl.student_config
        log(f"plan for {getattr(target, 'name', target)}: {pl.student.shape.describe()} "
            f"({pl.student.shape.total_params():,} params)")
        if config.stages != 1:
            chain = progressive_chain(t.shape, pl.student.shape, pl.profile, config.stages,
                                      config.max_stage_drop)
            if len(chain) > 1:
                return distill_progressive(distill, t, target, data, run_dir, config, chain,
                                           train, resume, log)
            keeps = pl.student.shape.total_params() / t.shape.total_params()
            log(f"progressive: the student keeps {keeps:.0%} of the teacher's parameters, "
                "within one stage's drop: one stage")

    # -- data -----------------------------------------------------------------------------

    stream = prompts = prompt_fields = None
    if data_cfg.stream:  # read as it trains: nothing loaded or tokenized up front
        stream, val_items, data_desc, data_hash = open_stream(
            data, tok, encoder, config.routes, data_cfg, train, run_dir)
        train_items = stream
        log(f"data: streamed from {data}; {len(val_items)} held-out blocks validate")
    elif data is not None and not encoder:
        prompts, prompt_fields = load_prompts(data, fields=True) or (None, None)
    if stream is not None:
        pass  # opened above
    elif prompts is not None:
        texts = render_prompts(tok, prompts)
        train_idx, val_idx = split_prompts(texts, data_cfg.val_fraction)
        how = (f"sampled at temperature {data_cfg.gen_temperature:g}, top-p "
               f"{data_cfg.top_p:g}" if data_cfg.gen_temperature > 0 else "greedy")
        log(f"data: {len(texts)} prompts; the teacher writes {data_cfg.num_responses} "
            f"response(s) to each ({how}, up to {data_cfg.max_new_tokens} tokens), and the "
            "student learns them (loss on the response tokens only)")
    elif data is not None:
        render, chats = chat_renderer(tok), 0

        def counted(messages: list) -> str:
            nonlocal chats
            chats += 1
            return render(messages)

        if config.routes:
            if pn is None:
                raise EdgeDistillError("--route sends data files to one of several teachers; "
                                       "one teacher was given.",
                                       "pass a --teacher for each route, or drop --route")
            if prompts is not None:
                raise EdgeDistillError("--route applies to text data; prompts are answered by "
                                       "every teacher.", "drop --route for prompt data")
            routed = [(load_texts(f, counted), place)
                      for f, place in routed_files(Path(data), config.routes, pn)]
            texts = [x for tx, _ in routed for x in tx]
        else:
            texts = load_texts(data, counted)
        if chats:
            log(f"data: {chats} conversations, rendered "
                + ("with the teacher's chat template" if render is not plain_render else
                   "as their contents joined by blank lines (the teacher has no chat template)"))
    elif encoder:
        texts = list(default_sentences())
    else:
        texts = [stdlib_source(DEFAULT_CAUSAL_CHARS)]
    if stream is not None:
        pass  # described above
    elif prompts is not None:
        data_desc = {"prompts": len(texts), "train_prompts": len(train_idx),
                     "val_prompts": len(val_idx)}
    elif encoder:
        items = sentences_of(texts)
        train_items, val_items = split_holdout(items, data_cfg.val_fraction)
        if not train_items or not val_items:
            raise EdgeDistillError(f"the data's {len(items)} sentences leave "
                                   f"{len(train_items)} to train on and {len(val_items)} to "
                                   "validate on (a stable hash holds out "
                                   f"{data_cfg.val_fraction:.0%}); both need some.",
                                   "pass more (or other) text with --data")
        data_desc = {"sentences": len(items), "train": len(train_items), "val": len(val_items)}
    else:
        groups = {}
        for tx, place in (routed if config.routes else [(texts, -1)]):
            groups.setdefault(place, []).extend(tx)
        parts = {place: split_documents(tx, data_cfg.val_fraction)
                 for place, tx in groups.items()}
        trains = {place: pack(tr, tok, data_cfg.seq_len) for place, (tr, _) in parts.items()}
        train_items = torch.cat(list(trains.values()))
        val_items = torch.cat([pack(va, tok, data_cfg.seq_len) for _, va in parts.values()])
        if config.routes:  # each block's teacher (its place in the panel; -1: the mixture)
            train_routes = torch.cat([torch.full((len(b),), place)
                                      for place, b in trains.items()])
        data_desc = {"train_blocks": len(train_items), "val_blocks": len(val_items),
                     "seq_len": data_cfg.seq_len,
                     "train_tokens": int(train_items.numel())}
        if config.routes:
            data_desc["routed_blocks"] = {
                ("mixture" if p < 0 else str(pn.mixed[p][0].name)): len(b)
                for p, b in trains.items()}
    if stream is None:
        data_hash = (fingerprint(texts) if prompts is not None else
                     fingerprint([len(x) for x in texts], texts[0][:2000], texts[-1][-2000:]))
    others = [] if pn is None else [(files_id(x.path), w) for x, w in pn.mixed[1:]] + [
        files_id(x.path) for x in pn.text_only]
    run_key = fingerprint(t.config, files_id(t.path), others, student_cfg,
                          str(student), data_hash, asdict(kd), asdict(data_cfg), init,
                          asdict(train) | {"steps": 0, "eval_every": 0, "save_every": 0},
                          *([config.quant_aware, config.quant_aware_share]
                            if config.quant_aware else []))
    log(f"data: {data_desc}")

    from accelerate import PartialState

    # One process group for the whole run: rank 0 builds shared files first, the others wait.
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        log = _quiet
    auto = AutoModel if encoder else AutoModelForCausalLM
    device = str(state.device)
    dtype, why = config.teacher_dtype, "asked for"
    if dtype == "auto":
        dtype, why = auto_teacher_dtype(device, machine_info().flags,
                                        device.startswith("cuda")
                                        and torch.cuda.is_bf16_supported())
    log(f"teacher frozen in {dtype} ({why})")
    if train.mixed_precision == "auto":  # the teacher's test: bf16 where it is native
        cpu_bf16 = auto_teacher_dtype("cpu", machine_info().flags)[0] == "bf16"
        # on a CPU only for encoders, where it was measured (same cosine, 1.25x faster)
        mp = "bf16" if device.startswith("cuda") or (cpu_bf16 and encoder) else "no"
        train = replace(train, mixed_precision=mp)
        log("student trained " + ("with bf16 autocast" if mp == "bf16" else "in fp32")
            + " (--mixed-precision auto)")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]

    def load_model(path):
        m = auto.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    teacher_model = load_model(t.path)
    # with a top-K cache, further teachers take turns (loaded one at a time to cache their
    # logits); without one, every teacher is held for the whole run
    more_teachers = [(x.path if data_cfg.cache_topk else load_model(x.path), w)
                     for x, w in (pn.mixed[1:] if pn else [])]
    train_labels = val_labels = None
    if prompts is not None:
        with state.main_process_first():  # rank 0 writes the responses, the others read them
            key = response_key(fingerprint(t.config, files_id(t.path), dtype), texts, data_cfg,
                               train.seed)
            rows = generate_responses(teacher_model, tok, texts, data_cfg, run_dir / "data",
                                      key, seed=train.seed, device=device, log=log)
            for k, other in enumerate(pn.text_only if pn else [], 1):
                rows += text_only_rows(other, tok, prompts, data_cfg, run_dir / "data",
                                       train.seed, torch_dtype, device, log,
                                       k * data_cfg.num_responses)
        (train_items, train_labels), (val_items, val_labels), desc = response_data(
            tok, texts, rows, train_idx, data_cfg, prompt_fields)
        data_desc |= desc
        log(f"data: {desc}")

    # -- build (or reuse) the student ----------------------------------------------------
    init_dir = run_dir / "student_init"
    if student is not None:
        init_dir = student
    elif not state.is_main_process:
        pass
    elif not (resume and (init_dir / "config.json").is_file()):
        calib = None
        if init == "teacher":
            if encoder:
                calib = [dict(tok(train_items[:32], padding=True, truncation=True,
                                  max_length=data_cfg.seq_len, return_tensors="pt"))]
            else:
                blocks = (train_items if stream is None else
                          calibration_blocks(data, tok, data_cfg, train.seed))
                calib = [{"input_ids": blocks[i:i + 4]} for i in range(0, 16, 4)
                         if i < len(blocks)]
        build_student(init_from or t.path, student_cfg, init_dir, init=init,
                      calibration=calib, seed=train.seed)
    state.wait_for_everyone()
    student_model = auto.from_pretrained(init_dir, dtype=torch.float32)
    log(f"student from {init_dir} ({sum(p.numel() for p in student_model.parameters()):,} "
        f"params, init={init if student is None else 'given'})")
    if train.activation_checkpointing:
        student_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        log("student activations recomputed in backward (--activation-checkpointing)")
    if train.dropout != "config":
        changed = set_dropout(student_model, train.dropout)
        if changed:
            log(f"student dropout {train.dropout} while distilled (config had "
                + ", ".join(f"{k}={v}" for k, v in changed.items()) + "; --dropout config "
                "keeps it)")

    with state.main_process_first():  # generated data and the top-K cache are written once
        recipe = (encoder_recipe if encoder else causal_recipe)(
            t, tok, teacher_model, student_model, train_items, val_items, kd, train, data_cfg,
            run_dir, device, log,
            **({"train_labels": train_labels, "val_labels": val_labels,
                "more_teachers": more_teachers, "train_routes": train_routes,
                "teacher_weight": pn.mixed[0][1] if pn else 1.0, "load_model": load_model}
               if not encoder else {}))

    t0 = time.time()
    qad = quant_aware.phase(config.quant_aware, config.quant_aware_share,
                            recipe.train_cfg.steps, init_dir)
    if qad is not None:
        stored = (", ".join(f"{n} in {k}" for k, n in qad.file_types.items())
                  + "; those with a grid" if qad.types else
                  "its matrices and embedding tables on onnxruntime's grids; they")
        log(f"quant-aware: the {qad.spec} file stores {stored} train through it from step "
            f"{qad.start}")
    metrics = run_training(recipe.module, recipe.teacher_fn, recipe.batch_fn,
                           None if stream is not None else len(train_items),
                           recipe.val_fn, recipe.train_cfg, run_dir, run_key, resume, log,
                           policy_fn=recipe.policy_fn, qad=qad, stream=stream)
    if stream is not None:
        data_desc |= stream.describe()
    trained = metrics.pop("unwrapped").student
    if "sharded" in metrics:  # every process gathers; the main one gets the whole student
        trained = sharding.unsharded_student(recipe.module, init_dir)
    student_dir = run_dir / "student"
    if qad is not None:  # the saved student is the fake-quant model the file will hold
        metrics["quant_aware"] = qad.record(qad.bake(trained))
    if metrics.pop("is_main"):
        _save_student(trained, init_dir, student_dir)
        if pn is not None:
            metrics["teachers"] = [{"teacher": str(x.path), "weight": w, "mixed": True}
                                   for x, w in pn.mixed] + [
                {"teacher": str(x.path), "mixed": False, "transfers": "responses (text)"}
                for x in pn.text_only]
        metrics |= {"data": data_desc, "teacher": str(t.path),
                    "target": getattr(target, "name", target),
                    "init": init if student is None else str(student), "kd": asdict(kd),
                    "teacher_dtype": dtype,
                    "data_config": asdict(data_cfg), **recipe.extra,
                    **({"hidden_layers": recipe.module.hidden.layer_map}
                       if recipe.module.hidden is not None else {}),
                    "wall_seconds": time.time() - t0, "student_dir": str(student_dir)}
        tmp = run_dir / ".distill.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2, default=str))
        tmp.replace(run_dir / "distill.json")
        return DistillResult(run_dir, student_dir, metrics)
    return DistillResult(run_dir, student_dir, {})  # another process of a distributed run


def _save_student(model, tokenizer_dir: Path, out: Path) -> None:
    """save_pretrained + tokenizer, into a temp folder renamed into place."""

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    copy_tokenizer(tokenizer_dir, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


__all__ = ["TRAIN_DEFAULTS", "DataConfig", "DistillConfig", "DistillResult", "KDConfig",
           "TrainConfig", "distill", "check_same_tokenizer"]
