"""The ONNX and NPU artifacts of one model: the float graph, then each quantization (for NPUs: the
fixed-shape graphs and each QDQ scheme), each run in its runtime and judged against the
model's torch :class:`~edgedistill.verify.reference.Reference`. Every function takes the
reference, the export's ledger (what an earlier export into the same folder verified) and a
log explicitly; the shared steps (a log line, a ledger record) are the small helpers below."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgedistill.convert import npu
from edgedistill.convert.onnx import export_onnx
from edgedistill.quantize import qdq
from edgedistill.quantize.onnx import quantize_onnx, quantized_path
from edgedistill.records import Artifact
from edgedistill.runstate import artifact_files
from edgedistill.runtimes import qnn
from edgedistill.runtimes.child import RuntimeFailure, child
from edgedistill.runtimes.outputs import (_empty_past, onnx_causal_feeds, ort_session,
                                          torch_causal_logits)
from edgedistill.verify.own import (OWN_COSINE, OWN_REL_RMS, centred_rel_rms, qdq_weight_rows,
                                    weight_failures, weight_summary, weights_figure)
from edgedistill.verify.parity import (Limits, Threshold, Verdict, embedding_figures,
                                       failed_to_run, judge, logit_figures, threshold_for)
from edgedistill.verify.reference import Reference, verify


def _report(log, encoder: bool, fmt: str, quant: str, path: Path, v: Verdict,
            t0: float | None) -> None:
    """One log line per artifact; ``t0`` None: kept from an earlier export."""
    key = "cosine" if encoder else "top1_agreement"
    fig = v.figures.get(key)
    shown = f"{key} {fig:.4f}" if fig is not None else (v.error or "")
    own = v.figures.get("own_rel_rms", v.figures.get("own_cosine"))
    if own is not None and fig is not None:
        shown += (f", {'cosine' if encoder else 'rel. RMS'} {own:.4g} to the file's own "
                  f"arithmetic (CPU)")
    size = f"{path.stat().st_size / 2**20:.1f} MiB" if path.exists() else "-"
    status = "FAILED" if v.status == "failed" else v.status
    log(f"{fmt}:{quant:<9} {size:>10}  {status}  {shown}"
        f"{'  (' + '; '.join(v.failures) + ')' if v.failures else ''}  "
        + ("[kept: verified by an earlier export, file unchanged]" if t0 is None
           else f"[{time.time() - t0:.1f}s]"))


# -- the ledger: steps an earlier export into the same folder finished --------------------
def _kept(ledger, log, encoder: bool, fmt: str, quant: str, path: Path,
          recorded_files: bool = False):
    """The Artifact recorded for ``fmt:quant`` if an earlier export with the same inputs
    wrote and verified it and its files (``path`` and its external data; with
    ``recorded_files``, those the record lists) are unchanged; else None."""

    rec = ledger.get(f"{fmt}:{quant}", None if recorded_files else artifact_files(path))
    if rec is None:
        return None
    art = Artifact.from_record(path, fmt, quant, rec, ledger.files(f"{fmt}:{quant}"))
    _report(log, encoder, fmt, quant, path, art.verdict, None)
    return art


def _record(ledger, art: Artifact, files: list[Path] | None = None) -> None:
    """Record a verified artifact (never one its runtime could not run: that is retried)."""
    if art.verdict.error is None:
        art.files = ledger.put(f"{art.format}:{art.quant}",
                               files or artifact_files(art.path), art.record())


def _onnx_model(ref: Reference, out_dir: Path, ledger, log) -> Path:
    """``out_dir/model.onnx``: exported, or kept from an earlier export with the same
    inputs (exporting again would replace ``out_dir``, and the files verified in it)."""

    fp32 = out_dir / "model.onnx"
    if ledger.get("onnx:export", artifact_files(fp32)) is not None:
        log(f"onnx: kept {fp32} (exported by an earlier run, unchanged)")
        return fp32
    t0 = time.time()
    fp32 = export_onnx(ref.model_dir, out_dir)
    log(f"onnx: exported {fp32} ({time.time() - t0:.1f}s)")
    ledger.put("onnx:export", artifact_files(fp32), {})
    return fp32


# -- ONNX ---------------------------------------------------------------------------------
def _calibration_feeds(ref: Reference, fp32: Path, calib: list, threads: int) -> list[dict]:

    sess = ort_session(fp32, threads)
    if not ref.encoder:
        return [onnx_causal_feeds(sess, ids) | _empty_past(sess, 1) for ids in calib]
    names = {i.name for i in sess.get_inputs()}
    feeds = []
    for i in range(0, len(calib), 8):
        enc = ref.tok(calib[i:i + 8], padding=True, truncation=True, max_length=128,
                      return_tensors="np")
        feeds.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    return feeds


def onnx_artifacts(ref: Reference, out_dir: Path, quants: list[str], calib: list,
                   block: int, *, ledger, log, threads: int) -> list[Artifact]:

    fp32 = _onnx_model(ref, out_dir, ledger, log)
    feeds = None
    arts = []
    for quant in ["fp32"] + [q for q in quants if q != "fp32"]:
        t0 = time.time()
        path = fp32 if quant == "fp32" else quantized_path(fp32, quant)
        if (art := _kept(ledger, log, ref.encoder, "onnx", quant, path)) is not None:
            arts.append(art)
            continue
        if quant.startswith("qdq_") and feeds is None:
            feeds = _calibration_feeds(ref, fp32, calib, threads)
        path = quantize_onnx(fp32, quant, block_size=block, calibration=feeds)
        v = verify(path, "onnx", quant, ref, threads, float_graph=fp32)
        _report(log, ref.encoder, "onnx", quant, path, v, t0)
        arts.append(Artifact(path, "onnx", quant, v))
        _record(ledger, arts[-1])
    return arts


# -- NPU: fixed-shape QDQ graphs on the HTP -------------------------------------------------
def npu_artifacts(ref: Reference, out_dir: Path, quants: list[str], calib: list, profile,
                  context: int | None = None, eval_items: int = 16,
                  save_context: bool = True, trained: str | None = None, *, ledger, log,
                  threads: int) -> list[Artifact]:
    """Fixed-shape float graphs, then each QDQ scheme; every graph run on the HTP backend (CPU
    fallback disabled) and on onnxruntime's CPU provider. A QDQ file is judged as
    :func:`_own_arithmetic` says: broken (``failed``) when its weights are off their grid or
    the HTP computes otherwise than the file's own arithmetic; its distance from torch against
    the table's targets (``passed`` or ``below-target``).
    ``trained``: the ``FMT:QUANT`` a quant-aware student was trained for (its file gets the
    trained grid's scales where onnxruntime's own would move the weights)."""

    graphs = npu.graph_shapes(ref.encoder, profile, context)  # bad shapes fail first
    fp32 = _onnx_model(ref, out_dir, ledger, log)
    t0 = time.time()
    schemes = ["fp32"] + [q for q in quants if q in qdq.SCHEMES]
    kept = {q: a for q in schemes
            if (a := _kept(ledger, log, ref.encoder, "onnx", q,
                           npu.fixed_path(fp32, graphs[0], q), recorded_files=True)) is not None}
    if len(kept) == len(schemes):
        return [kept[q] for q in schemes]
    items = ref.items[:eval_items]
    if ref.encoder:
        want, nxt = ref.outputs[:len(items)], None  # torch's outputs on these items
    else:
        items, want, nxt, dec_ref = _decode_reference(ref, items, graphs[0].tokens)
    unavailable = qnn.qnn_available()
    opts = None if unavailable else qnn.htp_options(profile)
    if unavailable:
        log(f"npu: {unavailable}; the graphs are checked on the CPU provider only")

    def figures(got):
        if ref.encoder:
            return embedding_figures(want, got)
        pre, dec = got
        f = logit_figures(want, pre)
        d = logit_figures([dec_ref], [dec])
        f.update(decode_top1_agreement=d["top1_agreement"], decode_kl=d["kl"],
                 decode_tokens=d["tokens"])
        return f

    # encoder feeds: the same inputs for every graph of this model, tokenized once
    enc_feeds = (qnn.encoder_feeds(ref.tok, items, graphs[0], qnn.input_names(fp32))
                 if ref.encoder else None)

    def cpu_run(paths):
        sessions = [ort_session(p, threads, basic=True) for p in paths]
        if ref.encoder:
            return np.concatenate([sessions[0].run(["sentence_embedding"], f)[0]
                                   for f in enc_feeds])
        return qnn.run_causal(sessions[0], sessions[1], items, nxt, graphs)

    def search_mask():
        """The smallest mask the float graphs stay exact with; on a model no candidate
        keeps within the fp32 target (a deep one), the candidate closest to torch.
        Returns (mask value, fixed graphs, their figures)."""
        th = threshold_for("onnx", "fp32", ref.encoder)
        tried = []
        for mask_value in npu.MASK_VALUES:
            fixed = [npu.fix_graph(fp32, g, mask_value) for g in graphs]
            float_fig = figures(cpu_run(fixed))
            v = judge(float_fig, th)
            # exact: the target, or within a tenth of the relative floor (a deep model's
            # float rounding: SmolLM2-135M's 30 layers differ from torch by 1.2e-4 of 48)
            rel = th.floor.max_rel_diff
            if v.passed or v.usable and rel is not None and \
                    float_fig.get("max_rel_diff", 1.0) <= rel / 10:
                return mask_value, fixed, float_fig
            tried.append((-float_fig["cosine"] if ref.encoder else float_fig["kl"],
                          len(tried), mask_value, float_fig))
        _, _, mask_value, float_fig = min(tried)
        return mask_value, [npu.fix_graph(fp32, g, mask_value) for g in graphs], float_fig

    if "fp32" in kept:  # the fixed float graphs of an earlier run, unchanged
        mask_value, float_fig = kept["fp32"].verdict.figures.get("mask_value"), None
        fixed = [npu.fixed_path(fp32, g) for g in graphs]
    else:
        mask_value, fixed, float_fig = search_mask()
    log(f"npu: fixed-shape graphs {', '.join(p.name for p in fixed)}, attention mask "
        f"{mask_value if mask_value is not None else 'as exported'} "
        f"({time.time() - t0:.1f}s)")
    arts = []
    feeds = None
    for quant in schemes:
        t0 = time.time()
        if quant in kept:
            arts.append(kept[quant])
            continue
        if quant == "fp32":
            paths = fixed
        else:
            if feeds is None:
                feeds = _npu_calibration(ref, fixed, graphs, calib, threads)
            paths = [qdq.quantize_graph(p, quant, f, trained_grid=trained == f"onnx:{quant}")
                     for p, f in zip(fixed, feeds)]
        th = threshold_for("onnx", quant, ref.encoder)
        cpu_out = None if quant == "fp32" else cpu_run(paths)
        cpu = float_fig if quant == "fp32" else figures(cpu_out)
        if quant == "fp32":
            v = judge(cpu, th)
            v.figures.update(runtime="onnxruntime CPU", mask_value=mask_value)
        elif unavailable:
            v = judge(cpu, th)
            v.figures["runtime"] = "onnxruntime CPU (HTP not run: onnxruntime-qnn missing)"
            v.fail(unavailable)
        else:
            v = _htp_verdict(ref.encoder, paths, graphs, enc_feeds or items, nxt, opts,
                             Limits(th.target, Threshold()), figures, save_context,
                             own=lambda got, fig: _own_arithmetic(ref.encoder, cpu_out, got,
                                                                  cpu, fig))
            v.figures["cpu_qdq"] = {k: cpu[k] for k in ("top1_agreement", "kl", "cosine")
                                    if k in cpu}
            _weights_on_grid(v, qdq_weight_rows(paths[0], fixed[0]))
        note = ("decode graph: " + paths[1].name) if len(paths) > 1 else ""
        ctx = [i["context"]["file"] for i in v.figures.get("htp", {}).values()
               if "context" in i]
        if ctx:
            note = "; ".join(filter(None, [note, "compiled HTP context: " + ", ".join(ctx)]))
        _report(log, ref.encoder, "onnx", quant, paths[0], v, t0)
        arts.append(Artifact(paths[0], "onnx", quant, v, note=note))
        if not unavailable:  # a run without the HTP is done again once it is there
            _record(ledger, arts[-1], [f for p in paths for f in artifact_files(p)]
                    + [out_dir / c for c in ctx])
    return arts


def _decode_reference(ref: Reference, seqs: list, chunk: int):
    """Held-out sequences cut to the prefill chunk, their torch logits, the token torch
    picks next, and torch's logits after it (the decode graph's reference)."""

    seqs = [list(s[:chunk]) for s in seqs]
    want = [r[:len(s)] for r, s in zip(ref.outputs, seqs)]
    nxt = [int(r[-1].argmax()) for r in want]
    longer = torch_causal_logits(ref.model_dir, [s + [t] for s, t in zip(seqs, nxt)])
    return seqs, want, nxt, np.stack([x[-1] for x in longer])


def _npu_calibration(ref: Reference, fixed: list[Path], graphs, calib: list,
                     threads: int) -> list[list[dict]]:
    """Calibration feeds per graph from the calibration items (the user's data)."""

    if ref.encoder:
        return [qnn.encoder_feeds(ref.tok, calib, graphs[0], qnn.input_names(fixed[0]))]
    first = ort_session(fixed[0], threads, basic=True)
    gp, gd = graphs
    dec = ort_session(fixed[1], threads, basic=True)
    pre_feeds, dec_feeds = [], []
    outs = [o.name for o in first.get_outputs()]
    for ids in calib:
        ids = list(ids[:gp.tokens])
        f = qnn.prefill_feed(first, ids, gp)
        res = dict(zip(outs, first.run(outs, f)))
        nxt = int(res["logits"][0, -1].argmax())
        pre_feeds.append(f)
        dec_feeds.append(qnn.decode_feed(dec, nxt, len(ids), res, len(ids), gd))
    return [pre_feeds, dec_feeds]


SAME_QUALITY = {"top1_agreement": 0.05, "kl_ratio": 1.5, "cosine": 0.01}
"""How far the HTP's and the CPU provider's figures against torch may differ for a file whose
outputs drift apart (:func:`_own_arithmetic`): top-1 points, the ratio of the KLs, cosine."""


def _own_arithmetic(encoder: bool, cpu_out, got, cpu_fig: dict, htp_fig: dict
                    ) -> tuple[dict, str | None]:
    """The HTP's outputs against the same QDQ file on onnxruntime's CPU provider, which
    computes each QuantizeLinear / DequantizeLinear in float as the file defines it (the
    file's own arithmetic): (figures, the failure or None). The HTP computes in integers
    and rounds otherwise: within :data:`~edgedistill.verify.own.OWN_REL_RMS` of the logits'
    RMS (:data:`~edgedistill.verify.own.OWN_COSINE` for embeddings) on a file that keeps its
    model. In a deep file that loses much, the two roundings compound apart (SmolLM2-135M's
    a16w4: 0.24 of the RMS, with top-1 39.0% and 38.2% against torch, KL 1.77 and 1.71), so
    the file fails only when its two runs also disagree on its quality (:data:`SAME_QUALITY`),
    as a graph the HTP reads otherwise does (SmolLM2's unfused RMSNorm: 85% against 1.6%)."""
    if encoder:
        cos = embedding_figures(cpu_out, got)["cosine"]
        apart = abs(cpu_fig.get("cosine", 0.0) - htp_fig.get("cosine", 0.0))
        bad = (None if cos >= OWN_COSINE or apart <= SAME_QUALITY["cosine"] else
               f"cosine {cos:.5f} to the same file on onnxruntime's CPU provider < "
               f"{OWN_COSINE:g}, and cosines to torch {htp_fig.get('cosine', 0):.4f} against "
               f"{cpu_fig.get('cosine', 0):.4f} (floor)")
        return {"own_cosine": cos}, bad
    (cpu_pre, cpu_dec), (pre, dec) = cpu_out, got
    rel = centred_rel_rms(list(cpu_pre) + [cpu_dec], list(pre) + [dec])
    t_c, t_h = cpu_fig.get("top1_agreement", 0.0), htp_fig.get("top1_agreement", 0.0)
    k_c, k_h = cpu_fig.get("kl", 0.0), htp_fig.get("kl", 0.0)
    same = (abs(t_c - t_h) <= SAME_QUALITY["top1_agreement"]
            and max(k_c, k_h) <= SAME_QUALITY["kl_ratio"] * max(min(k_c, k_h), 1e-3))
    bad = (None if rel <= OWN_REL_RMS or same else
           f"logits differ from the same file on onnxruntime's CPU provider by {rel:.3g} of "
           f"their RMS (> {OWN_REL_RMS:g}), and so does their quality: top-1 {t_h:.1%} "
           f"against {t_c:.1%}, KL {k_h:.3g} against {k_c:.3g} (floor)")
    return {"own_rel_rms": rel}, bad


def _weights_on_grid(v: Verdict, rows: list[dict]) -> None:
    """Fail ``v`` when a stored matrix or table is off its grid: further from the float
    graph's tensor than :data:`~edgedistill.verify.own.WEIGHT_RATIO` times a plain rounding
    in the same bits and channels (a scaled, negated or misplaced tensor)."""
    summary = weight_summary(rows)
    v.figures["weights"] = weights_figure(summary)
    for reason in weight_failures(summary):
        v.fail(reason)


def _htp_verdict(encoder: bool, paths, graphs, items, nxt, opts, th, figures, context=True,
                 own=None):
    """``items``: feed dicts for an encoder, token sequences for a causal LM. ``context``:
    save each compiled graph as an EPContext model and measure on that file. ``own``: a
    function of the HTP's outputs and their figures giving (figures, failure or None) to
    add."""

    t0 = time.time()
    try:
        if encoder:
            import tempfile

            feeds = items
            with tempfile.TemporaryDirectory(prefix="edgedistill-npu-") as tmp:
                npz = Path(tmp) / "feeds.npz"
                np.savez(npz, n=len(feeds), **{f"{i}/{k}": v for i, f in enumerate(feeds)
                                               for k, v in f.items()})
                res = child("edgedistill.runtimes.qnn_worker",
                            {"op": "encoder", "path": str(paths[0]), "options": opts,
                             "feeds": str(npz), "output": "sentence_embedding",
                             "context": context},
                            timeout=3600, what="the QNN HTP backend")
            got = res.get("out")
        else:
            res = child("edgedistill.runtimes.qnn_worker",
                        {"op": "causal", "paths": [str(p) for p in paths], "options": opts,
                         "seqs": items, "next": nxt, "context": context,
                         "graphs": [[g.role, g.tokens, g.past] for g in graphs]},
                        timeout=3600, what="the QNN HTP backend")
            got = None
            if "decode" in res:
                got = ([res[f"prefill_{i}"] for i in range(len(items))], res["decode"])
    except RuntimeFailure as e:
        return failed_to_run(str(e), th)
    graphs_info = {Path(p).name: info for p, info in res.get("graphs", {}).items()}
    if got is None:
        errors = "; ".join(f"{n}: {i['error']}" for n, i in graphs_info.items()
                           if "error" in i)
        unsupported = sorted({u["op"] for i in graphs_info.values()
                              for u in i["coverage"]["unsupported_ops"]})
        v = failed_to_run(f"the HTP did not take the whole graph (ops on CPU: "
                          f"{', '.join(unsupported) or 'none found'}): {errors}", th)
    else:
        fig = figures(got)
        v = judge(fig, th)
        if own is not None:
            extra, bad = own(got, fig)
            v.figures.update(extra)
            if bad:
                v.fail(bad)
        for name, info in graphs_info.items():
            diff = info.get("context", {}).get("max_diff_vs_compiled", 0.0)
            if diff > 1e-5:
                v.fail(f"{name}: the saved HTP context gives other outputs than the "
                       f"graph compiled from it (max diff {diff:.3g})")
    v.figures.update(runtime="onnxruntime-qnn HTP backend (x86 simulation, no CPU "
                     "fallback)", htp=graphs_info,
                     htp_seconds=round(time.time() - t0, 1))
    return v
