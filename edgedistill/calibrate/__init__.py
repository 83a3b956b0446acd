"""``edgedistill calibrate``: measure this machine's runtimes on a designed set of random-weight
shapes, fit the latency predictor (plan/predictor.py), hold out a quarter of the shapes to measure
its error, and store the result in the cache, keyed by a machine fingerprint.

    calibrate(CalibrateConfig(target="local", formats=None, budget_s=600)) -> calibration dict

Shapes span the planner's candidate space: llama-family decoders (hidden 256-1024, 2-12
layers, FFN 2-3.5x, vocab 8k or 32k) for llama.cpp GGUF and onnxruntime ONNX with KV cache;
bert encoders (hidden 256-768, 2-12 layers) for onnxruntime. Each artifact is made the way a
real export makes it (our GGUF writer and llama.cpp's quantizer; optimum and our ONNX
quantizer) and timed in its runtime in a child process (runtimes/bench_worker.py): decode tokens after
a prompt, prefill of the prompt, and encoder batches at the profile's batch and length.
Weights are random: speed does not depend on their values. Each figure is the fastest of
``repeats`` timed runs (contention only ever adds time). The held-out shapes are measured a
second time at the end: how far the two measurements of the same file disagree
(``repeatability`` in each fit) is the floor under any predictor's error on this machine.
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgedistill.convert.gguf import export_gguf
from edgedistill.convert.onnx import export_onnx
from edgedistill.data import stdlib_source
from edgedistill.formats import RUNTIMES, quant_type
from edgedistill.logs import get_logger
from edgedistill.machine import machine_info
from edgedistill.calibrate.fit import (MIN_TRAIN, SUMMARY_HEAD, cache_sizes, fit, fit_all,
                                       spearman, summary_rows)
from edgedistill.plan.predictor import (CALIBRATION_VERSION, CalibrationError,
                                        calibration_path, fingerprint, fingerprint_key)
from edgedistill.profiles import load_profile, local_profile
from edgedistill.quantize.gguf import quantize_gguf
from edgedistill.quantize.onnx import quantize_onnx, quantized_path
from edgedistill.runtimes.child import child
from edgedistill.runtimes.runners import time_artifact
from edgedistill.teacher import load_teacher
from edgedistill.toy import train_bpe_tokenizer

CAUSAL_FORMATS = ("gguf:f16", "gguf:q8_0", "gguf:q4_k_m", "onnx:fp32", "onnx:int8")
ENCODER_FORMATS = ("onnx:fp32", "onnx:int8", "gguf:f16", "gguf:q8_0")
DEFAULT_FORMATS = CAUSAL_FORMATS + ("encoder:onnx:fp32", "encoder:onnx:int8")
"""GGUF encoders are asked for by name: the default budget's encoder share (a quarter) times
too few bert shapes to fit four encoder formats."""
HOLDOUT_EVERY = 4
"""Every 4th designed shape is held out of the fit and used to measure its error."""
DECODE_TOKENS = 32
REPEAT_SHARE = 0.15


_logger = get_logger("calibrate")


# -- the design -------------------------------------------------------------------------------

WIDE = ((2048, 2), (1536, 2), (2048, 4))
"""Full-width llama shapes (hidden, layers) the design times early, with a small vocabulary
so that they cost about what a mid-size shape does (9-40 s here): they extend the calibrated
widths to those of 0.5-1.5B models, and time one width at two depths, so that the per-layer
cost at full width is measured, and a decode step streaming far more than the cache (the
4-layer one: 129 MB at Q4_K_M, 411 MB at F16), so that the DRAM rate is. Deeper and bigger
shapes at the calibrated widths are then predicted by adding up per-layer costs, which
benchmarks/latency_predictor.py --deep checks on held-out 0.5-1.3B shapes (8-24 layers)."""
WIDE_AT = (5, 9, 13)
"""Their places in the design: training places (every HOLDOUT_EVERY-th shape is held out)."""


def design(family: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct shapes spread over the candidate space (stratified: each hidden size and
    depth bucket is visited in turn, the rest drawn at random; for llama the WIDE shapes at
    WIDE_AT). Returns HF config dicts."""
    out = _design(family, n, seed)
    if family == "llama":
        for (h, L), at in zip(WIDE, WIDE_AT):
            out.insert(at, _config("llama", h, L, 2.75, 8192))
    return out[:n]


