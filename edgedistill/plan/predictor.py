"""The latency predictor that ``plan`` and ``predict`` share.

    predict(shape, profile, fmt, quant) -> Prediction labelled
        calibrated    a fit to measurements of this machine (``edgedistill calibrate``), or
                      for an NPU profile the roofline scaled to phone latencies measured
                      through Qualcomm AI Hub (``bench --qai-hub``)
        predicted     that fit scaled to another CPU profile by bandwidth and compute
        uncalibrated  the roofline with the profile's default coefficients

A calibration fits, per ``format:quant`` and workload (``decode``, ``prefill``, ``encoder``),
the time of one unit of work as a non-negative sum of physically motivated terms:

    decode   s/token = c0 + c1 L + c2 MB-from-cache + c3 MB-from-DRAM + c4 attention GFLOP
                       + c5 vocabulary/1000 (the logits row: copied out and scanned per token)
                       + c6 MB of fallback matrices
    prefill  s/prompt = c0 + c1 L + c2 matmul GFLOP + c3 fallback matmul GFLOP
                        + c4 attention GFLOP + c5 weight MB
    encoder  s/batch = c0 + c1 L + c2 matmul GFLOP + c3 fallback matmul GFLOP
                       + c4 attention GFLOP + c5 element-wise MB

where the bytes a decode step streams (weights at their stored width, plus the KV cache) are
split between cache and DRAM: a model of tens of MB partly lives in the cache. The share
served from the cache is (C / bytes)^k once the bytes exceed the cache C, all of them below
it. C is the effective cache, chosen per fit by cross-validation (``fit.llc_bytes``): on a
shared VM the cache a process really gets is far smaller than the one the CPU reports
(measured: 48 MiB of a reported 480). k (``fit.cache_decay``) is how fast the cache stops
helping once a step streams more than it holds, chosen the same way: a step that streams its
weights in order evicts what it will need next, so past the cache the hits fall faster than
the C/bytes of a fixed cached part (k = 1, the split of calibrations before it). Measured on
held-out 0.5-1.3B shapes (benchmarks/latency_predictor.py --deep): with k = 1 and no timed
shape far past the cache, decode was predicted 93-130% (Q4_K_M) and 28-34% (F16) too slow;
with the design's full-width 4-layer shape and C, k chosen by cross-validation, 4-14% (F16,
k 4), 5-13% (Q8_0, k 4) and 8-24% (Q4_K_M, which chose k 1 and stays flagged extrapolated).
"Fallback" matrices are those whose rows the format's blocks do not divide, which llama.cpp
stores in a wider type and multiplies with other kernels (Q4_K -> Q5_0): their matmul work
has its own rate (measured: without it, Q4_K_M prefills of width 640 and 896 were predicted
14-18% too fast and the rank correlation was 0.93; with it 0.97). A log-linear model over
the same terms is fitted too; whichever generalises better in cross-validation on the
calibration's own training shapes is used (``fit.chosen``).

Pure Python: ``plan`` must not import numpy or torch. The fitting lives in calibrate/.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from pathlib import Path

from edgedistill.arch import ModelShape, shape_from_config
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import quant_type
from edgedistill.machine import cpu_model, package_version
from edgedistill.plan.costmodel import (Prediction, _weight_bytes, attention_flops,
                                        encoder_elementwise_bytes, fallback_matrices,
                                        generate_overhead_s, predict as roofline)
from edgedistill.profiles import DeviceProfile, resolve_profile
from edgedistill.runstate import cache_dir

CALIBRATION_VERSION = 2
FEATURES = {
    "decode": ["call", "layers", "cache_mb", "dram_mb", "attn_gflop", "vocab_k", "fallback_mb"],
    "prefill": ["call", "layers", "matmul_gflop", "fallback_gflop", "attn_gflop", "weight_mb"],
    "encoder": ["call", "layers", "matmul_gflop", "fallback_gflop", "attn_gflop",
                "elementwise_mb"],
}
FEATURES["generate"] = FEATURES["decode"]  # llama-cpp-python's loop: the step's terms
SCALED_UNCERTAINTY = 0.5
"""Stated relative uncertainty of figures scaled from this machine to another CPU profile:
the scaling by bandwidth and compute ratios is physics, not a measurement of that device."""


class CalibrationError(EdgeDistillError):
    """A calibration is missing, unreadable, or was made on another machine."""


# -- where calibrations live ------------------------------------------------------------------

def fingerprint(threads: int) -> dict:
    """What a calibration is only valid for: this CPU, core count, thread count and runtime
    versions. Cheap (no runtime is imported)."""

    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "threads": int(threads),
            "llama_cpp_python": package_version("llama_cpp_python"),
            "onnxruntime": package_version("onnxruntime"), "version": CALIBRATION_VERSION}


def fingerprint_key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def calibration_path(threads: int) -> Path:
    return cache_dir() / "calibration" / f"{fingerprint_key(fingerprint(threads))}.json"


def load_calibration(path: str | Path | None = None, threads: int | None = None) -> dict | None:
    """This machine's calibration: ``path`` (an error if made elsewhere), else the cache entry
    for this machine and ``threads`` (None when there is none)."""
    if path is None:
        if threads is None:
            return None
        p = calibration_path(threads)
        return json.loads(p.read_text()) if p.is_file() else None
    p = Path(path)
    try:
        cal = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CalibrationError(f"cannot read calibration {p}: {e}.",
                               "run 'edgedistill calibrate' to make one") from None
    if not isinstance(cal, dict) or "fingerprint" not in cal or "fits" not in cal:
        raise CalibrationError(f"{p} is not an edgedistill calibration.",
                               "pass a file written by 'edgedistill calibrate'")
    here = fingerprint(cal["fingerprint"].get("threads", 1))
    diff = [k for k in here if here[k] != cal["fingerprint"].get(k)]
    if diff:
        what = ", ".join(f"{k} {cal['fingerprint'].get(k)!r} (here {here[k]!r})" for k in diff)
        raise CalibrationError(f"calibration {p} was made on another machine or runtime: {what}.",
                               "run 'edgedistill calibrate' on this machine")
    return cal


# -- features ---------------------------------------------------------------------------------

def features(workload: str, shape: ModelShape, fmt: str, quant: str, *, llc_bytes: int,
             context: int = 0, prompt: int = 0, seq: int = 0, batch: int = 0,
             block: int = 32, cache_decay: float = 1.0) -> list[float]:
    """The terms of FEATURES[workload] for one shape, in MB and GFLOP; a decode step's bytes
    split between cache and DRAM by :func:`cached_share`."""

    q = quant_type(fmt, quant)
    weights, streamed, _ = _weight_bytes(shape, q, block)
    fb_params, fb_bytes = fallback_matrices(shape, q, block)
    L = shape.num_layers
    if workload in ("decode", "generate"):  # generate: llama-cpp-python's loop, same terms
        total = streamed + shape.kv_cache_elements(context) * q.kv_bytes
        cached = total * cached_share(total, llc_bytes, cache_decay)
        return [1.0, L, cached / 1e6, (total - cached) / 1e6,
                attention_flops(shape, 1, context, True) / 1e9, shape.vocab_size / 1e3,
                L * fb_bytes / 1e6]
    if workload == "prefill":
        fb = 2 * L * fb_params * prompt
        mm = 2 * (L * shape.layer_matrix_params() * prompt + shape.output_matrix_params())
        return [1.0, L, (mm - fb) / 1e9, fb / 1e9,
                attention_flops(shape, prompt, prompt, True) / 1e9, weights / 1e6]
    if workload == "encoder":
        fb = 2 * L * fb_params * batch * seq
        mm = 2 * L * shape.layer_matrix_params() * batch * seq
        return [1.0, L, (mm - fb) / 1e9, fb / 1e9,
                attention_flops(shape, seq, seq, False) * batch / 1e9,
                encoder_elementwise_bytes(shape, seq, batch) / 1e6]
    raise ValueError(f"unknown workload {workload!r}")


def cached_share(streamed: float, cache: float, decay: float = 1.0) -> float:
    """The share of a decode step's ``streamed`` bytes served from a ``cache`` of that many
    bytes: all of them while they fit, then (cache / streamed) ** decay."""
    return 1.0 if streamed <= cache else (cache / streamed) ** decay


def evaluate(fit: dict, x: list[float], model: str | None = None) -> float:
    """Seconds for one unit of work from a fit and its feature vector."""
    model = model or fit["chosen"]
    if model == "physical":
        return sum(c * v for c, v in zip(fit["physical"], x))
    w = fit["loglinear"]
    return math.exp(w[0] + sum(wi * math.log(max(v, 1e-6)) for wi, v in zip(w[1:], x[1:])))


def fit_key(fmt: str, quant: str, workload: str) -> str:
    return f"{fmt}:{quant}:{workload}"


# -- predicting -------------------------------------------------------------------------------

def _scale_physical(fit: dict, x: list[float], workload: str, cal: dict,
                    prof: DeviceProfile) -> float:
    """The physical fit moved to another CPU: memory terms by the bandwidth ratio, compute
    terms by the fp32 compute ratio, fixed costs by the compute ratio per thread."""
    m = cal["machine"]
    bw = m["bandwidth_gbps"] / prof.memory.bandwidth_gbps
    comp = m["compute_tflops_fp32"] / prof.peak_tflops("fp32")
    per_thread = comp * prof.threads / max(1, m["threads"])
    decode = ["fixed", "fixed", "memory", "memory", "compute", "fixed", "memory"]
    kinds = {"decode": decode, "generate": decode,
             "prefill": ["fixed", "fixed", "compute", "compute", "compute", "compute"],
             "encoder": ["fixed", "fixed", "compute", "compute", "compute", "memory"]}[workload]
    factor = {"fixed": per_thread, "memory": bw, "compute": comp}
    return sum(c * v * factor[k] for c, v, k in zip(fit["physical"], x, kinds))


def predict(shape: ModelShape, profile: DeviceProfile, fmt: str, quant: str,
            calibration: dict | None = None) -> Prediction:
    """Memory and latency of ``shape`` as ``fmt:quant`` on ``profile``: calibrated on the
    machine the calibration was made on (``--target local``), scaled to other CPU profiles,
    else the roofline. Memory is always the layout's arithmetic (weights, KV cache, buffers)."""
    base = roofline(shape, profile, fmt, quant)  # labelled uncalibrated
    if calibration is None:
        return base
    workloads = ["encoder"] if shape.is_encoder else ["decode", "prefill"]
    fits = [calibration["fits"].get(fit_key(fmt, quant, w)) for w in workloads]
    if any(f is None for f in fits):
        return base
    here = profile.name == "local" and profile.threads == calibration["fingerprint"]["threads"]
    if not here and profile.kind != "cpu":
        return base  # a CPU's calibration says nothing about a GPU or an NPU
    lt = profile.latency_targets
    gen_fit = None if shape.is_encoder else calibration["fits"].get(
        fit_key(fmt, quant, "generate"))  # GGUF calibrations since llama-cpp-python's loop
    if gen_fit is not None:
        workloads, fits = workloads + ["generate"], fits + [gen_fit]
    times, outside, physical, added = {}, "", [], False
    for w, fit in zip(workloads, fits):
        llc = fit.get("llc_bytes") or calibration["machine"]["llc_bytes"]
        x = features(w, shape, fmt, quant, llc_bytes=llc, context=lt.prompt_tokens,
                     prompt=lt.prompt_tokens, seq=lt.encoder_seq_len, batch=lt.encoder_batch,
                     block=profile.constraints.int4_block_size,
                     cache_decay=fit.get("cache_decay", 1.0))
        key = fit_key(fmt, quant, w)
        beyond = outside_design(shape, calibration, key, strict=True)
        out_w = beyond and outside_design(shape, calibration, key)  # what adding up can't cover
        outside = outside or out_w
        added = added or bool(beyond and not out_w)
        # a log-linear fit beyond its design runs away (powers of features it never saw
        # vary: 0.5B F16 decode was predicted at 72,530 s a token); the physical sum is linear
        model = "physical" if beyond and fit["chosen"] == "loglinear" else None
        if model:
            physical.append(w)
        times[w] = (evaluate(fit, x, model) if here
                    else _scale_physical(fit, x, w, calibration, profile))
        times[w] = max(times[w], 1e-7)
    err = ", ".join(f"{w} held-out MAPE {f['holdout']['mape']:.1%}"
                    for w, f in zip(workloads, fits) if f.get("holdout"))
    if here:
        label, basis = "calibrated", (f"calibration {calibration['key']} of this machine "
                                      f"({err or 'no held-out shapes'})")
    else:
        label, basis = "predicted", (
            f"this machine's calibration ({calibration['fingerprint']['cpu_model']}, "
            f"{calibration['fingerprint']['threads']} threads) scaled to {profile.name} by "
            f"memory bandwidth and compute; uncertainty about ±{SCALED_UNCERTAINTY:.0%}")
    if outside:
        basis += f"; EXTRAPOLATED: {outside}"
    elif added:
        basis += ("; deeper or bigger than the shapes timed: per-layer costs measured at full "
                  "width, added up")
    if physical:
        basis += (f" ({', '.join(physical)} from the physical fit: the log-linear one does "
                  "not extrapolate)")
    if shape.is_encoder:
        t = times["encoder"]
        return dataclasses.replace(base, encoder_batch_ms=t * 1e3,
                                   sentences_per_s=lt.encoder_batch / t, label=label,
                                   basis=basis, extrapolated=bool(outside))
    gen = None
    if "generate" in times:
        gen = 1 / max(times["generate"], times["decode"])  # the loop is the step and more
    elif base.generate_tokens_per_s is not None:  # the profile's per-token term on the step
        gen = 1 / (times["decode"] + generate_overhead_s(profile.cost_model, shape))
    return dataclasses.replace(base, decode_tokens_per_s=1 / times["decode"],
                               prefill_ms=times["prefill"] * 1e3,
                               prefill_tokens_per_s=lt.prompt_tokens / times["prefill"],
                               generate_tokens_per_s=gen,
                               label=label, basis=basis, extrapolated=bool(outside))


