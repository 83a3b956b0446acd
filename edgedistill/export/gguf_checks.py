"""The GGUF artifacts of one model: float files, llama.cpp's quantizations (with an importance
matrix where it helps), and the tokenizer as llama.cpp runs it, each checked against torch."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgedistill.convert.gguf import FLOAT_TYPES, export_gguf
from edgedistill.convert.gguf_vocab import unicode_normalization
from edgedistill.export.checks import _kept, _record, _report
from edgedistill.formats import quant_type
from edgedistill.quantize.gguf import (IMPORTANCE_QUANTS, importance_matrix, quantize_gguf,
                                       tensor_types)
from edgedistill.records import Artifact
from edgedistill.runtimes.child import RuntimeFailure
from edgedistill.runtimes.outputs import gguf_tokenize
from edgedistill.verify.reference import Reference, figures, outputs, reference, verify

# Strings that trip tokenizers: code, unicode, whitespace runs, digits, special tokens.
TOKENIZER_PROBES = [
    "def f(x):\n    return x ** 2  # square\n",
    "class Foo(Bar):\n\tpass\n\n\n",
    "Hello, World! It's 3.14159 — naïve café, Zürich.",
    "日本語のテキストと中文字符 и русский текст",
    "emoji 🙂🚀 and symbols ©®™ ≤≥ ∑",
    "a    b\t\tc\n\n\nd     ",
    "   leading and trailing spaces   ",
    "1234567890 + 0.5e-10 = x",
    "URL: https://example.com/path?q=1&r=2#frag",
    "MixedCASE words_with_underscores and-hyphens",
    "I'LL SAY WE'VE, you'Re THEY'D don't",
    "decomposed: cafe\u0301 an\u0303o A\u030a",
    "compatibility forms: ＡＢＣ１２３ ﬁne ① ｶﾀｶﾅ x²",
    "",
    " ",
    "\n",
]


def tokenizer_parity(ref: Reference, gguf_path: Path) -> dict:

    specials = [t for t in ref.tok.all_special_tokens if t]
    probes = list(TOKENIZER_PROBES)
    probes += [f"{s}text{s} {s}" for s in specials[:4]]
    samples = (ref.items if ref.encoder else
               [ref.tok.decode(ids) for ids in ref.items])
    probes += [s[:400] for s in samples[:24]]
    try:
        got = gguf_tokenize(gguf_path, probes)
    except RuntimeFailure as e:
        return {"passed": False, "cases": len(probes), "mismatches": None, "error": str(e)}
    hf = [list(ref.tok(t, add_special_tokens=False)["input_ids"]) for t in probes]
    bad = [i for i, g in enumerate(got) if hf[i] != list(g)]
    out = {}
    form = _unicode_normalization(ref.tok)
    if form and bad:
        # The HF tokenizer normalizes (Qwen2: NFC) and llama.cpp does not. A text that
        # matches once normalized is the caller's to normalize, not a broken file.
        import unicodedata

        normed = [unicodedata.normalize(form, probes[i]) for i in bad]
        again = gguf_tokenize(gguf_path, normed)
        fixed = [i for i, n, g in zip(bad, normed, again)
                 if n != probes[i] and list(g) == hf[i]]
        if fixed:
            bad = [i for i in bad if i not in fixed]
            out["normalization"] = {
                "form": form, "texts": len(fixed),
                "note": (f"the HF tokenizer applies {form} before tokenizing and llama.cpp "
                         f"does not: {len(fixed)} probe text(s) not in {form} tokenize the "
                         f"same only once normalized; normalize text to {form} before "
                         "llama.cpp tokenizes it")}
    examples = [{"text": probes[i][:120], "hf": hf[i][:24], "llama.cpp": got[i][:24]}
                for i in bad[:3]]
    return {"passed": not bad, "cases": len(probes), "mismatches": len(bad),
            "examples": examples, **out}


def gguf_artifacts(ref: Reference, out_dir: Path, quants: list[str], calib: list | None = None,
                   trained: str | None = None, *, ledger, log, threads: int):
    """Float GGUF files, then each quantization. ``calib``: calibration items; when given,
    the quantizations that can use it get an importance matrix measured on them, except the
    one a quant-aware student was ``trained`` for (``gguf:q4_k_m``): its weights are on that
    file's grid already, and an importance matrix would move them off it."""

    out_dir.mkdir(parents=True, exist_ok=True)
    floats = [q for q in quants if q in FLOAT_TYPES]
    quantized = [q for q in quants if q not in FLOAT_TYPES]
    arts, scratch, sources = [], [], set()
    tp = ledger.get("gguf:tokenizer_parity", [])
    cal_ref: list[Reference] = []  # torch on the calibration items, run once when needed

    def calibration_ref() -> Reference:
        if not cal_ref:
            cal_ref.append(reference(ref.model_dir, calib[:8], ref.tok, ref.shape))
        return cal_ref[0]

    def source(ft: str) -> Path:
        """The float file ``ft``, written (or kept from an earlier run), tokenizer parity
        checked on the first one written."""
        nonlocal tp
        path = out_dir / f"model.{ft}.gguf"
        if ft in sources:
            return path
        if ledger.get(f"gguf:file:{ft}", [path]) is None:
            export_gguf(ref.model_dir, path, ft)
            ledger.put(f"gguf:file:{ft}", [path], {})
        else:
            log(f"gguf: kept {path} (written by an earlier run, unchanged)")
        sources.add(ft)
        if tp is None:
            tp = tokenizer_parity(ref, path)
            log(f"gguf: tokenizer parity {'passed' if tp['passed'] else 'FAILED'} "
                f"({tp['cases']} probe texts)"
                + (f"; {tp['normalization']['note']}" if tp.get("normalization")
                   else ""))
            if tp.get("error") is None:
                ledger.put("gguf:tokenizer_parity", [], tp)
        return path

    def check(path: Path, quant: str, t0: float, quantization: dict | None = None):
        v = verify(path, "gguf", quant, ref, threads)
        if not tp["passed"]:
            v.fail(f"tokenizer parity: {tp['mismatches']} of {tp['cases']} probe texts "
                   "tokenize differently in llama.cpp")
        types = tensor_types(path) if path.exists() and not v.error else None
        note = _fallback_note(quant, types)
        if tp.get("normalization"):
            note = "; ".join(filter(None, [note, tp["normalization"]["note"]]))
        if quantization:
            note = "; ".join(filter(None, [note, _importance_note(
                quantization["importance_matrix"])]))
        _report(log, ref.encoder, "gguf", quant, path, v, t0)
        arts.append(Artifact(path, "gguf", quant, v, types, note, quantization))
        _record(ledger, arts[-1])

    def kept(quant: str) -> bool:
        """Keep the file an earlier export verified, if unchanged; True when kept."""
        art = _kept(ledger, log, ref.encoder, "gguf", quant, out_dir / f"model.{quant}.gguf")
        if art is not None:
            arts.append(art)
        return art is not None

    for ft in floats:
        t0 = time.time()
        if not kept(ft):
            check(source(ft), ft, t0)
    # Quantize from F32 (most accurate source); keep it only if it was asked for.
    npz, tokens = out_dir / ".importance.npz", None
    for q in quantized:
        t0 = time.time()
        if kept(q):
            continue
        src = source("f32")
        if "f32" not in floats:
            scratch.append(src)
        weigh = bool(calib) and q in IMPORTANCE_QUANTS and trained != f"gguf:{q}"
        if weigh and tokens is None:  # measured once, for the first quantization using it
            tokens = ledger.get("gguf:importance", [npz])
            if tokens is None:
                tokens = _importance(ref, calib, npz, log)
                ledger.put("gguf:importance", [npz], tokens)
            scratch.append(npz)
        path, weighted = quantize_gguf(src, q, out_dir / f"model.{q}.gguf", threads,
                                       npz if weigh else None)
        info = None
        if weighted:
            info = {"tokens": tokens, "tensors": weighted,
                    **_keep_better_quantization(calibration_ref(), src, q, path, threads)}
            log(f"gguf:{q:<9} {_importance_note(info)}")
        check(path, q, t0, {"importance_matrix": info} if info else None)
    for p in scratch:
        p.unlink(missing_ok=True)
    return arts, tp


