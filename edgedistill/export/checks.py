"""Write and check the artifacts of one model: the float file of each format, then each
quantization, each run in its runtime and judged against torch (see export/__init__.py)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgedistill.convert import npu
from edgedistill.convert.onnx import export_onnx
from edgedistill.export.gguf_checks import GgufChecks
from edgedistill.quantize import qdq
from edgedistill.quantize.onnx import quantize_onnx, quantized_path
from edgedistill.records import Artifact
from edgedistill.runstate import NoLedger, artifact_files
from edgedistill.runtimes import outputs as rt, qnn
from edgedistill.runtimes.child import RuntimeFailure, child
from edgedistill.runtimes.outputs import (_empty_past, onnx_causal_feeds, ort_session,
                                          torch_causal_logits, torch_sentence_embeddings)
from edgedistill.teacher import sentence_pooling
from edgedistill.verify.parity import (Verdict, embedding_figures, failed_to_run, judge,
                                       logit_figures, threshold_for)

class Checker(GgufChecks):
    """Holds the torch reference for one model and checks artifacts against it."""

    def __init__(self, model_dir: Path, shape, tok, held: list, threads: int, log):

        self.model_dir, self.shape, self.tok, self.held = model_dir, shape, tok, held
        self.threads, self.log = threads, log
        self.encoder = shape.is_encoder
        self._calib_checker: Checker | None = None  # GGUF: a Checker on calibration items
        self.ledger = NoLedger()  # export() sets a Ledger: what an earlier run verified
        t0 = time.time()
        if self.encoder:
            self.pooling = sentence_pooling(model_dir)
            self.ref = torch_sentence_embeddings(model_dir, held, self.pooling)
        else:
            self.ref = torch_causal_logits(model_dir, held)
        log(f"torch reference on {len(held)} held-out "
            f"{'sentences' if self.encoder else 'sequences'} ({time.time() - t0:.1f}s)")

    def _outputs(self, path: Path, fmt: str):
        """What ``path`` computes on the held-out items, run in its format's runtime."""

        if fmt == "onnx":
            if self.encoder:
                return rt.onnx_sentence_embeddings(path, self.tok, self.held, threads=self.threads)
            return rt.onnx_causal_logits(path, self.held, self.threads)
        if self.encoder:
            return rt.gguf_sentence_embeddings(path, self.held, self.threads,
                                               self.pooling.normalize)
        # F32 KV cache: judge the file, not llama.cpp's default F16 cache (which alone moves
        # logits by ~2e-2; the deployed quality with runtime defaults is the bench stage's).
        return rt.gguf_causal_logits(path, self.held, self.threads, kv_f32=True)

    def verify(self, path: Path, fmt: str, quant: str) -> Verdict:
        """Run ``path`` in its runtime and judge it against torch with the table's thresholds."""
        th = threshold_for(fmt, quant, self.encoder)
        try:
            got = self._outputs(path, fmt)
        except (RuntimeFailure, OSError, ValueError) as e:
            return failed_to_run(f"{type(e).__name__}: {e}", th)
        except Exception as e:  # onnxruntime raises its own exception types on bad models
            return failed_to_run(f"{type(e).__name__}: {str(e)[:300]}", th)
        figs = embedding_figures(self.ref, got) if self.encoder else logit_figures(self.ref, got)
        return judge(figs, th)

    def _report(self, fmt: str, quant: str, path: Path, v: Verdict,
                t0: float | None) -> None:
        """One log line per artifact; ``t0`` None: kept from an earlier export."""
        key = "cosine" if self.encoder else "top1_agreement"
        fig = v.figures.get(key)
        shown = f"{key} {fig:.4f}" if fig is not None else (v.error or "")
        size = f"{path.stat().st_size / 2**20:.1f} MiB" if path.exists() else "-"
        status = "FAILED" if v.status == "failed" else v.status
        self.log(f"{fmt}:{quant:<9} {size:>10}  {status}  {shown}"
                 f"{'  (' + '; '.join(v.failures) + ')' if v.failures else ''}  "
                 + ("[kept: verified by an earlier export, file unchanged]" if t0 is None
                    else f"[{time.time() - t0:.1f}s]"))

    # -- the ledger: steps an earlier export into the same folder finished --------------------
    def _kept(self, fmt: str, quant: str, path: Path, recorded_files: bool = False):
        """The Artifact recorded for ``fmt:quant`` if an earlier export with the same inputs
        wrote and verified it and its files (``path`` and its external data; with
        ``recorded_files``, those the record lists) are unchanged; else None."""

        rec = self.ledger.get(f"{fmt}:{quant}", None if recorded_files else artifact_files(path))
        if rec is None:
            return None
        art = Artifact.from_record(path, fmt, quant, rec, self.ledger.files(f"{fmt}:{quant}"))
        self._report(fmt, quant, path, art.verdict, None)
        return art

    def _record(self, art, files: list[Path] | None = None) -> None:
        """Record a verified artifact (never one its runtime could not run: that is retried)."""
        if art.verdict.error is None:
            art.files = self.ledger.put(f"{art.format}:{art.quant}",
                                        files or artifact_files(art.path), art.record())

    def _onnx_model(self, out_dir: Path) -> Path:
        """``out_dir/model.onnx``: exported, or kept from an earlier export with the same
        inputs (exporting again would replace ``out_dir``, and the files verified in it)."""

        fp32 = out_dir / "model.onnx"
        if self.ledger.get("onnx:export", artifact_files(fp32)) is not None:
            self.log(f"onnx: kept {fp32} (exported by an earlier run, unchanged)")
            return fp32
        t0 = time.time()
        fp32 = export_onnx(self.model_dir, out_dir)
        self.log(f"onnx: exported {fp32} ({time.time() - t0:.1f}s)")
        self.ledger.put("onnx:export", artifact_files(fp32), {})
        return fp32

    # -- ONNX ---------------------------------------------------------------------------------
    def _calibration_feeds(self, fp32: Path, calib: list) -> list[dict]:

        sess = ort_session(fp32, self.threads)
        if not self.encoder:
            return [onnx_causal_feeds(sess, ids) | _empty_past(sess, 1) for ids in calib]
        names = {i.name for i in sess.get_inputs()}
        feeds = []
        for i in range(0, len(calib), 8):
            enc = self.tok(calib[i:i + 8], padding=True, truncation=True, max_length=128,
                           return_tensors="np")
            feeds.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
        return feeds

    def onnx_artifacts(self, out_dir: Path, quants: list[str], calib: list, block: int):

        fp32 = self._onnx_model(out_dir)
        feeds = None
        arts = []
        for quant in ["fp32"] + [q for q in quants if q != "fp32"]:
            t0 = time.time()
            path = fp32 if quant == "fp32" else quantized_path(fp32, quant)
            if (art := self._kept("onnx", quant, path)) is not None:
                arts.append(art)
                continue
            if quant.startswith("qdq_") and feeds is None:
                feeds = self._calibration_feeds(fp32, calib)
            path = quantize_onnx(fp32, quant, block_size=block, calibration=feeds)
            v = self.verify(path, "onnx", quant)
            self._report("onnx", quant, path, v, t0)
            arts.append(Artifact(path, "onnx", quant, v))
            self._record(arts[-1])
        return arts

    # -- NPU: fixed-shape QDQ graphs on the HTP -------------------------------------------------
    def npu_artifacts(self, out_dir: Path, quants: list[str], calib: list, profile,
                      context: int | None = None, eval_items: int = 16,
                      save_context: bool = True):
        """Fixed-shape float graphs, then each QDQ scheme; every graph checked against torch
        on the HTP backend (CPU fallback disabled) and on onnxruntime's CPU provider."""

        graphs = npu.graph_shapes(self.encoder, profile, context)  # bad shapes fail first
        fp32 = self._onnx_model(out_dir)
        t0 = time.time()
        schemes = ["fp32"] + [q for q in quants if q in qdq.SCHEMES]
        kept = {q: a for q in schemes if (a := self._kept(
            "onnx", q, npu.fixed_path(fp32, graphs[0], q), recorded_files=True)) is not None}
        if len(kept) == len(schemes):
            return [kept[q] for q in schemes]
        items = self.held[:eval_items]
        if self.encoder:
            ref, nxt = self.ref[:len(items)], None
        else:
            items, ref, nxt, dec_ref = self._decode_reference(items, graphs[0].tokens)
        unavailable = qnn.qnn_available()
        opts = None if unavailable else qnn.htp_options(profile)
        if unavailable:
            self.log(f"npu: {unavailable}; the graphs are checked on the CPU provider only")

        def figures(got):
            if self.encoder:
                return embedding_figures(ref, got)
            pre, dec = got
            f = logit_figures(ref, pre)
            d = logit_figures([dec_ref], [dec])
            f.update(decode_top1_agreement=d["top1_agreement"], decode_kl=d["kl"],
                     decode_tokens=d["tokens"])
            return f

        # encoder feeds: the same inputs for every graph of this model, tokenized once
        enc_feeds = (qnn.encoder_feeds(self.tok, items, graphs[0], qnn.input_names(fp32))
                     if self.encoder else None)

        def cpu_run(paths):
            sessions = [ort_session(p, self.threads, basic=True) for p in paths]
            if self.encoder:
                return np.concatenate([sessions[0].run(["sentence_embedding"], f)[0]
                                       for f in enc_feeds])
            return qnn.run_causal(sessions[0], sessions[1], items, nxt, graphs)

        def search_mask():
            """The smallest mask the float graphs stay exact with; on a model no candidate
            keeps within the fp32 target (a deep one), the candidate closest to torch.
            Returns (mask value, fixed graphs, their figures)."""
            th = threshold_for("onnx", "fp32", self.encoder)
            tried = []
            for mask_value in npu.MASK_VALUES:
                fixed = [npu.fix_graph(fp32, g, mask_value) for g in graphs]
                float_fig = figures(cpu_run(fixed))
                if judge(float_fig, th).passed:
                    return mask_value, fixed, float_fig
                tried.append((-float_fig["cosine"] if self.encoder else float_fig["kl"],
                              len(tried), mask_value, float_fig))
            _, _, mask_value, float_fig = min(tried)
            return mask_value, [npu.fix_graph(fp32, g, mask_value) for g in graphs], float_fig

        if "fp32" in kept:  # the fixed float graphs of an earlier run, unchanged
            mask_value, float_fig = kept["fp32"].verdict.figures.get("mask_value"), None
            fixed = [npu.fixed_path(fp32, g) for g in graphs]
        else:
            mask_value, fixed, float_fig = search_mask()
        self.log(f"npu: fixed-shape graphs {', '.join(p.name for p in fixed)}, attention mask "
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
                    feeds = self._npu_calibration(fixed, graphs, calib)
                paths = [qdq.quantize_graph(p, quant, f) for p, f in zip(fixed, feeds)]
            th = threshold_for("onnx", quant, self.encoder)
            cpu = float_fig if quant == "fp32" else figures(cpu_run(paths))
            if quant == "fp32":
                v = judge(cpu, th)
                v.figures.update(runtime="onnxruntime CPU", mask_value=mask_value)
            elif unavailable:
                v = judge(cpu, th)
                v.figures["runtime"] = "onnxruntime CPU (HTP not run: onnxruntime-qnn missing)"
                v.fail(unavailable)
            else:
                v = self._htp_verdict(paths, graphs, enc_feeds or items, nxt, opts, th,
                                      figures, save_context)
                v.figures["cpu_qdq"] = {k: cpu[k] for k in ("top1_agreement", "kl", "cosine")
                                        if k in cpu}
            note = ("decode graph: " + paths[1].name) if len(paths) > 1 else ""
            ctx = [i["context"]["file"] for i in v.figures.get("htp", {}).values()
                   if "context" in i]
            if ctx:
                note = "; ".join(filter(None, [note, "compiled HTP context: " + ", ".join(ctx)]))
            self._report("onnx", quant, paths[0], v, t0)
            arts.append(Artifact(paths[0], "onnx", quant, v, note=note))
            if not unavailable:  # a run without the HTP is done again once it is there
                self._record(arts[-1], [f for p in paths for f in artifact_files(p)]
                             + [out_dir / c for c in ctx])
        return arts

    def _decode_reference(self, seqs: list, chunk: int):
        """Held-out sequences cut to the prefill chunk, their torch logits, the token torch
        picks next, and torch's logits after it (the decode graph's reference)."""

        seqs = [list(s[:chunk]) for s in seqs]
        ref = [r[:len(s)] for r, s in zip(self.ref, seqs)]
        nxt = [int(r[-1].argmax()) for r in ref]
        longer = torch_causal_logits(self.model_dir, [s + [t] for s, t in zip(seqs, nxt)])
        return seqs, ref, nxt, np.stack([x[-1] for x in longer])

    def _npu_calibration(self, fixed: list[Path], graphs, calib: list) -> list[list[dict]]:
        """Calibration feeds per graph from the calibration items (the user's data)."""

        if self.encoder:
            return [qnn.encoder_feeds(self.tok, calib, graphs[0], qnn.input_names(fixed[0]))]
        first = ort_session(fixed[0], self.threads, basic=True)
        gp, gd = graphs
        dec = ort_session(fixed[1], self.threads, basic=True)
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

    def _htp_verdict(self, paths, graphs, items, nxt, opts, th, figures, context=True):
        """``items``: feed dicts for an encoder, token sequences for a causal LM. ``context``:
        save each compiled graph as an EPContext model and measure on that file."""

        t0 = time.time()
        try:
            if self.encoder:
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
            v = judge(figures(got), th)
            for name, info in graphs_info.items():
                diff = info.get("context", {}).get("max_diff_vs_compiled", 0.0)
                if diff > 1e-5:
                    v.fail(f"{name}: the saved HTP context gives other outputs than the "
                           f"graph compiled from it (max diff {diff:.3g})")
        v.figures.update(runtime="onnxruntime-qnn HTP backend (x86 simulation, no CPU "
                         "fallback)", htp=graphs_info,
                         htp_seconds=round(time.time() - t0, 1))
        return v