_RANGES: dict = {}


def design_range(calibration: dict, key: str) -> dict | None:
    """The measured design behind fit ``key`` (``format:quant:workload``): the smallest and
    largest parameters, layers and width among the shapes it was fitted on, the depths timed
    at the largest width, and the most bytes a decode step of them streamed; None when the
    calibration keeps no points for it."""
    memo = (calibration.get("key"), calibration.get("created"),
            len(calibration.get("points", [])), key)
    if memo not in _RANGES:
        shapes = [shape_from_config(p["config"]) for p in calibration.get("points", [])
                  if fit_key(p["format"], p["quant"], p["workload"]) == key
                  and p.get("split") == "train"]
        fmt, quant, _ = key.split(":")
        widest = max((s.hidden_size for s in shapes), default=0)
        _RANGES[memo] = None if not shapes else {
            "params": (min(s.total_params() for s in shapes),
                       max(s.total_params() for s in shapes)),
            "layers": (min(s.num_layers for s in shapes), max(s.num_layers for s in shapes)),
            "hidden": (min(s.hidden_size for s in shapes), max(s.hidden_size for s in shapes)),
            "widest_depths": sorted({s.num_layers for s in shapes if s.hidden_size == widest}),
            "streamed": max(_weight_bytes(s, quant_type(fmt, quant), 32)[1] for s in shapes),
            "fallback": any(_fallback(s, key) for s in shapes)}
    return _RANGES[memo]


