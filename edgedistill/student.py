"""Build the planned student, initialised from the teacher.

- Depth: with calibration text, the teacher's first and last layers and the block between
  them whose input and output hidden states point most alike (the least mean angular distance
  over the text, Gromov et al. 2024) is the one left out: a contiguous run of layers that
  changes the residual stream least. SmolLM2-135M cut from 30 layers to 11 starts at held-out
  loss 9.04 this way, against 13.87 with layers spread evenly. Without calibration text,
  layers spread evenly over the teacher's depth, first and last kept.
- Width: hidden channels, attention heads (whole KV groups where the grouping allows) and FFN
  neurons kept by importance. Importance is activation-based when calibration text is given
  (mean |activation| over the text, from forward hooks), weight-based otherwise (norms of the
  weights that read or write each unit).
- The tokenizer (and a sentence embedder's pooling files) are copied.
- ``init="random"`` builds the same shape from scratch, for comparison.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from edgedistill.arch import ModelShape, shape_from_config

INITS = ("teacher", "random")
_COPY = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt",
         "special_tokens_map.json", "merges.txt", "vocab.json", "added_tokens.json",
         "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
         "chat_template.jinja", "generation_config.json")


def select_layers(n_teacher: int, n_student: int,
                  distance: torch.Tensor | None = None) -> list[int]:
    """Teacher layer indices for the student, first and last kept.

    ``distance``: the (L+1, L+1) mean angular distance between the teacher's hidden states
    (:attr:`Importance.distance`); the contiguous run of layers whose removal joins the two
    most alike states is left out. Without it, layers are spread evenly."""
    if n_student >= n_teacher:
        return list(range(n_teacher))
    if n_student == 1:
        return [n_teacher - 1]
    drop = n_teacher - n_student
    if distance is not None and n_teacher - 1 - drop >= 1:
        # leaving out layers l .. l+drop-1 feeds hidden state l where state l+drop was
        start = min(range(1, n_teacher - drop), key=lambda l: float(distance[l, l + drop]))
        return [i for i in range(n_teacher) if not start <= i < start + drop]
    return sorted({round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)})


@dataclass
class Importance:
    hidden: torch.Tensor
    """(H,) importance of each residual-stream channel."""
    heads: list[torch.Tensor]
    """Per teacher layer, (n_heads,) importance of each query head."""
    ffn: list[torch.Tensor]
    """Per teacher layer, (F,) importance of each FFN neuron."""
    distance: torch.Tensor | None = None
    """(L+1, L+1) mean angular distance (0 alike .. 1 opposite) between hidden states i and j
    (the embeddings' output, then each layer's) over the calibration tokens; None without
    calibration text."""


def _modules(model, encoder: bool):
    """Per layer: (attention output projection, FFN down projection) modules."""
    if encoder and hasattr(model, "transformer"):  # distilbert
        return [(lay.attention.out_lin, lay.ffn.lin2) for lay in model.transformer.layer]
    if encoder:
        layers = model.encoder.layer
        return [(lay.attention.output.dense, lay.output.dense) for lay in layers]
    return [(lay.self_attn.o_proj, lay.mlp.down_proj) for lay in model.model.layers]


def importance(teacher, shape: ModelShape, batches: list[dict] | None = None) -> Importance:
    """Activation-based importance on ``batches`` (tokenized inputs), or weight-based when
    None. Larger is more important."""
    mods = _modules(teacher, shape.is_encoder)
    hd = shape.head_dim
    if not batches:
        heads, ffn = [], []
        for o, down in mods:
            w = o.weight.detach()  # (H, n_heads*hd): columns are head outputs
            heads.append(w.float().pow(2).sum(0).view(-1, hd).sum(-1).sqrt())
            ffn.append(down.weight.detach().float().abs().sum(0))  # (F,)
        emb = teacher.get_input_embeddings().weight.detach().float()
        return Importance(emb.abs().mean(0), heads, ffn)

    sums = {"heads": [0.0] * len(mods), "ffn": [0.0] * len(mods)}
    hidden_sum = torch.zeros(shape.hidden_size)
    n_states = len(mods) + 1
    angle_sum, tokens = torch.zeros(n_states, n_states), 0.0
    hooks = []

    def head_hook(i):
        def f(mod, args):
            x = args[0].detach().float()  # (B, T, n_heads*hd): per-head attention outputs
            sums["heads"][i] = sums["heads"][i] + x.view(*x.shape[:-1], -1, hd).norm(dim=-1) \
                .reshape(-1, x.shape[-1] // hd).sum(0)
        return f

    def ffn_hook(i):
        def f(mod, args):
            x = args[0].detach().float()  # (B, T, F): FFN activations
            sums["ffn"][i] = sums["ffn"][i] + x.abs().reshape(-1, x.shape[-1]).sum(0)
        return f

    for i, (o, down) in enumerate(mods):
        hooks.append(o.register_forward_pre_hook(head_hook(i)))
        hooks.append(down.register_forward_pre_hook(ffn_hook(i)))
    try:
        with torch.inference_mode():
            for b in batches:
                out = teacher(**b, output_hidden_states=True)
                states = torch.stack([s.float() for s in out.hidden_states])  # (L+1, B, T, H)
                mask = b.get("attention_mask")
                if mask is not None:
                    states = states * mask[None, :, :, None]
                hidden_sum += states.abs().sum(dim=(0, 1, 2))
                weight = (torch.ones(states.shape[1:3]) if mask is None else mask.float())
                unit = torch.nn.functional.normalize(states, dim=-1)
                cos = torch.einsum("ibth,jbth->ijbt", unit, unit).clamp(-1, 1)
                angle_sum += (torch.arccos(cos) / torch.pi * weight).sum(dim=(2, 3))
                tokens += float(weight.sum())
    finally:
        for h in hooks:
            h.remove()
    return Importance(hidden_sum, sums["heads"], sums["ffn"], angle_sum / max(tokens, 1.0))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest, in their original order (keeps layouts like rope halves)."""
    return torch.sort(torch.topk(scores, k).indices).values