def _design(family: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    if family == "llama":
        hiddens, depths = [256, 384, 512, 640, 768, 896, 1024], [2, 3, 4, 6, 8, 10, 12]
        mults, vocabs = [2.0, 2.75, 3.5], [8192, 32000]
    else:
        hiddens, depths = [256, 384, 512, 640, 768], [2, 3, 4, 6, 8, 10, 12]
        mults, vocabs = [2.0, 3.0, 4.0], [30522]
    seen, out = set(), []
    while len(out) < n and len(seen) < len(hiddens) * len(depths) * len(mults) * len(vocabs):
        i = len(seen)
        h = hiddens[i % len(hiddens)] if i < 2 * len(hiddens) else rng.choice(hiddens)
        L = depths[(i * 3) % len(depths)] if i < 2 * len(depths) else rng.choice(depths)
        m, v = rng.choice(mults), rng.choice(vocabs)
        key = (h, L, m, v)
        if key in seen:
            seen.add(("dup", len(seen)))
            continue
        seen.add(key)
        out.append(_config(family, h, L, m, v))
    return out


def _config(family: str, h: int, layers: int, mult: float, vocab: int) -> dict:
    heads = max(1, h // 64)
    if family == "llama":
        ffn = max(256, int(round(h * mult / 256)) * 256)
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": h, "intermediate_size": ffn, "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "num_key_value_heads": heads // 2 if heads % 2 == 0 else heads,
                "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 0,
                "eos_token_id": 0, "rope_theta": 10000.0}
    return {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": h,
            "intermediate_size": int(h * mult), "num_hidden_layers": layers,
            "num_attention_heads": heads, "vocab_size": vocab, "max_position_embeddings": 512,
            "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}


# -- making the artifacts ---------------------------------------------------------------------

def _tokenizer(work: Path, family: str, vocab: int) -> Path:
    """A tokenizer folder with exactly ``vocab`` entries (made once per calibration)."""
    d = work / f"tokenizer-{family}-{vocab}"
    if d.is_dir():
        return d
    if family == "llama":

        tok = train_bpe_tokenizer(stdlib_source(200_000), min(1024, vocab))
        tok.add_tokens([f"<|cal{i}|>" for i in range(vocab - len(tok))])
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(load_teacher(None).path)
    tok.save_pretrained(d)
    return d


def _hf_folder(work: Path, family: str, cfg: dict, name: str) -> Path:
    import torch
    import transformers

    d = work / name / "hf"
    if (d / "config.json").is_file():
        return d
    torch.manual_seed(0)
    conf = transformers.AutoConfig.for_model(**cfg)
    auto = transformers.AutoModelForCausalLM if family == "llama" else transformers.AutoModel
    model = auto.from_config(conf).eval()
    model.save_pretrained(d)
    for f in _tokenizer(work, family, cfg["vocab_size"]).iterdir():
        shutil.copy(f, d / f.name)
    return d


def _artifact(work: Path, hf: Path, fmt: str, quant: str, threads: int) -> Path:
    if fmt == "gguf":

        f16 = hf.parent / "model-f16.gguf"
        if not f16.is_file():
            export_gguf(hf, f16, "f16")
        if quant == "f16":
            return f16
        out = hf.parent / f"model-{quant}.gguf"
        return out if out.is_file() else quantize_gguf(f16, quant, out, threads)[0]

    fp32 = hf.parent / "onnx" / "model.onnx"
    if not fp32.is_file():
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            export_onnx(hf, hf.parent / "onnx")
    if quant == "fp32":
        return fp32
    out = quantized_path(fp32, quant)
    return out if out.is_file() else quantize_onnx(fp32, quant)


def _measure(path: Path, fmt: str, encoder: bool, threads: int, prompt: int, seq: int,
             batch: int, repeats: int, vocab: int = 1024) -> dict:
    """{workload: seconds per unit} for one artifact: the fastest of the repeats (decode: the
    median token of a run)."""

    if encoder:
        runtime = "llama.cpp" if fmt == "gguf" else "onnxruntime"
        task = {"kind": "encoder_ids", "runtime": runtime, "model": str(path),
                "threads": threads, "repeats": repeats, "batch": batch, "seq_len": seq}
        r = child("edgedistill.runtimes.bench_worker", task, 900, runtime)
        return {"encoder": min(r["batch_s"])}
    ids = [(7 * i + 3) % min(900, vocab - 1) + 1 for i in range(prompt)]  # within the vocab
    r = time_artifact(path, fmt, threads=threads, prompt=ids, new_tokens=DECODE_TOKENS,
                      repeats=repeats)
    runs = r["runs"]
    out = {"prefill": min(x["prefill_s"] for x in runs),
           "decode": min(statistics.median(x["token_s"]) for x in runs)}
    gen = [statistics.median(x["generate_token_s"]) for x in runs if x.get("generate_token_s")]
    if gen:  # llama-cpp-python's generate loop (GGUF)
        out["generate"] = min(gen)
    return out


# -- the command ------------------------------------------------------------------------------

def parse_formats(spec: str | None) -> list[tuple[str, str, str]]:
    """'gguf:q4_k_m,onnx:int8,encoder:onnx:int8' -> [(family, format, quant)]."""

    items = [s.strip() for s in (spec.split(",") if spec else DEFAULT_FORMATS) if s.strip()]
    out = []
    for item in items:
        family, rest = ("bert", item[len("encoder:"):]) if item.startswith("encoder:") \
            else ("llama", item)
        fmt, _, quant = rest.partition(":")
        allowed = CAUSAL_FORMATS if family == "llama" else ENCODER_FORMATS
        if rest not in allowed:
            raise CalibrationError(
                f"cannot calibrate {item!r}.",
                f"use some of {', '.join(CAUSAL_FORMATS)} and encoder:"
                f"{', encoder:'.join(ENCODER_FORMATS)}")
        quant_type(fmt, quant)
        out.append((family, fmt, quant))
    return out


@dataclass(frozen=True)
class CalibrateConfig:
    target: str = "local"
    """``local``, or a CPU profile whose prompt length and encoder batch set the measured
    workload; the measuring is always of this machine."""
    formats: Optional[str] = None
    """Comma list of what to measure (gguf:f16, gguf:q8_0, gguf:q4_k_m, onnx:fp32, onnx:int8,
    encoder:onnx:fp32, encoder:onnx:int8, encoder:gguf:f16, encoder:gguf:q8_0); None: all."""
    budget_s: float = 600
    """Time budget in seconds (at least 60)."""
    threads: Optional[int] = None
    """Runtime threads; None: the physical cores."""
    out: Optional[str] = None
    """Also write the calibration JSON here."""
    seed: int = 0
    repeats: int = 3
    """Timed runs per measurement."""

    def __post_init__(self):
        if self.budget_s < 60:
            raise CalibrationError(f"--budget-s {self.budget_s:g} is too short to measure "
                                   "anything.", "give at least 60 seconds (default 600)")
        if self.repeats < 1 or (self.threads is not None and self.threads < 1):
            raise CalibrationError("--repeats and --threads must be at least 1.",
                                   "use e.g. --repeats 3")
        if self.target != "local":
            prof = load_profile(self.target)
            if not any(RUNTIMES[r].device == "cpu" for r in prof.runtimes):
                raise CalibrationError(
                    f"calibrate times this machine's CPU runtimes; profile {prof.name!r} runs "
                    f"on {', '.join(prof.runtimes)}, which this machine cannot stand in for "
                    "(its latency stays predicted from the profile).",
                    "use --target local, or a CPU profile such as laptop")
        parse_formats(self.formats)  # a bad --formats fails here, before any work


def calibrate(config: CalibrateConfig = CalibrateConfig(), *, progress: bool = True,
              log=_logger.info) -> dict:
    """Measure, fit and store a calibration of this machine; returns it (also written to the
    cache, and to ``config.out`` when given)."""
    target, formats, budget_s = config.target, config.formats, config.budget_s
    threads, out, seed, repeats = config.threads, config.out, config.seed, config.repeats
    jobs = parse_formats(formats)
    # the profile only sets the workload (prompt length, encoder batch); this machine is measured
    lt = load_profile("laptop" if target == "local" else target).latency_targets
    prompt, seq, batch = lt.prompt_tokens, lt.encoder_seq_len, lt.encoder_batch
    info = machine_info()
    threads = min(threads or info.physical_cores, info.logical_cpus)
    t_start = time.time()
    here = local_profile(threads)  # bandwidth with these threads, fp32 compute from a GEMM
    bw, gemm = here.memory.bandwidth_gbps, here.peak_tflops("fp32")
    fp = fingerprint(threads)
    log(f"{info.cpu_model}, {threads} threads, {bw:.1f} GB/s, last-level cache "
        f"{info.llc_bytes / 2**20:.0f} MiB; budget {budget_s:.0f} s")

    families = sorted({f for f, _, _ in jobs}, reverse=True)  # llama first
    share = {"llama": 0.75, "bert": 0.25} if len(families) == 2 else {families[0]: 1.0}
    points: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="edgedistill-calibrate-"))
    bar = _bar(budget_s, progress)
    kept: list[tuple[Path, list[dict]]] = []  # held-out artifacts and their points, re-timed
    try:
        deadline = t_start
        for family in families:
            fjobs = [(f, q) for fam, f, q in jobs if fam == family]
            # the last 15% of each family's share re-measures its held-out shapes
            deadline += budget_s * share[family] * (1 - REPEAT_SHARE)
            shapes = design(family, 64, seed)
            cost = None
            for i, cfg in enumerate(shapes):
                left = deadline - time.time()
                if cost is not None and left < cost * 1.2:
                    break
                t0 = time.time()
                name = f"{family}-{i}"
                split = "holdout" if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else "train"
                hf = _hf_folder(work, family, cfg, name)
                for fmt, quant in fjobs:
                    try:
                        art = _artifact(work, hf, fmt, quant, threads)
                        meas = _measure(art, fmt, family == "bert", threads, prompt, seq, batch,
                                        repeats)
                    except Exception as e:  # one shape failing is a note, not the end
                        log(f"{name} {fmt}:{quant}: {type(e).__name__}: {str(e)[:200]}")
                        continue
                    new = [{"family": family, "config": cfg, "format": fmt, "quant": quant,
                            "workload": w, "seconds": sec,
                            "prompt": prompt if w != "encoder" else 0,
                            "seq": seq if w == "encoder" else 0,
                            "batch": batch if w == "encoder" else 0,
                            "split": split, "shape": name} for w, sec in meas.items()]
                    points += new
                    if split == "holdout":
                        kept.append((art, new))
                if split != "holdout":
                    shutil.rmtree(work / name, ignore_errors=True)
                took = time.time() - t0
                cost = took if cost is None else max(0.7 * cost + 0.3 * took, took * 0.5)
                bar(time.time() - t_start, f"{family} shape {i + 1} "
                    f"(h{cfg['hidden_size']} L{cfg['num_hidden_layers']}) {took:.0f}s")
        # Repeatability: the held-out artifacts again, minutes later. How far a second
        # measurement of the same file lands is the floor under any predictor's error here.
        for art, pts in kept:
            if time.time() > t_start + budget_s:
                break
            try:
                again = _measure(art, pts[0]["format"], pts[0]["family"] == "bert", threads,
                                 prompt, seq, batch, repeats)
            except Exception:
                continue
            for p in pts:
                p["repeat_seconds"] = again[p["workload"]]
            bar(time.time() - t_start, "repeatability of held-out shapes")
    finally:
        bar(None, "")
        shutil.rmtree(work, ignore_errors=True)
    fits = fit_all(points, info.llc_bytes)
    if not fits:
        raise CalibrationError(
            f"the budget of {budget_s:g} s measured too few shapes to fit anything "
            f"({len(points)} measurements).", "raise --budget-s, or calibrate fewer --formats")
    cal = {"version": CALIBRATION_VERSION, "key": fingerprint_key(fp), "fingerprint": fp,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpu_model": info.cpu_model, "threads": threads, "bandwidth_gbps": bw,
                       "compute_tflops_fp32": gemm, "llc_bytes": info.llc_bytes},
           "workload": {"prompt_tokens": prompt, "decode_tokens": DECODE_TOKENS,
                        "encoder_seq_len": seq, "encoder_batch": batch, "repeats": repeats},
           "seconds": time.time() - t_start, "fits": fits, "points": points}
    _write(calibration_path(threads), cal)
    if out:
        _write(Path(out), cal)
    return cal


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def _bar(total: float, on: bool, desc: str = "calibrate", unit: str = "s"):
    if not on:
        return lambda done, msg: None
    from tqdm import tqdm

    t = tqdm(total=int(total), desc=desc, unit=unit, file=sys.stderr,
             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} " + unit
             + " {postfix}")

    def update(done, msg):
        if done is None:
            t.close()
            return
        t.n = min(int(done), int(total))
        t.set_postfix_str(msg)
        t.refresh()
    return update



__all__ = ["MIN_TRAIN", "SUMMARY_HEAD", "cache_sizes", "calibrate", "design", "fit", "fit_all",
           "parse_formats", "spearman", "summary_rows"]