def _fallback(shape: ModelShape, key: str) -> bool:
    fmt, quant, _ = key.split(":")
    return fallback_matrices(shape, quant_type(fmt, quant))[0] > 0


def adds_up(calibration: dict, key: str) -> bool:
    """Whether fit ``key`` may predict shapes deeper and bigger than it timed by adding up
    per-layer costs: its design timed its largest width at two depths at least, and (decode)
    a step that the fit says took at least 90% of its bytes from DRAM, so that the DRAM rate
    is measured. benchmarks/latency_predictor.py --deep checks it on held-out 0.5-1.3B shapes."""
    rng = design_range(calibration, key)
    if not key.startswith("gguf:") or rng is None or len(rng.get("widest_depths", ())) < 2:
        return False  # onnxruntime was never checked on deep shapes: they stay flagged
    if key.endswith((":decode", ":generate")):
        fit = calibration["fits"].get(key) or {}
        llc = fit.get("llc_bytes") or calibration.get("machine", {}).get("llc_bytes", 0)
        return bool(llc) and cached_share(rng["streamed"], llc,
                                          fit.get("cache_decay", 1.0)) <= 0.1
    return True


def outside_design(shape: ModelShape, calibration: dict, key: str,
                   strict: bool = False) -> str:
    """Why ``shape`` lies outside the calibration's measured design for ``key`` ('' when it
    lies inside, or when the calibration keeps no design to check against). Parameters,
    layers and width each count, except that a design which measured per-layer costs at full
    width and the DRAM rate (:func:`adds_up`) covers deeper and bigger shapes of its widths;
    ``strict``: the timed ranges only. So do matrices stored in a fallback type when the
    design timed none: their rate is then unmeasured."""
    rng = design_range(calibration, key)
    if rng is None:
        return ""
    have = {"params": shape.total_params(), "layers": shape.num_layers,
            "hidden": shape.hidden_size}
    deeper_ok = not strict and adds_up(calibration, key)
    why = []
    for k, v in have.items():
        lo, hi = rng[k]
        if not lo <= v <= hi and not (deeper_ok and k != "hidden" and v > hi):
            fmt = (lambda x: f"{x / 1e6:.1f}M") if k == "params" else str
            why.append(f"{k} {fmt(v)} outside the measured {fmt(lo)}-{fmt(hi)}")
    if not rng.get("fallback", True) and _fallback(shape, key):
        why.append("rows the format's blocks do not divide (a fallback type) were never "
                   "measured")
    return ", ".join(why)