def _head_selection(imp: torch.Tensor, t: ModelShape, s: ModelShape) -> tuple[list[int], list[int]]:
    """(query heads, kv heads) of the teacher to keep in one layer."""
    group_t = t.num_heads // t.num_kv_heads
    group_s = s.num_heads // s.num_kv_heads
    if t.is_encoder:
        q = _top(imp, s.num_heads).tolist()
        return q, q
    if group_s == group_t:  # keep whole KV groups: a query head keeps its own key/value
        kv = _top(imp.view(t.num_kv_heads, group_t).sum(-1), s.num_kv_heads).tolist()
        return [k * group_t + j for k in kv for j in range(group_t)], kv
    kv = _top(imp.view(t.num_kv_heads, group_t).sum(-1), s.num_kv_heads).tolist()
    # other grouping: the best query heads of the kept groups first, then the best others
    order = sorted(range(t.num_heads), key=lambda h: (h // group_t not in kv, -float(imp[h])))
    return sorted(order[: s.num_heads]), kv


def _rows(idx: list[int], hd: int) -> torch.Tensor:
    return torch.tensor([h * hd + j for h in idx for j in range(hd)])


def _init_from_teacher(student, teacher, t: ModelShape, s: ModelShape, imp: Importance) -> None:
    """Copy the selected layers, channels, heads and neurons into ``student``."""
    hid = _top(imp.hidden, s.hidden_size)
    layers = select_layers(t.num_layers, s.num_layers, imp.distance)
    sd_t = teacher.state_dict()
    new = {}
    prefix = ("transformer.layer." if t.family == "distilbert" else
              "encoder.layer." if t.is_encoder else "model.layers.")
    for name, w_s in student.state_dict().items():
        src, li = name, None
        if name.startswith(prefix):
            parts = name.split(".")
            pos = len(prefix.split(".")) - 1
            li = layers[int(parts[pos])]
            parts[pos] = str(li)
            src = ".".join(parts)
        if src not in sd_t:  # e.g. buffers the teacher does not save
            continue
        w = sd_t[src]
        if li is not None:
            q_idx, kv_idx = _head_selection(imp.heads[li], t, s)
            f_idx = _top(imp.ffn[li], s.intermediate_size)
            w = _slice_layer_param(name, w, hid, q_idx, kv_idx, f_idx, t)
        else:
            w = _slice_shared_param(name, w, hid, t)
        if w.shape != w_s.shape:
            raise RuntimeError(f"init shape mismatch for {name}: {tuple(w.shape)} vs "
                               f"{tuple(w_s.shape)}")
        new[name] = w.clone()
    student.load_state_dict(new, strict=False)


def _slice_shared_param(name: str, w: torch.Tensor, hid: torch.Tensor, t: ModelShape):
    if w.ndim == 2 and w.shape[1] == t.hidden_size and "pooler" not in name:
        return w[:, hid]  # embeddings and LM head: (rows, H)
    if "pooler.dense.weight" in name:
        return w[hid][:, hid]
    if w.ndim == 1 and w.shape[0] == t.hidden_size:
        return w[hid]  # norms, pooler bias
    return w


def _slice_layer_param(name, w, hid, q_idx, kv_idx, f_idx, t: ModelShape):
    hd = t.head_dim
    q_rows, kv_rows = _rows(q_idx, hd), _rows(kv_idx, hd)
    if "q_norm" in name or "k_norm" in name:  # per-head norms (qwen3, gemma3): head_dim wide
        return w
    if "qkv_proj" in name:  # phi3: rows [q | k | v] in one matrix; whole heads kept in each
        rows = torch.cat([q_rows, t.q_dim + kv_rows, t.q_dim + t.kv_dim + kv_rows])
        w = w[rows]
        return w[:, hid] if w.ndim == 2 else w
    if "gate_up_proj" in name:  # phi3: rows [gate | up]; a neuron keeps its gate and up row
        w = w[torch.cat([f_idx, t.intermediate_size + f_idx])]
        return w[:, hid] if w.ndim == 2 else w
    if any(k in name for k in ("q_proj", "attention.self.query", "attention.q_lin")):
        w = w[q_rows]
        return w[:, hid] if w.ndim == 2 else w
    if any(k in name for k in ("k_proj", "v_proj", "attention.self.key", "attention.self.value",
                               "attention.k_lin", "attention.v_lin")):
        w = w[kv_rows]
        return w[:, hid] if w.ndim == 2 else w
    if any(k in name for k in ("o_proj", "attention.output.dense", "attention.out_lin")):
        return w[hid][:, q_rows] if w.ndim == 2 else w[hid]
    if any(k in name for k in ("gate_proj", "up_proj", "intermediate.dense", "ffn.lin1")):
        w = w[f_idx]
        return w[:, hid] if w.ndim == 2 else w
    if any(k in name for k in ("down_proj", "output.dense", "ffn.lin2")):
        return w[hid][:, f_idx] if w.ndim == 2 else w[hid]
    if w.ndim == 1 and w.shape[0] == t.hidden_size:
        return w[hid]  # layer norms
    return w


def build_student(teacher_dir: str | Path, student_config: dict, out_dir: str | Path,
                  init: str = "teacher", calibration: list[dict] | None = None,
                  seed: int = 0) -> Path:
    """Write the student HF folder (weights, config, tokenizer) to ``out_dir``.

    ``student_config``: the plan's HF config. ``calibration``: tokenized batches for
    activation-based importance (weight-based without). Returns ``out_dir``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {INITS}")
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    t_cfg = json.loads((teacher_dir / "config.json").read_text())
    t_shape, s_shape = shape_from_config(t_cfg), shape_from_config(student_config)
    auto = AutoModel if t_shape.is_encoder else AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**{k: v for k, v in student_config.items()
                                  if k not in ("transformers_version",)})
    student = auto.from_config(cfg)
    if init == "teacher":
        teacher = auto.from_pretrained(teacher_dir, dtype=torch.float32)
        teacher.eval()
        _init_from_teacher(student, teacher, t_shape, s_shape,
                           importance(teacher, t_shape, calibration))
        del teacher
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir)
    copy_tokenizer(teacher_dir, out_dir)
    return out_dir


def set_dropout(model: torch.nn.Module, p: float) -> dict[str, float]:
    """Every dropout probability of ``model``'s config (its sub-configs included: any float field
    named ``*dropout*`` or ``*_pdrop``) and every torch Dropout module set to ``p``, for
    training. Returns {field: value before} of the config fields that changed."""
    changed: dict[str, float] = {}

    def walk(cfg, prefix=""):
        for key, value in list(vars(cfg).items()):
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config
                walk(value, f"{prefix}{key}.")
            elif (("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float)
                  and value != p):
                changed[prefix + key] = value
                setattr(cfg, key, float(p))

    walk(model.config)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = float(p)
        # attention kernels that read a float attribute instead of a Dropout module
        for attr in ("dropout_prob", "attention_dropout", "attn_dropout_p"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, float(p))
    return changed


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Tokenizer files and sentence-transformers pooling files, unchanged."""
    for name in _COPY:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for pooling in src.glob("*_Pooling"):
        shutil.copytree(pooling, dst / pooling.name, dirs_exist_ok=True)