def _keep_better_quantization(cal: Reference, src: Path, quant: str, weighted: Path,
                              threads: int) -> dict:
    """An importance matrix usually lowers the loss of a quantization, not always: on a
    distilled 52M SmolLM2 student it doubled Q5_K_M's KL (Q5_1 attention outputs). So
    llama.cpp's plain quantization is made too, both are run in llama.cpp on the
    calibration items (never the held-out ones, which judge the result) and compared with
    torch, and the one with the lower KL (1 - cosine for encoders) replaces ``weighted``
    if it is the plain one. Returns {"used", "calibration"}."""

    plain = weighted.with_name(f".{weighted.stem}.plain.gguf")
    try:
        quantize_gguf(src, quant, plain, threads)
        loss = {}  # None: llama.cpp could not run the file
        for label, path in (("weighted", weighted), ("plain", plain)):
            try:
                got = outputs(path, "gguf", cal, threads)
            except RuntimeFailure:
                loss[label] = None
                continue
            f = figures(cal, got)  # the same comparison verification makes
            loss[label] = 1.0 - f["cosine"] if cal.encoder else f["kl"]
        used = loss["plain"] is None or (loss["weighted"] is not None
                                         and loss["weighted"] <= loss["plain"])
        if not used:
            plain.replace(weighted)
        return {"used": used, "calibration": {
            "metric": "1 - cosine" if cal.encoder else "kl", "items": len(cal.items),
            **loss}}
    finally:
        plain.unlink(missing_ok=True)