def predictor_for(profile: DeviceProfile, calibration: str | Path | None = None):
    """predict() bound to ``profile`` and the calibration that applies to it (``calibration``
    given: that file, which must be this machine's; else this machine's cache entry). An NPU
    profile with phone measurements (``bench --qai-hub``) gets its roofline corrected by them."""
    if profile.kind == "npu" and calibration is None:
        factors = phone_factors(profile)
        if factors:
            return lambda shape, fmt, quant: phone_corrected(
                roofline(shape, profile, fmt, quant), shape, factors)
    if calibration is not None:
        cal = load_calibration(calibration)
    elif profile.name == "local":
        cal = load_calibration(threads=profile.threads)
    else:  # another CPU: this machine's newest calibration, scaled; GPUs and NPUs: none
        cal = _any_local_calibration() if profile.kind == "cpu" else None
    return lambda shape, fmt, quant: predict(shape, profile, fmt, quant, cal)


# -- phones measured through Qualcomm AI Hub --------------------------------------------------

PHONE_WORKLOADS = {"decode": "decode_tokens_per_s", "prefill": "prefill_ms",
                   "encoder": "encoder_batch_ms"}


def phone_measurements_path(profile_name: str) -> Path:
    """Where ``bench --qai-hub`` keeps the phone latencies measured for ``profile_name``."""
    return cache_dir() / "phone" / f"{profile_name}.json"


