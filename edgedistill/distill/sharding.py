"""``--fsdp``: the student sharded across the processes of a distributed run (torch's FSDP2,
``fully_shard``): each process holds 1/world of the student's parameters, gradients and
optimizer state, and gathers a layer's weights only while it computes. Works on CPUs (gloo)
and GPUs (NCCL) alike; accelerate applies FSDP on GPUs only, so edgedistill shards the
student itself and uses accelerate for the process group and gradient accumulation.

The frozen teacher is not sharded: each process holds it whole, in ``--teacher-dtype``.
Checkpoints and the saved student hold full (gathered) weights, so a sharded run resumes,
and its student exports, like any other.
"""
from __future__ import annotations

import torch


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The student's list of layers (``model.layers``, ``encoder.layer``, ``h``, ...): the
    ModuleList as long as the config's layer count."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise RuntimeError(f"no list of {n} layers in {type(model).__name__}")


def shard(module: torch.nn.Module, student: torch.nn.Module) -> None:
    """Shard each of the student's layers, then the rest of ``module`` (embeddings, head,
    the loss's trainable parts), in place."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(student):
        fully_shard(block)
    fully_shard(module)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_state(module, optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts gathered whole on rank 0 (on the CPU; empty on the
    other ranks). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = _options(cpu_offload=True)
    return (get_model_state_dict(module, options=opts),
            get_optimizer_state_dict(module, optimizer, options=opts))


def load_full_state(module, optimizer, model_state: dict, optim_state: dict) -> None:
    """Each rank takes its shards of full state dicts (as :func:`full_state` returns them,
    read by every rank)."""
    from torch.distributed.checkpoint.state_dict import (set_model_state_dict,
                                                         set_optimizer_state_dict)
    set_model_state_dict(module, model_state, options=_options())
    set_optimizer_state_dict(module, optimizer, optim_state, options=_options())


def unsharded_student(module, student_dir_cfg) -> torch.nn.Module | None:
    """The trained student as a plain model on rank 0 (None on the others), built from
    ``student_dir_cfg``'s config and the gathered weights. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    full = get_model_state_dict(module, options=_options(cpu_offload=True))
    if not full:
        return None
    cfg = AutoConfig.from_pretrained(student_dir_cfg)
    auto = AutoModelForCausalLM if cfg.architectures and any(
        a.endswith("ForCausalLM") for a in cfg.architectures) else AutoModel
    plain = auto.from_config(cfg)
    missing, unexpected = plain.load_state_dict(
        {k[len("student."):]: v for k, v in full.items() if k.startswith("student.")},
        strict=False)
    tied = {k for k in missing if cfg.tie_word_embeddings and k.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered student state: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    plain.tie_weights()
    return plain
