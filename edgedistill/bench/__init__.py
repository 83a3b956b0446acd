"""Benchmark artifacts in the runtimes they deploy to, and measure their quality there.

    bench(artifacts, teacher_dir, target) -> list of per-artifact records (report.json shape)

Every figure measured here is labelled ``measured`` with this machine and the runtime. The
target profile's figures come from the planner and are labelled ``predicted``; so are this
machine's own predictions, kept beside the measurements to show how far the model is off.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgedistill.arch import shape_from_config
from edgedistill.bench import phone
from edgedistill.bench.quality import causal_quality, encoder_quality, runtime_logits
from edgedistill.bench.timing import roofline_fraction, summarize_causal, summarize_encoder
from edgedistill.data import eval_data
from edgedistill.english import (EVAL_SENTENCES, HELDOUT_NAME, heldout_available,
                                 heldout_sentences)
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import CPU_RUNTIME, RUNTIMES
from edgedistill.logs import get_logger
from edgedistill.plan.predictor import predictor_for
from edgedistill.profiles import DeviceProfile, local_profile, resolve_profile
from edgedistill.records import BenchRecord, ROLES
from edgedistill.runtimes import cuda, outputs
from edgedistill.runtimes.child import RuntimeFailure, child
from edgedistill.runtimes.cuda import (GPU_RUNTIMES, TORCH_MODE_LABEL, TORCH_MODES, cuda_device,
                                       gpu_bandwidth_gbps, require)
from edgedistill.runtimes.outputs import torch_causal_logits, torch_sentence_embeddings
from edgedistill.runtimes.qaihub import Hub, QaiHubError
from edgedistill.runtimes.runners import GPU_RUNTIME_TASK, child_tokenizer, time_artifact
from edgedistill.teacher import sentence_pooling, weight_files


TIMED_BATCHES = 5
"""An encoder's timed runs cycle through this many batches of the profile's size (15 runs:
each batch 3 times after the warm-up's), so the median spans the real length mix."""


def length_mix(domain: list[str], general: list[str], n: int) -> list[str]:
    """``n`` sentences for timing, the data's held-out sentences and general English taken in
    turn (repeated when short), so the batches carry the lengths of both."""
    pools = [p for p in (domain, general) if p]
    out = []
    for i in range(n if pools else 0):
        pool = pools[i % len(pools)]
        out.append(pool[(i // len(pools)) % len(pool)])
    return out


@dataclass(frozen=True)
class BenchConfig:
    threads: int | None = None
    """Runtime threads; default: the profile's, at most this machine's cores."""
    new_tokens: int = 64
    """Decoded tokens per run (llama-bench's tg)."""
    prompt_tokens: int | None = None
    """Prompt length (pp); default: the profile's, at most 512 and the model's context."""
    repeats: int | None = None
    """Timed runs per artifact (median reported); default ENCODER_REPEATS for encoders, whose
    one batch takes a tenth of a second, and CAUSAL_REPEATS for causal LMs."""
    data: str | None = None
    """Held-out text for quality; default: standard-library text."""
    timeout_s: float = 900
    runtimes: tuple[str, ...] | None = None
    """GPU runtimes to measure causal LMs in (bench.cuda.GPU_RUNTIMES, or "gpu" for those of
    the target profile); each must be usable here, else EdgeDistillError. Default: each
    format's CPU runtime, plus, on a GPU target, the profile's GPU runtimes this machine has
    (the others are skipped with a note)."""
    qai_hub: bool = False
    """NPU profiles: also compile and profile each QDQ graph on a real phone through
    Qualcomm AI Hub (bench/phone.py); needs the qai-hub client and an API token."""
    qai_hub_device: str | None = None
    """The AI Hub device to profile on; default: the profile's ``qai_hub_device``."""


ENCODER_REPEATS, CAUSAL_REPEATS = 15, 3


_logger = get_logger("bench")


def interleaved(artifacts: list[dict]) -> list[int]:
    """Measuring order: each format:quant's student and teacher back to back, so that a
    machine that slows down for a minute does not favour one role over the other."""
    return sorted(range(len(artifacts)), key=lambda i: (
        (artifacts[i]["format"], artifacts[i]["quant"]), i))


def _this_machine(threads: int) -> tuple[str, DeviceProfile]:

    local = local_profile(threads=threads, quick=True)
    return f"{local.device} ({threads} threads, this machine)", local


def bench(artifacts: list[BenchRecord | dict], teacher_dir: str | Path,
          target: str | DeviceProfile, config: BenchConfig = BenchConfig(),
          log=_logger.info, qai_hub: Hub | None = None) -> list[BenchRecord]:
    """Time and score each artifact. ``artifacts``: records (or their dicts) naming role,
    path, format, quant and model_dir (the HF folder it was made from), e.g. those of
    :func:`artifacts_of_run`. Returns them with ``bench``, ``quality`` and ``predicted``
    filled (a failed runtime gives ``bench.error``), plus one row per GPU runtime asked for.
    ``qai_hub``: the Qualcomm AI Hub device for ``config.qai_hub``, already connected (the
    CLI checks it before any work); default: connect with the user's token."""
    from transformers import AutoTokenizer

    prof = resolve_profile(target)
    hub = (qai_hub or phone.connect(prof, config.qai_hub_device)) if config.qai_hub else None
    phone_kept: list = []
    teacher_dir = Path(teacher_dir)
    t_shape = shape_from_config(json.loads((teacher_dir / "config.json").read_text()))
    encoder = t_shape.is_encoder
    gpu = gpu_runtimes(prof, config.runtimes, log)  # fails before work
    gpu_device = f"{cuda_device()} (this machine)" if gpu else None
    threads = config.threads or max(1, min(prof.threads, os.cpu_count() or 1))
    device, local = _this_machine(threads)
    log(f"measuring on {device}; memory bandwidth {local.memory.bandwidth_gbps:.1f} GB/s")
    predict_here, predict_there = predictor_for(local), predictor_for(prof)
    at_len: dict = {}  # encoders: predictors at the lengths the bench really runs
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    held, _ = eval_data(tok, encoder, config.data, sequences=8, seq_len=128)
    lt = prof.latency_targets
    n_domain = len(held)  # encoders: quality in the data's domain, then on general English
    if encoder:
        if heldout_available():
            held = list(held) + list(heldout_sentences()[:EVAL_SENTENCES])
        else:
            log("general-English quality skipped: the held-out news is not installed (run "
                "'python -m edgedistill.english --install')")
        pooling = sentence_pooling(teacher_dir)
        teacher_ref = torch_sentence_embeddings(teacher_dir, held, pooling)
        batch_texts = length_mix(held[:n_domain], held[n_domain:],
                                 lt.encoder_batch * TIMED_BATCHES)
        n_batches = -(-len(batch_texts) // lt.encoder_batch)
        lens = [len(x) for x in tok(batch_texts, truncation=True,
                                    max_length=lt.encoder_seq_len)["input_ids"]]
        # onnxruntime and torch pad each batch to its longest sentence; llama.cpp's embed()
        # runs each sentence at its own length (no padding): the mean stands for it
        cut = [lens[i:i + lt.encoder_batch] for i in range(0, len(lens), lt.encoder_batch)]
        run_len = {"padded": round(sum(max(c) for c in cut) / len(cut)),
                   "unpadded": -(-sum(lens) // len(lens))}
    else:
        teacher_ref = torch_causal_logits(teacher_dir, held)
        cfg = json.loads((teacher_dir / "config.json").read_text())
        max_pos = min(512, int(cfg.get("max_position_embeddings", 2048)))
        p = min(config.prompt_tokens or lt.prompt_tokens, max_pos - config.new_tokens - 8)
        stream = [t for s in held for t in s]
        prompt = (stream * (p // max(1, len(stream)) + 1))[:p]
    repeats = config.repeats or (ENCODER_REPEATS if encoder else CAUSAL_REPEATS)
    artifacts = [a.to_dict() if isinstance(a, BenchRecord) else dict(a) for a in artifacts]
    artifacts = with_gpu_runs(artifacts, gpu, ("teacher", str(teacher_dir)), encoder)
    order = interleaved(artifacts)
    enc_raw: dict = {}
    if encoder:
        timed = [i for i in order if not (prof.constraints.static_shapes
                                          and artifacts[i]["format"] == "onnx")]
        enc_raw = _time_encoders(artifacts, timed, threads, repeats, batch_texts,
                                 lt.encoder_seq_len, lt.encoder_batch, config.timeout_s)
    out: list = [None] * len(artifacts)
    for k in order:
        art = artifacts[k]
        rec = dict(art)
        path, fmt, quant = Path(art["path"]), art["format"], art["quant"]
        shape = shape_from_config(json.loads((Path(art["model_dir"]) / "config.json")
                                             .read_text()))
        if prof.constraints.static_shapes and fmt == "onnx":
            out[k] = _npu_record(rec, art, prof, shape, predict_there, log)
            if hub is not None:
                try:
                    phone_kept += phone.measure(hub, out[k], art, prof, log)
                except QaiHubError as e:  # e.g. the network went: the rest stays local
                    out[k]["bench"]["qai_hub"] = {"error": str(e)}
                    log(f"Qualcomm AI Hub: {e}; no more graphs are sent")
                    hub = None
            continue
        on_gpu = art.get("runtime") in GPU_RUNTIMES
        runtime = _runtime_label(art) if on_gpu else CPU_RUNTIME[fmt]
        b = {"runtime": runtime, "device": gpu_device if on_gpu else device, "measured": True,
             "threads": threads}
        try:
            if encoder:
                raw = enc_raw[k]
                if isinstance(raw, RuntimeFailure):
                    raise raw
                kind = "unpadded" if fmt == "gguf" else "padded"
                b |= summarize_encoder(raw["batch_s"], lt.encoder_batch, run_len[kind])
                b["batches"] = n_batches
                b |= {"seq_len_cap": lt.encoder_seq_len,
                      "seq_len_basis": ("mean tokens per sentence (llama.cpp does not pad)"
                                        if kind == "unpadded" else
                                        "the mean of each batch's longest sentence (padding)")}
            else:
                raw = time_artifact(path, fmt, threads=threads, prompt=prompt,
                                    new_tokens=config.new_tokens, repeats=repeats,
                                    timeout=config.timeout_s, runtime=art.get("runtime"),
                                    options=art.get("options"))
                b |= summarize_causal(raw["runs"], len(prompt), config.new_tokens)
                b["greedy_tokens"] = raw["runs"][0].get("tokens")
                if "warmup_s" in raw:
                    b["warmup_s"] = raw["warmup_s"]  # torch.compile's capture included
                if raw.get("cudagraph_skips"):
                    b["note"] = (f"torch.compile skipped CUDA graph capture "
                                 f"{raw['cudagraph_skips']} time(s): this row ran compiled "
                                 "kernels without graph replay")
                b |= {key: raw[key] for key in ("cudagraph_skips", "compiled_graphs")
                      if key in raw}
            b["peak_rss_mb"] = raw["peak_rss_mb"]
        except RuntimeFailure as e:
            b |= {"error": str(e), "measured": False}
        rec["size_bytes"] = _size(path)
        if fmt != "hf" and not on_gpu:
            here, there = predict_here, predict_there
            if encoder:  # predicted at the length this row was timed at, not the profile's
                n = run_len["unpadded" if fmt == "gguf" else "padded"]
                if n not in at_len:
                    at_len[n] = tuple(predictor_for(_at_seq_len(x, n)) for x in (local, prof))
                here, there = at_len[n]
            here, there = here(shape, fmt, quant), there(shape, fmt, quant)
            rec["predicted"] = {"this_machine": _pred(here, device),
                                "target": _pred(there, f"{prof.name} ({prof.device})")}
            if "decode_tokens_per_s" in b:
                b["roofline_fraction"] = roofline_fraction(
                    here.decode_bytes_per_token, b["decode_tokens_per_s"],
                    local.memory.bandwidth_gbps)
        if on_gpu and "decode_tokens_per_s" in b:
            qfmt, qq = ("gguf", "f16") if fmt == "hf" else (fmt, quant)
            rec["predicted"] = {"target": scaled_to_card(
                b["decode_tokens_per_s"], predict_there(shape, qfmt, qq).decode_bytes_per_token,
                gpu_bandwidth_gbps(), prof, b["device"])}
        rec["bench"] = b
        if on_gpu and (art.get("options") or {}).get("mode", "eager") != "eager":
            rec["quality"] = {"measured": False, "note": "same weights as the eager row; "
                              "greedy tokens compared in bench.tokens_match_eager"}
        else:
            rec["quality"] = _quality(path, fmt, encoder, held, teacher_ref, threads, art, log,
                                      n_domain)
            if on_gpu:
                rec["quality"]["note"] = "from the CPU runtime on the same file"
        shown = (f"{b.get('decode_tokens_per_s', 0):.1f} tok/s decode" if not encoder
                 else f"{b.get('batch_ms', 0):.1f} ms/batch")
        log(f"{art['role']:>7} {fmt}:{quant:<8} {runtime:<12} "
            f"{b['error'] if 'error' in b else shown}")
        out[k] = rec
    _agreement(out)
    kept = phone.keep(prof.name, phone_kept)
    if kept:
        log(f"{len(phone_kept)} phone measurement(s) kept for the {prof.name} predictor: {kept}")
    return [BenchRecord.from_dict(r) for r in out]


def artifacts_of_run(run_dir: str | Path,
                     roles: tuple[str, ...] = ROLES) -> tuple[list[BenchRecord], Path]:
    """What a run folder's exports made, to be measured: for each role (student, then the
    teacher when it was exported too) every exported file with its verdict, then the HF
    folder it came from (run in torch, the reference). Returns (records, the teacher's HF
    folder); raises EdgeDistillError when the folder holds no export."""
    run_dir = Path(run_dir)
    records, models = [], {}
    for role in roles:
        exp = run_dir / "export" / role / "export.json"
        if not exp.is_file():
            continue
        doc = json.loads(exp.read_text())
        models[role] = doc["model"]
        records += [BenchRecord.from_export(a, doc["model"], role) for a in doc["artifacts"]]
        records.append(BenchRecord(role=role, path=doc["model"], format="hf", quant="fp32",
                                   model_dir=doc["model"]))
    if not records:
        raise EdgeDistillError(f"{run_dir} has no export/*/export.json.",
                               "export first: 'edgedistill export --teacher ... --out "
                               f"{run_dir}' (the whole chain) or 'edgedistill export --student "
                               f"... --out {run_dir}/export/student'")
    teacher = models.get("teacher")
    if teacher is None and (run_dir / "plan.json").is_file():  # a student-only export
        teacher = (json.loads((run_dir / "plan.json").read_text()).get("teacher") or {}).get(
            "path")
    return records, Path(teacher or records[0].model_dir)


def _npu_record(rec: dict, art: dict, prof: DeviceProfile, shape, predict_there, log) -> dict:
    """A fixed-shape NPU graph is not timed: its run on the HTP backend is an x86 simulation,
    whose time says nothing about the phone. The record carries what export measured on the
    HTP (placement, compile time, numerics against the float model) and the predicted phone
    latency."""
    par = art.get("parity") or {}
    htp = par.get("htp") or {}
    cov = [g.get("coverage") or {} for g in htp.values()]
    b = {"runtime": "onnxruntime-qnn (HTP, x86 simulation)", "measured": False,
         "note": "not timed: simulated HTP time says nothing about the phone; latency is "
                 "predicted from the profile"}
    placed = "-"
    if htp:
        b["htp"] = {"graphs": len(htp),
                    "nodes_on_htp": sum(c.get("on_htp", 0) for c in cov),
                    "nodes": sum(c.get("nodes", 0) for c in cov),
                    "unsupported_ops": sorted({u["op"] for c in cov
                                               for u in c.get("unsupported_ops", [])}),
                    "compile_s": round(sum(g.get("compile_s", 0) for g in htp.values()), 2)}
        ctx = [g["context"] for g in htp.values() if "context" in g]
        if ctx:  # the compiled graphs saved for the phone (EPContext models)
            b["htp"]["context_files"] = [c["file"] for c in ctx]
            b["htp"]["context_bytes"] = sum(c["bytes"] for c in ctx)
        placed = f"{b['htp']['nodes_on_htp']}/{b['htp']['nodes']}"
    rec["size_bytes"] = _size(Path(art["path"]))
    rec["bench"] = b
    rec["quality"] = {"measured": bool(htp), "against": "the float student (export check)",
                      **{k: par[k] for k in ("top1_agreement", "kl", "cosine",
                                             "decode_top1_agreement") if k in par}}
    rec["predicted"] = {"target": _pred(predict_there(shape, "onnx", art["quant"]),
                                        f"{prof.name} ({prof.device})")}
    log(f"{art['role']:>7} onnx:{art['quant']:<8} NPU graph, not timed ({placed} nodes on "
        "the HTP)")
    return rec


def gpu_runtimes(prof: DeviceProfile, requested: tuple[str, ...] | None, log) -> list[str]:
    """The GPU runtimes to measure in: the requested ones (each must run here: else
    EdgeDistillError), or on a GPU target those of its profile that this machine has."""

    if requested:
        names = [r for r in prof.runtimes if r in GPU_RUNTIMES] if "gpu" in requested \
            else list(requested)
        if not names:
            raise EdgeDistillError(f"profile {prof.name} names no GPU runtime.",
                                   f"use --runtime with one of {', '.join(GPU_RUNTIMES)}")
        for r in names:
            require(r)
        return names
    if prof.kind != "gpu":
        return []
    status = cuda.runtime_status()
    for r in prof.runtimes:
        if status.get(r):
            log(f"{r} skipped: {status[r]}")
    return [r for r in prof.runtimes if r in GPU_RUNTIMES and status.get(r) is None]


def scaled_to_card(decode_tps: float, bytes_per_token: float, measured_gbps: float | None,
                   prof: DeviceProfile, measured_on: str) -> dict:
    """The target card's decode speed, predicted from a GPU measurement: the measured time per
    token splits into reading the weights (bytes / the measured GPU's copy bandwidth) and a
    fixed part (kernel launches, host sync, sampling), which is kept; the card reads the
    weights at its profile bandwidth times its bandwidth efficiency."""
    per_token = 1.0 / decode_tps
    read_here = bytes_per_token / (measured_gbps * 1e9) if measured_gbps else 0.0
    fixed = max(0.0, per_token - read_here)
    card_gbps = prof.memory.bandwidth_gbps * prof.cost_model.bandwidth_efficiency
    there = fixed + bytes_per_token / (card_gbps * 1e9)
    return {"decode_tokens_per_s": 1.0 / there, "label": "predicted",
            "device": f"{prof.name} ({prof.device})",
            "basis": (f"scaled from {decode_tps:.0f} tok/s measured on {measured_on}: "
                      f"{fixed * 1e3:.3f} ms/token fixed (launches, sync; kept as is) + "
                      f"{bytes_per_token / 2**20:.1f} MiB of weights per token read at "
                      f"{card_gbps:.0f} GB/s (profile bandwidth x efficiency) instead of "
                      f"{measured_gbps or 0:.0f} GB/s (measured device copy)")}


def with_gpu_runs(artifacts: list[dict], gpu: list[str],
                  default: tuple[str, str] | None = None, encoder: bool = False) -> list[dict]:
    """``artifacts`` plus one entry per (artifact, GPU runtime of its format); torch-cuda runs
    each model's HF folder in fp16 (causal LMs three ways: eager, static cache, CUDA graphs;
    encoders once): the models the artifacts came from, else ``default`` (role, HF folder)."""

    out = list(artifacts)
    for rt in gpu:
        if rt == "torch-cuda":
            models = dict.fromkeys((a["role"], a["model_dir"]) for a in artifacts) or \
                dict.fromkeys([default] if default else [])
            modes = [None] if encoder else TORCH_MODES
            out += [{"role": role, "path": model_dir, "format": "hf", "quant": "fp16",
                     "model_dir": model_dir, "runtime": rt,
                     "options": {"mode": mode} if mode else {}}
                    for role, model_dir in models for mode in modes]
        else:
            out += [dict(a, runtime=rt) for a in artifacts
                    if a["format"] == RUNTIMES[rt].format and "runtime" not in a]
    return out


def _runtime_label(art: dict) -> str:
    mode = (art.get("options") or {}).get("mode")
    return TORCH_MODE_LABEL[mode] if art["runtime"] == "torch-cuda" and mode else art["runtime"]


def _agreement(records: list[dict]) -> None:
    """Greedy tokens of the static-cache and CUDA-graph runs against the eager run of the same
    model (``tokens_match_eager``: the share of positions equal), so that a graph replay that
    computes something else shows up."""
    eager = {r["model_dir"]: r["bench"].get("greedy_tokens") for r in records
             if r and r["bench"].get("runtime") == TORCH_MODE_LABEL["eager"]}
    for r in records:
        ref, got = eager.get(r["model_dir"]), r["bench"].get("greedy_tokens")
        if ref and got and r["bench"]["runtime"].startswith("torch-cuda") and \
                r["bench"]["runtime"] != TORCH_MODE_LABEL["eager"]:
            r["bench"]["tokens_match_eager"] = sum(a == b for a, b in zip(ref, got)) / len(ref)


def _time_encoders(artifacts, order, threads, repeats, texts, seq_len, batch,
                   timeout) -> dict:
    """{index: {"batch_s", "peak_rss_mb"} or RuntimeFailure}. Each artifact runs alone once
    (its own peak RSS, and its failure if it fails); then all of one runtime are timed in one
    process in turn (runtimes/bench_worker.py, encoder_paired), so student and teacher share the
    machine's good and bad seconds alike."""

    out: dict = {}
    for k in order:
        art = artifacts[k]
        try:
            out[k] = time_artifact(Path(art["path"]), art["format"], threads=threads, repeats=1,
                                   texts=texts, seq_len=seq_len, batch=batch,
                                   tokenizer=Path(art["model_dir"]), timeout=timeout,
                                   runtime=art.get("runtime"), options=art.get("options"))
        except RuntimeFailure as e:
            out[k] = e
    by_runtime: dict = {}
    for k in order:
        if not isinstance(out[k], RuntimeFailure):
            art = artifacts[k]
            by_runtime.setdefault(art.get("runtime") or CPU_RUNTIME[art["format"]],
                                  []).append(k)
    for runtime, ks in by_runtime.items():
        task = {"kind": "encoder_paired", "runtime": RUNTIMES[runtime].worker, "threads": threads,
                "repeats": repeats, "texts": texts, "seq_len": seq_len, "batch": batch,
                "models": [str(artifacts[k]["path"]) for k in ks],
                "tokenizers": [str(artifacts[k]["model_dir"]) for k in ks]}
        task["tokenizer_specs"] = [child_tokenizer(task["runtime"], t)
                                   for t in task["tokenizers"]]
        task |= GPU_RUNTIME_TASK.get(runtime, {})  # a GPU runtime: its worker and device
        try:
            res = child("edgedistill.runtimes.bench_worker", task, timeout * len(ks), runtime)
        except RuntimeFailure as e:
            for k in ks:
                out[k] = e
            continue
        for k, times in zip(ks, res["batch_s"]):
            out[k]["batch_s"] = times
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in weight_files(path))
    return path.stat().st_size if path.exists() else 0


def _at_seq_len(profile: DeviceProfile, n: int) -> DeviceProfile:
    """``profile`` with its encoder batches ``n`` tokens long."""
    from dataclasses import replace

    return replace(profile, latency_targets=replace(profile.latency_targets,
                                                    encoder_seq_len=n))


def _pred(p, where: str) -> dict:
    d = {k: getattr(p, k) for k in ("memory_gb", "decode_tokens_per_s", "prefill_ms",
                                    "prefill_tokens_per_s", "encoder_batch_ms",
                                    "sentences_per_s", "generate_tokens_per_s")}
    return d | {"label": p.label, "extrapolated": p.extrapolated, "device": where,
                "basis": p.basis}


def _quality(path, fmt, encoder, held, ref, threads, art, log, n_domain) -> dict:
    """Quality from the runtime's own outputs; an error record when the runtime fails. An
    encoder's ``held`` is the data's held-out sentences (the first ``n_domain``), then general
    English: the figures are the first's, with the second's under ``general_english``."""

    try:
        if encoder:
            model_dir = Path(art["model_dir"])
            pooling = sentence_pooling(model_dir)
            if fmt == "gguf":
                emb = outputs.gguf_sentence_embeddings(path, held, threads, pooling.normalize)
            elif fmt == "onnx":
                from transformers import AutoTokenizer
                emb = outputs.onnx_sentence_embeddings(path,
                                                       AutoTokenizer.from_pretrained(model_dir),
                                                       held, threads=threads)
            else:
                emb = outputs.torch_sentence_embeddings(path, held, pooling)
            q = encoder_quality(emb[:n_domain], ref[:n_domain]) | {"measured": True}
            if len(held) > n_domain:
                q["general_english"] = encoder_quality(emb[n_domain:], ref[n_domain:]) | {
                    "source": HELDOUT_NAME}
            return q
        return causal_quality(runtime_logits(path, fmt, held, threads), held, ref) \
            | {"measured": True}
    except (RuntimeFailure, OSError, ValueError) as e:
        log(f"quality of {path.name} failed: {e}")
        return {"error": str(e), "measured": False}