def load_phone_measurements(profile_name: str) -> list[dict]:
    """The measurements kept for a profile: dicts with ``device``, ``workload`` (decode,
    prefill, encoder), ``quant``, ``config`` (the model's HF config), ``latency_ms``."""
    p = phone_measurements_path(profile_name)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return []
    return [m for m in doc.get("measurements", []) if isinstance(m, dict)
            and m.get("workload") in PHONE_WORKLOADS and m.get("latency_ms")]


def _roofline_ms(pred: Prediction, workload: str) -> float | None:
    v = getattr(pred, PHONE_WORKLOADS[workload])
    if not v:
        return None
    return 1e3 / v if workload == "decode" else v


def phone_factors(profile: DeviceProfile) -> dict:
    """Per workload: the median of measured / roofline latency over the phone measurements
    kept for ``profile`` ({} when there are none), with the count, devices and the measured
    shapes' parameter range."""
    by: dict = {}
    for m in load_phone_measurements(profile.name):
        try:
            shape = shape_from_config(m["config"])
            pred = _roofline_ms(roofline(shape, profile, "onnx", m["quant"]), m["workload"])
        except (KeyError, ValueError, TypeError, EdgeDistillError):
            continue  # an entry this version cannot read is skipped, not fatal
        if pred:
            by.setdefault(m["workload"], []).append(
                (m["latency_ms"] / pred, m.get("device", "?"), shape.total_params()))
    out = {}
    for w, rows in by.items():
        out[w] = {"factor": statistics.median(r for r, _, _ in rows),
                  "n": len(rows), "devices": sorted({d for _, d, _ in rows}),
                  "params": (min(p for *_, p in rows), max(p for *_, p in rows))}
    return out


