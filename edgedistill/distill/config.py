"""What a distillation run is asked to do: one dataclass per part, each owning its defaults
and checking its values (an error names the flag to change). Pure Python: the CLI builds and
validates these before any model is loaded.

    DistillConfig(kd=KDConfig(...), train=TrainConfig(...), data=DataConfig(...),
                  init="teacher", student=None)

``TrainConfig``'s None fields are per-kind defaults that :meth:`TrainConfig.resolved` fills
once the teacher's kind (encoder or causal LM) is known, so ``distill()`` from Python and
``edgedistill distill`` from the shell train with the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from edgedistill.arch import shape_from_config
from edgedistill.distill.quant_aware import parse as parse_quant_aware
from edgedistill.errors import EdgeDistillError, TeacherError
from edgedistill.plan import MAX_STAGE_DROP

LOSSES = ("fkl", "rkl", "jsd")
"""KD divergences: forward KL (mode-covering), reverse KL (mode-seeking), JSD."""

TEACHER_DTYPES = ("auto", "fp32", "bf16", "fp16")

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of CPUs with native bf16 arithmetic (x86 AVX512-BF16 and AMX; the
``bf16`` feature of ARMv8.6)."""


def auto_teacher_dtype(device: str, cpu_flags, cuda_bf16: bool = False) -> tuple[str, str]:
    """(dtype, why) that ``--teacher-dtype auto`` picks on ``device``."""
    if device.startswith("cuda"):
        return ("bf16", "a GPU with bf16") if cuda_bf16 else ("fp16", "a GPU without bf16")
    have = [f for f in BF16_CPU_FLAGS if f in set(cpu_flags)]
    if have:
        return "bf16", f"this CPU has native bf16 ({have[0]})"
    return "fp32", "this CPU has no native bf16 instructions"


LR = 5e-4
"""The peak learning rate when the user gives none."""

QAT_CHECKPOINT_LR = 5e-5
"""The peak learning rate of a QAT checkpoint (the teacher's own shape trained quant-aware from
its weights) when the user gives none. Its weights start where they should end, so a distilling
student's rate only shakes them: on the 4.2M llama's Q4_0 checkpoint (1200 steps) held-out KL to
the float model 0.0034 at 2e-5, 0.0038 at 1e-4, 0.0045 at 5e-6; at 5e-4 (300 steps) it ended
worse than the plain quantized model. Between 2e-5 and 5e-5 the real model decides:
SmolLM2-135M's Q4_0 checkpoint in 200 steps recovered 46% of the gap at 5e-5 and 38% at 2e-5,
while the 4.2M llama's 1200 steps give 72% and 73% (two seeds each; benchmarks/qad.py,
docs/benchmarks.md#qadpy)."""

TRAIN_DEFAULTS = {"causal": {"steps": 300, "batch_size": 8, "hidden_weight": 0.0},
                  "encoder": {"steps": 800, "batch_size": 32, "hidden_weight": 30.0}}
"""Steps, batch size and hidden-state loss weight when the user gives none. Encoders: 800
length-grouped batches of 32 sentences (under 2 minutes on 2 cores), the hidden-state MSE
(every student layer against its teacher layer, every token) weighted 30 against the pooled
embedding's cosine loss: on the demo's 3-layer student, 800 steps, held-out news cosine 0.874
at weight 1, 0.878 at 3, 0.881 at 10, 0.883 at 30, 0.882 at 100 (README, 'The main job')."""


def _require(ok: bool, message: str, hint: str) -> None:
    if not ok:
        raise EdgeDistillError(message, hint)