def _importance(ref: Reference, calib: list, path: Path, log) -> int:
    """Save the importance matrix of the model's linear layers on ``calib`` at ``path``
    (.npz); returns the number of tokens it was measured on."""

    t0 = time.time()
    matrix, tokens = importance_matrix(ref.model_dir, ref.shape.family, calib, ref.tok,
                                       ref.encoder)
    np.savez(path, **matrix)
    log(f"gguf: importance matrix of {len(matrix)} weights from {tokens} calibration "
        f"tokens ({time.time() - t0:.1f}s)")
    return tokens


def _unicode_normalization(tok) -> str | None:
    """The Unicode normalization form (NFC, NFKC, ...) the HF tokenizer applies, if any."""
    import json

    backend = getattr(tok, "backend_tokenizer", None)
    return unicode_normalization(json.loads(backend.to_str())) if backend else None


def _importance_note(imp: dict) -> str:
    """What the importance matrix did to a file, with the calibration figures that decided."""
    cal = imp.get("calibration") or {}
    what = (f"importance matrix from {imp['tokens']} calibration tokens "
            + (f"weighted {imp['tensors']} tensors" if imp.get("used", True) else "not used"))
    if cal:
        fig = {k: "n/a" if cal[k] is None else f"{cal[k]:.4g}" for k in ("weighted", "plain")}
        what += (f" (calibration {cal['metric']} on {cal['items']} items: weighted "
                 f"{fig['weighted']}, plain llama.cpp {fig['plain']})")
    return what


def _fallback_note(quant: str, types: dict | None) -> str:
    """Say which weights llama.cpp stored in another type than asked (k-quant fallback)."""
    expected = quant_type("gguf", quant).ggml_types
    if not types or not expected:
        return ""
    other = {t: n for t, n in types.items() if t not in expected | {"F32"}}
    if not other:
        return ""
    return ("llama.cpp stored " + ", ".join(f"{n} tensors as {t}" for t, n in other.items())
            + f" (rows not divisible by the {quant} block)")