def phone_corrected(base: Prediction, shape: ModelShape, factors: dict) -> Prediction:
    """The NPU roofline ``base`` scaled by the measured/roofline ratio of each workload
    (:func:`phone_factors`), labelled ``calibrated``; workloads never measured stay the
    roofline's, and the basis says so."""
    workloads = ["encoder"] if shape.is_encoder else ["decode", "prefill"]
    have = [w for w in workloads if w in factors]
    if not have:
        return base
    upd, said, outside = {}, [], []
    for w in have:
        f = factors[w]
        said.append(f"{w} x{f['factor']:.2f} (median of {f['n']} measured/roofline, "
                    f"{', '.join(f['devices'])})")
        lo, hi = f["params"]
        if not lo / 2 <= shape.total_params() <= hi * 2:
            outside.append(f"{w}: params {shape.total_params() / 1e6:.1f}M beyond half to "
                           f"twice the measured {lo / 1e6:.1f}-{hi / 1e6:.1f}M")
        if w == "decode":
            upd["decode_tokens_per_s"] = base.decode_tokens_per_s / f["factor"]
        elif w == "prefill":
            upd["prefill_ms"] = base.prefill_ms * f["factor"]
            upd["prefill_tokens_per_s"] = base.prefill_tokens_per_s / f["factor"]
        else:
            upd["encoder_batch_ms"] = base.encoder_batch_ms * f["factor"]
            upd["sentences_per_s"] = base.sentences_per_s / f["factor"]
    basis = ("roofline scaled to Qualcomm AI Hub measurements: " + "; ".join(said))
    if len(have) < len(workloads):
        basis += "; " + ", ".join(w for w in workloads if w not in have) + " not measured"
    if outside:
        basis += "; EXTRAPOLATED: " + "; ".join(outside)
    return dataclasses.replace(base, label="calibrated", basis=basis,
                               extrapolated=bool(outside), **upd)


def _any_local_calibration() -> dict | None:
    """The newest calibration of this machine (any thread count), to scale to other CPUs."""
    d = cache_dir() / "calibration"
    if not d.is_dir():
        return None
    here = {k: v for k, v in fingerprint(0).items() if k != "threads"}
    best = None
    for p in d.glob("*.json"):
        try:
            cal = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        fp = {k: v for k, v in cal.get("fingerprint", {}).items() if k != "threads"}
        if fp == here and (best is None or cal.get("created", "") > best.get("created", "")):
            best = cal
    return best


def predict_config(config: str | Path | dict, target: str | DeviceProfile = "local",
                   format: str = "gguf:q4_k_m", calibration: str | Path | None = None) -> dict:
    """The ``predict`` command as a function: figures for the shape in an HF config.json (a
    path, its folder, or the dict) deployed as ``format`` ("gguf:q4_k_m") on ``target``."""

    if isinstance(config, dict):
        cfg, name = config, "config"
    else:
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise EdgeDistillError(f"cannot read config {p}: {e}.",
                                   "pass an HF config.json or the model folder") from None
        name = str(p)
    shape = shape_from_config(cfg, name)
    fmt, _, quant = format.partition(":")
    if not quant:
        raise EdgeDistillError(f"--format {format!r} names no quantization.",
                               "write FORMAT:QUANT, e.g. gguf:q4_k_m or onnx:int8")
    try:
        quant_type(fmt, quant)
    except KeyError as e:
        raise EdgeDistillError(f"unknown --format {format!r}: {e.args[0]}.",
                               "write e.g. gguf:q4_k_m, gguf:f16, gguf:q8_0 or onnx:int8") from None
    prof = resolve_profile(target)
    p = predictor_for(prof, calibration)(shape, fmt, quant)
    return p.to_dict() | {"model": name, "target": prof.name, "format": f"{fmt}:{quant}",
                          "family": shape.family, "params": shape.total_params()}