@dataclass(frozen=True)
class KDConfig:
    loss: Literal["fkl", "rkl", "jsd"] = "fkl"
    """fkl (forward KL, mode-covering), rkl (reverse KL, mode-seeking) or jsd."""
    temperature: float = 1.0
    kd_weight: float = 1.0
    """Weight of KD against CE on the data; 0 is plain CE training (the honest baseline)."""
    jsd_beta: float = 0.5
    """JSD mixture weight: 0 behaves like forward KL, 1 like reverse KL."""
    chunk_tokens: int = 1024
    """Tokens per chunk in the chunked loss."""
    on_policy: float = 0.0
    """Causal LMs: the share of steps (GKD's lambda) whose batch the student writes itself,
    continuing prompts from the data, scored by the teacher with the divergence of ``loss``
    (no CE on the student's own tokens); 0 = off-policy only."""

    def __post_init__(self):
        _require(self.loss in LOSSES, f"unknown --loss {self.loss!r}.",
                 f"use one of {', '.join(LOSSES)}")
        _require(self.temperature > 0, f"--temperature must be above 0, not {self.temperature}.",
                 "use e.g. --temperature 1 (2 softens the teacher's distribution)")
        _require(0 <= self.kd_weight <= 1, f"--kd-weight must lie in [0, 1], not "
                 f"{self.kd_weight}.", "use 1 for pure KD, 0 for plain CE, or a mix between")
        _require(0 <= self.jsd_beta <= 1, f"--jsd-beta must lie in [0, 1], not {self.jsd_beta}.",
                 "use 0.5 (the symmetric JSD)")
        _require(0 <= self.on_policy <= 1, f"--on-policy must lie in [0, 1], not "
                 f"{self.on_policy}.", "use e.g. --on-policy 0.5 (half the steps on the "
                 "student's own text), or 0 to turn it off")
        _require(self.chunk_tokens >= 1, f"chunk_tokens must be at least 1, not "
                 f"{self.chunk_tokens}.", "use the default, 1024")


