"""Flags shared by ``distill`` and the whole chain (``export --teacher``), and their mapping onto
the stage configs. Every flag defaults to None, which leaves the config's own default: the
config, not the CLI, owns defaults and validation, so ``edgedistill export`` and
``pipeline.run()`` train with the same numbers (tests/test_cli.py checks it)."""
from __future__ import annotations

import argparse

from edgedistill.cli.types import count, dropout, fraction, non_negative, positive, positives, route


def add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speedup", type=positive, default=None,
                   help="required speedup over the teacher on the target, at least 1 "
                   "(default: 2, relaxed with a note when overheads put it out of reach)")
    p.add_argument("--max-params", default=None, help="cap on student size, e.g. 500M")


def add_distill_options(p: argparse.ArgumentParser) -> None:
    """The training flags (not --student, which means other things to each verb)."""
    p.add_argument("--steps", type=count(), default=None,
                   help="optimizer steps (default 800 for encoders, 300 for causal LMs)")
    p.add_argument("--batch-size", type=count(), default=None,
                   help="default 32 sentences for encoders, 8 sequences for causal LMs")
    p.add_argument("--grad-accum", type=count(), default=None, help="default 1")
    p.add_argument("--seq-len", type=count(2), default=None,
                   help="tokens per training sequence (default 256)")
    p.add_argument("--lr", type=positive, default=None,
                   help="default 5e-4; 5e-5 for a QAT checkpoint (--student of the "
                   "teacher's own shape with --quant-aware)")
    p.add_argument("--loss", default=None, help="fkl | rkl | jsd (default fkl)")
    p.add_argument("--temperature", type=positive, default=None, help="KD temperature "
                   "(default 1)")
    p.add_argument("--kd-weight", type=fraction, default=None,
                   help="KD vs CE weight in [0, 1]; 1 = pure KD (default), 0 = plain "
                   "cross-entropy (the baseline)")
    p.add_argument("--jsd-beta", type=fraction, default=None,
                   help="the generalised JSD's beta, as TRL's GKD defines it: 0 forward KL, "
                   "1 reverse KL (default 0.5)")
    p.add_argument("--on-policy", type=float, default=None, metavar="LAMBDA",
                   help="causal LMs: the share of steps in [0, 1] trained on the student's "
                   "own continuations of prompts from the data, scored by the teacher "
                   "(default 0)")
    p.add_argument("--hidden-weight", type=non_negative, default=None,
                   help="weight of the hidden-state loss (default 0 for causal LMs, 30 for "
                   "encoders; 0 turns it off)")
    p.add_argument("--similarity-weight", type=non_negative, default=None,
                   help="encoders: weight of the in-batch similarity loss, which matches the "
                   "student's sentence-to-sentence cosines to the teacher's (default 0)")
    p.add_argument("--dropout", type=dropout, default=None, metavar="P",
                   help="the student's dropout while it is distilled, every dropout "
                   "probability of its config: default 0; 'config' keeps the config's")
    p.add_argument("--init", default=None, help="teacher (default) | random")
    p.add_argument("--progressive", action="store_const", const=0, dest="stages",
                   default=None, help="distil through a chain of students, each step removing "
                   "at most about a third of the parameters (Minitron's guidance)")
    p.add_argument("--stages", type=count(), default=None, metavar="K",
                   help="distil through a chain of K students (1: directly, the default)")
    p.add_argument("--progressive-teacher", default=None,
                   help="previous (default: each stage is distilled by the one before) | "
                   "original (every stage by the original teacher)")
    p.add_argument("--final-share", type=fraction, default=None, metavar="F",
                   help="progressive: the share of the steps the last stage gets, the rest "
                   "split evenly over the stages before (default 0: all evenly)")
    p.add_argument("--max-stage-drop", type=fraction, default=None, metavar="F",
                   help="--progressive: the largest share of parameters one stage removes "
                   "(default 1/3)")
    p.add_argument("--teacher-weights", type=positives, default=None, metavar="W1,W2,...",
                   help="several teachers: their weights in the mixture, in --teacher order "
                   "(default equal)")
    p.add_argument("--route", type=route, action="append", default=None, metavar="GLOB=N",
                   help="several teachers: data files matching GLOB learn teacher N's "
                   "distribution alone (N from 1, in --teacher order); repeatable")
    p.add_argument("--quant-aware", default=None, metavar="FMT:QUANT",
                   help="quant-aware distillation: train the last part of the steps through "
                   "the exact grids of FMT:QUANT (gguf:q4_k_m, gguf:q4_0, gguf:q6_k, "
                   "gguf:q8_0, onnx:int4, onnx:qdq_a8w8, onnx:qdq_a16w8); the student holds "
                   "the rounded weights")
    p.add_argument("--quant-aware-share", type=fraction, default=None, metavar="F",
                   help="--quant-aware: the share of the steps, at the end, trained through "
                   "the grid (default 0.5)")
    p.add_argument("--teacher-dtype", default=None,
                   help="auto (default: bf16 on a GPU, or on a CPU with native bf16; else "
                   "fp32) | fp32 | bf16 | fp16: the frozen teacher's dtype")
    p.add_argument("--mixed-precision", default=None, choices=("auto", "no", "bf16"),
                   help="the student's forward and backward on a CPU under bf16 autocast: auto "
                   "(default: for encoders, on a CPU with native bf16) | no | bf16 (on a GPU "
                   "always bf16)")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute the student's activations in backward instead of keeping "
                   "them: less memory, a little more compute")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="under accelerate launch / torchrun: shard the student's parameters, "
                   "gradients and optimizer state across the processes (torch FSDP2)")
    p.add_argument("--stream", action="store_true", default=None,
                   help="causal LMs: read --data while training instead of loading it all "
                   "(large text folders, JSONL, hf://datasets/ORG/NAME[/CONFIG])")
    p.add_argument("--eval-every", type=count(0), default=None,
                   help="validate every N steps (0: never; default: a quarter of the steps)")
    p.add_argument("--save-every", type=count(0), default=None,
                   help="checkpoint every N steps (0: never; default: an eighth of the steps)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    g = p.add_argument_group("prompt data (--data holding prompts only: the teacher answers)")
    g.add_argument("--num-responses", type=count(), default=None, metavar="N",
                   help="responses the teacher writes per prompt (default 1)")
    g.add_argument("--gen-temperature", type=non_negative, default=None,
                   help="the teacher's sampling temperature; 0 = greedy (default). "
                   "--temperature stays the KD temperature")
    g.add_argument("--top-p", type=fraction, default=None,
                   help="nucleus sampling mass with --gen-temperature (default 1)")
    g.add_argument("--max-new-tokens", type=count(), default=None,
                   help="the longest response (default 256)")
    g.add_argument("--keep-if", default=None, metavar="REGEX",
                   help="keep only responses whose last non-empty line matches REGEX")
    g.add_argument("--drop-unfinished", action="store_true", default=None,
                   help="drop responses that reach --max-new-tokens without ending")


def training_dests() -> list[str]:
    """The argparse dests of the training and planning flags (add_distill_options and
    add_plan_options), for a verb that must refuse them."""
    p = argparse.ArgumentParser(add_help=False)
    add_distill_options(p)
    add_plan_options(p)
    return [a.dest for a in p._actions]


def _given(args, **fields) -> dict:
    """{config field: value} for the flags the user gave (``fields``: field -> attribute)."""
    return {f: getattr(args, a) for f, a in fields.items() if getattr(args, a, None) is not None}


def plan_config(args):
    from edgedistill.cli.plan_cmd import parse_count
    from edgedistill.plan import PlanConfig

    kw = _given(args, speedup="speedup")
    if getattr(args, "max_params", None):
        kw["max_params"] = parse_count(args.max_params)
    return PlanConfig(**kw)


def distill_config(args, student: str | None = None):
    from edgedistill.distill.config import DataConfig, DistillConfig, KDConfig, TrainConfig

    kd = KDConfig(**_given(args, loss="loss", temperature="temperature",
                           kd_weight="kd_weight", jsd_beta="jsd_beta", on_policy="on_policy"))
    train = TrainConfig(**_given(args, steps="steps", batch_size="batch_size",
                                 grad_accum="grad_accum", lr="lr", hidden_weight="hidden_weight",
                                 similarity_weight="similarity_weight",
                                 mixed_precision="mixed_precision", dropout="dropout",
                                 activation_checkpointing="activation_checkpointing",
                                 fsdp="fsdp",
                                 eval_every="eval_every", save_every="save_every", seed="seed"))
    data = DataConfig(**_given(args, seq_len="seq_len", generate="generate",
                               cache_topk="cache_topk", num_responses="num_responses",
                               gen_temperature="gen_temperature", top_p="top_p",
                               max_new_tokens="max_new_tokens", keep_if="keep_if",
                               drop_unfinished="drop_unfinished", stream="stream"))
    return DistillConfig(kd=kd, train=train, data=data, student=student,
                         **_given(args, init="init", teacher_dtype="teacher_dtype",
                                  stages="stages", progressive_teacher="progressive_teacher",
                                  final_share="final_share", max_stage_drop="max_stage_drop",
                                  teacher_weights="teacher_weights", routes="route",
                                  quant_aware="quant_aware",
                                  quant_aware_share="quant_aware_share"))