@dataclass(frozen=True)
class TrainConfig:
    steps: Optional[int] = None
    """Optimizer steps; None: TRAIN_DEFAULTS for the teacher's kind (800 encoders, 300 causal)."""
    batch_size: Optional[int] = None
    """Sequences (encoders: sentences) per micro-batch per process; None: TRAIN_DEFAULTS (32
    encoders, 8 causal)."""
    grad_accum: int = 1
    lr: Optional[float] = None
    """Peak learning rate; None: ``LR`` (5e-4), or ``QAT_CHECKPOINT_LR`` (5e-5) for a QAT
    checkpoint (a student of the teacher's own shape trained quant-aware), filled by
    :meth:`resolved`."""
    warmup: float = 0.05
    """Share of the steps spent warming up the learning rate."""
    weight_decay: float = 0.01
    clip: float = 1.0
    hidden_weight: Optional[float] = None
    """Weight of the hidden-state loss; None: TRAIN_DEFAULTS (0 for causal LMs, 30 for
    encoders); 0 turns it off."""
    similarity_weight: float = 0.0
    """Encoders: weight of the in-batch similarity loss (losses.similarity_loss)."""
    dropout: Union[float, Literal["config"]] = 0.0
    """The student's dropout while it is distilled: every dropout probability of its config
    (and every torch Dropout module) is set to this; ``"config"`` keeps the config's. 0 by default:
    the student copies a teacher that runs without dropout, over less than an epoch of text,
    and the demo's MiniLM student (whose config says 0.1) gained 0.01 cosine on held-out news
    without it."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """The student's forward and backward on a CPU under bf16 autocast (weights and optimizer
    stay fp32). auto: on a CPU with native bf16 (as ``--teacher-dtype auto``) for sentence
    encoders, where it distilled the demo's MiniLM student 1.25x faster at the same held-out
    cosine; causal LMs on a CPU stay fp32 (not measured). On a GPU the student always trains
    under bf16 autocast (accelerate's), whatever this says."""
    activation_checkpointing: bool = False
    """Keep only each layer's input during the student's forward pass and recompute the rest
    in backward (transformers' gradient checkpointing, non-reentrant): less memory for a
    little more compute; the same gradients."""
    fsdp: bool = False
    """Shard the student's parameters, gradients and optimizer state across the processes of a
    distributed run (torch FSDP2, per layer; :mod:`edgedistill.distill.sharding`); one process
    trains as usual."""
    eval_every: Optional[int] = None
    """Validate every N steps (0: never); None: a quarter of the steps."""
    save_every: Optional[int] = None
    """Checkpoint every N steps (0: never; resuming needs checkpoints); None: an eighth of the
    steps."""
    eval_batches: int = 16
    seed: int = 0

    def __post_init__(self):
        for name, flag, low in (("steps", "--steps", 1), ("batch_size", "--batch-size", 1),
                                ("grad_accum", "--grad-accum", 1),
                                ("eval_every", "--eval-every", 0),
                                ("save_every", "--save-every", 0),
                                ("eval_batches", "eval_batches", 1)):
            v = getattr(self, name)
            _require(v is None or (isinstance(v, int) and v >= low),
                     f"{flag} must be a whole number of at least {low}, not {v!r}.",
                     f"use {flag} {max(low, 1)} or more")
        _require(self.lr is None or self.lr > 0, f"--lr must be above 0, not {self.lr}.",
                 "use e.g. --lr 5e-4")
        _require(0 <= self.warmup < 1, f"warmup is a share of the steps in [0, 1), not "
                 f"{self.warmup}.", "use e.g. 0.05")
        _require(self.mixed_precision in ("auto", "no", "bf16"),
                 f"unknown --mixed-precision {self.mixed_precision!r}.", "use auto, no or bf16")
        _require(self.similarity_weight >= 0, f"--similarity-weight must be 0 or more, not "
                 f"{self.similarity_weight}.", "use 0 (off) or e.g. 10")
        numeric = isinstance(self.dropout, (int, float))
        _require(self.dropout == "config" or (numeric and 0 <= self.dropout < 1),
                 f"--dropout is a probability in [0, 1) or 'config', not {self.dropout!r}.",
                 "use --dropout 0 (the default), e.g. 0.1, or config")
        _require(self.hidden_weight is None or self.hidden_weight >= 0,
                 f"--hidden-weight must be 0 or more, not "
                 f"{self.hidden_weight}.", "use 0 (off) or e.g. 1")

    def resolved(self, encoder: bool, qat_checkpoint: bool = False) -> "TrainConfig":
        """This config with every None filled for a teacher of this kind (``qat_checkpoint``:
        the student is the teacher's own shape, trained quant-aware)."""
        d = TRAIN_DEFAULTS["encoder" if encoder else "causal"]
        steps = self.steps or d["steps"]
        lr = self.lr if self.lr is not None else QAT_CHECKPOINT_LR if qat_checkpoint else LR
        return dataclasses.replace(
            self, steps=steps, batch_size=self.batch_size or d["batch_size"], lr=lr,
            hidden_weight=(d["hidden_weight"] if self.hidden_weight is None
                           else self.hidden_weight),
            eval_every=max(1, steps // 4) if self.eval_every is None else self.eval_every,
            save_every=max(1, steps // 8) if self.save_every is None else self.save_every)


@dataclass(frozen=True)
class DataConfig:
    seq_len: int = 256
    """Tokens per packed training sequence (encoders: maximum sentence length)."""
    val_fraction: float = 0.05
    generate: int = 0
    """Teacher-generated continuations to add (sequence-level KD); 0 = none."""
    gen_tokens: int = 128
    cache_topk: int = 0
    """Cache the teacher's top-K logits once and train from the cache; 0 = live teacher."""
    num_responses: int = 1
    """Prompt data: responses the teacher writes per prompt."""
    gen_temperature: float = 0.0
    """Prompt data: the teacher's sampling temperature; 0 = greedy. (``KDConfig.temperature``
    is the KD temperature.)"""
    top_p: float = 1.0
    """Prompt data: nucleus sampling's probability mass (with a temperature above 0)."""
    max_new_tokens: int = 256
    """Prompt data: the longest response; one that reaches it without ending is unfinished."""
    keep_if: Optional[str] = None
    """Prompt data: keep only responses whose final non-empty line matches this regular
    expression (e.g. a checked answer)."""
    drop_unfinished: bool = False
    """Prompt data: drop responses that hit ``max_new_tokens`` without ending."""
    stream: bool = False
    """Read the data while training (:mod:`edgedistill.datastream`) instead of loading and
    tokenizing it all first: causal LMs, text or JSONL files, a saved dataset, or
    ``hf://datasets/ORG/NAME[/CONFIG]``."""

    def __post_init__(self):
        _require(self.seq_len >= 2, f"--seq-len must be at least 2, not {self.seq_len}.",
                 "use e.g. --seq-len 256")
        _require(0 < self.val_fraction < 1, f"val_fraction must lie in (0, 1), not "
                 f"{self.val_fraction}.", "use e.g. 0.05")
        _require(self.generate >= 0 and self.gen_tokens >= 1 and self.cache_topk >= 0,
                 "--generate, --cache-topk must be 0 or more and gen_tokens at least 1.",
                 "use --generate 0 and --cache-topk 0 to turn them off")
        _require(self.num_responses >= 1, f"--num-responses must be at least 1, not "
                 f"{self.num_responses}.", "use e.g. --num-responses 1")
        _require(self.num_responses == 1 or self.gen_temperature > 0,
                 f"--num-responses {self.num_responses} with greedy decoding would write the "
                 "same response each time.", "sample them with e.g. --gen-temperature 0.7, or "
                 "use --num-responses 1")
        _require(self.gen_temperature >= 0, f"--gen-temperature must be 0 (greedy) or more, "
                 f"not {self.gen_temperature}.", "use e.g. --gen-temperature 0.7")
        _require(0 < self.top_p <= 1, f"--top-p must lie in (0, 1], not {self.top_p}.",
                 "use e.g. --top-p 0.95")
        _require(self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1, not "
                 f"{self.max_new_tokens}.", "use e.g. --max-new-tokens 256")
        if self.keep_if is not None:
            try:
                re.compile(self.keep_if)
            except re.error as e:
                raise EdgeDistillError(f"--keep-if {self.keep_if!r} is not a regular "
                                       f"expression ({e}).",
                                       "write e.g. --keep-if '^Answer: \\d+$'") from None
        _require(not (self.stream and (self.generate or self.cache_topk)),
                 "--stream reads the data once, as it trains; --generate and --cache-topk "
                 "need all of it first.", "drop --stream, or drop --generate/--cache-topk")


@dataclass(frozen=True)
class DistillConfig:
    kd: KDConfig = field(default_factory=KDConfig)
    """The loss: divergence, temperature, KD weight."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimizer loop: steps, batch, learning rate, cadence."""
    data: DataConfig = field(default_factory=DataConfig)
    """How the text becomes training items."""
    init: Literal["teacher", "random"] = "teacher"
    """Initialise the student from the teacher's weights (layer selection, width pruning by
    importance) or at random."""
    student: Optional[str] = None
    """An existing HF student folder (the teacher's tokenizer) instead of the planned one."""
    stages: int = 1
    """Progressive distillation: 1 distils the planned student directly; K >= 2 goes through a
    chain of K students, each pruned from and distilled by the one before, the token budget
    split evenly; 0 plans as few stages as keep each step's parameter drop within a third
    (``plan.MAX_STAGE_DROP``)."""
    progressive_teacher: Literal["previous", "original"] = "previous"
    """Progressive distillation: each stage's teacher is the stage before (``previous``), or
    always the original teacher (``original``)."""
    final_share: float = 0.0
    """Progressive distillation: the share of the steps the last stage (the planned student)
    gets, the rest split evenly over the stages before; 0 splits all steps evenly."""
    max_stage_drop: float = MAX_STAGE_DROP
    """Progressive distillation with ``stages=0``: the largest share of the parameters one
    stage may remove (``plan.MAX_STAGE_DROP``; benchmarks/recipes.py measures it)."""
    routes: Optional[tuple] = None
    """Several teachers: ((glob, teacher number), ...): data files matching a glob learn that
    teacher's distribution alone (numbered from 1 in the order given); the rest the mixture."""
    teacher_weights: Optional[tuple] = None
    """Several teachers: each one's weight in the mixture of their distributions, in the
    order given (normalized; default equal)."""
    quant_aware: Optional[str] = None
    """Quant-aware distillation: ``FMT:QUANT`` (``gguf:q4_k_m``, ``gguf:q4_0``, ``gguf:q6_k``,
    ``gguf:q8_0``, ``onnx:int4``, ``onnx:qdq_a8w8``, ``onnx:qdq_a16w8``, ``onnx:qdq_a16w4``) whose exact grids the
    student's matrices are trained through in the last ``quant_aware_share`` of the steps;
    the saved student holds the rounded weights (distill/quant_aware.py)."""
    quant_aware_share: float = 0.5
    """The share of the steps, at the end of the run, that train through the grid."""
    teacher_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """The frozen teacher's dtype. auto: bf16 on a GPU that has it (else fp16), and on a CPU
    with native bf16 instructions (AVX512-BF16, AMX, ARM BF16; 3.1-3.2x faster forward than
    fp32 on this project's AMD EPYC), else fp32. The KD loss is computed in fp32 either way."""

    def __post_init__(self):
        _require(self.init in ("teacher", "random"), f"unknown --init {self.init!r}.",
                 "use --init teacher or --init random")
        _require(self.stages >= 0, f"--stages must be 2 or more (or 0 with --progressive), "
                 f"not {self.stages}.", "use e.g. --stages 2, or --progressive")
        _require(self.progressive_teacher in ("previous", "original"),
                 f"unknown --progressive-teacher {self.progressive_teacher!r}.",
                 "use --progressive-teacher previous or original")
        _require(0 <= self.final_share < 1, f"--final-share must lie in [0, 1), not "
                 f"{self.final_share}.", "use e.g. --final-share 0.6, or 0 to split evenly")
        _require(0 < self.max_stage_drop < 1, f"--max-stage-drop must lie in (0, 1), not "
                 f"{self.max_stage_drop}.", "use e.g. --max-stage-drop 0.33")
        _require(self.stages == 1 or self.student is None,
                 "--student trains that folder as it is; a progressive chain plans its own "
                 "students.", "drop --student, or drop --progressive / --stages")
        if self.routes is not None:
            rs = tuple((str(g), int(n)) for g, n in self.routes)
            _require(bool(rs) and all(n >= 1 for _, n in rs),
                     f"--route needs GLOB=N pairs with N from 1, not {list(self.routes)}.",
                     "write e.g. --route 'code*.txt=1' --route 'prose*.txt=2'")
            object.__setattr__(self, "routes", rs)
        if self.teacher_weights is not None:
            ws = tuple(self.teacher_weights)
            _require(all(isinstance(w, (int, float)) and w > 0 for w in ws),
                     f"--teacher-weights must be positive numbers, not {list(ws)}.",
                     "write e.g. --teacher-weights 0.6,0.4")
            object.__setattr__(self, "teacher_weights", ws)
        _require(0 < self.quant_aware_share <= 1, f"--quant-aware-share must lie in (0, 1], "
                 f"not {self.quant_aware_share}.", "use e.g. --quant-aware-share 0.5")
        if self.quant_aware is not None:
            parse_quant_aware(self.quant_aware)
            _require(self.stages == 1, "--quant-aware trains one student; a progressive "
                     "chain trains several.", "drop --progressive / --stages, or "
                     "--quant-aware")
        _require(self.teacher_dtype in TEACHER_DTYPES,
                 f"unknown --teacher-dtype {self.teacher_dtype!r}.",
                 f"use one of {', '.join(TEACHER_DTYPES)}")
        _require(not (self.data.cache_topk and self.kd.on_policy),
                 "--cache-topk caches the teacher on the data's text; on-policy steps score "
                 "text the student writes during training, which no cache holds.",
                 "drop --cache-topk or --on-policy")
        _require(not (self.data.cache_topk and self.kd.loss != "fkl"),
                 "--cache-topk trains against a top-K teacher distribution, which supports "
                 f"forward KL only, not {self.kd.loss!r}.",
                 "use --loss fkl with --cache-topk, or drop --cache-topk")
        _require(not (self.train.fsdp and (self.kd.on_policy or self.quant_aware)),
                 "--fsdp shards the student for plain distillation steps; on-policy steps "
                 "(each process writes text of its own length) and the quant-aware phase are "
                 "not supported with it.", "drop --fsdp, or drop --on-policy / --quant-aware "
                 "(the whole chain: --no-quant-aware)")
        if self.student is not None:
            check_student_folder(Path(self.student))


def check_student_folder(folder: Path) -> None:
    """A --student folder must be an HF folder of a supported family (before any model is
    loaded): else EdgeDistillError naming the flag."""
    cfg_path = folder / "config.json"
    _require(cfg_path.is_file(), f"--student {folder} is not an HF model folder (no "
             "config.json).", "pass a folder that save_pretrained wrote, or drop --student to "
             "build the planned student")
    try:
        cfg = json.loads(cfg_path.read_text())
        shape_from_config(cfg, str(cfg_path))
    except ValueError as e:
        raise EdgeDistillError(f"--student {cfg_path} is not valid JSON: {e}.",
                               "pass a folder that save_pretrained wrote") from None
    except TeacherError as e:
        what = e.message.removeprefix(f"{cfg_path}: ")
        raise EdgeDistillError(f"--student {folder}: {what}",
                               "pass a student of a supported family with the teacher's "
                               f"tokenizer ({e.hint.split('; ')[0]}), or drop --student to "
                               "build the planned one") from None


@dataclass
class DistillResult:
    """What :func:`edgedistill.distill.distill` returns."""
    run_dir: Path
    student_dir: Path
    metrics: dict = field(default_factory=dict)
