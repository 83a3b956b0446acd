"""Running fixed-shape graphs: the feeds of an NPU's prefill and decode graphs (the shapes
convert/npu.py fixes), and onnxruntime-qnn's HTP backend (sessions with CPU fallback disabled,
compiled contexts, which nodes the HTP takes)."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# Fixes to suggest for ops the HTP backend refuses (QNN HTP op support tables).
OP_FIXES = {
    "ArgMax": "take the argmax on the CPU after the graph (export logits, not ids)",
    "Cast": "keep inputs in the graph's own dtypes (int32 ids, float masks)",
    "Range": "fix the shapes so that ranges fold to constants",
    "NonZero": "replace data-dependent shapes with masks",
    "Loop": "unroll the loop at export time",
    "If": "export one graph per branch",
    "ScatterND": "write the KV cache outside the graph (return new slots only)",
}


@dataclass(frozen=True)
class GraphShape:
    """The fixed dimensions of one NPU graph."""

    role: str
    """``encoder``, ``prefill`` or ``decode``."""
    tokens: int
    """Tokens per call (sequence length, prefill chunk, or 1)."""
    past: int = 0
    """Past KV slots (causal LMs)."""

    @property
    def context(self) -> int:
        return self.past + self.tokens


# -- feeds ------------------------------------------------------------------------------------
def input_names(path: Path) -> set[str]:
    """The graph inputs of an ONNX file (read without its weights)."""
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def encoder_feeds(tok, texts: list[str], g: GraphShape, names: set[str]) -> list[dict]:
    """One feed per sentence, padded to the graph's fixed length."""
    out = []
    for t in texts:
        enc = tok(t, padding="max_length", truncation=True, max_length=g.tokens,
                  return_tensors="np")
        out.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    return out


def _kv_inputs(sess) -> list:
    return [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]


def prefill_feed(sess, ids: list[int], g: GraphShape) -> dict:
    """Feed for the prefill graph: ``ids`` (at most the chunk) right-aligned after an empty,
    masked past; pad slots before them are masked too."""
    n = len(ids)
    if n > g.tokens:
        raise ValueError(f"{n} tokens do not fit the {g.tokens}-token prefill graph")
    pad = g.tokens - n
    mask = np.zeros((1, g.context), np.int64)
    mask[0, g.past + pad:] = 1
    feed = {"input_ids": np.array([[0] * pad + list(ids)], np.int64), "attention_mask": mask}
    names = {i.name for i in sess.get_inputs()}
    if "position_ids" in names:
        feed["position_ids"] = np.array([[0] * pad + list(range(n))], np.int64)
    for i in _kv_inputs(sess):
        feed[i.name] = np.zeros((1, i.shape[1], g.past, i.shape[3]), np.float32)
    return {k: v for k, v in feed.items() if k in names}


def decode_feed(sess, token: int, position: int, presents: dict, valid: int,
                g: GraphShape) -> dict:
    """Feed for the decode graph after a prefill: the last ``context - 1`` slots of the
    prefill's present KV (the ``valid`` newest are real), and one new token."""
    mask = np.zeros((1, g.context), np.int64)
    mask[0, g.context - 1 - valid:] = 1
    feed = {"input_ids": np.array([[token]], np.int64), "attention_mask": mask,
            "position_ids": np.array([[position]], np.int64)}
    for i in _kv_inputs(sess):
        present = presents[i.name.replace("past_key_values", "present")]
        feed[i.name] = present[:, :, -g.past:, :]
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def run_causal(prefill, decode, seqs: list[list[int]], next_tokens: list[int],
               graphs: list[GraphShape]) -> tuple[list[np.ndarray], np.ndarray]:
    """Run held-out sequences through the fixed prefill graph, then one decode step each with
    ``next_tokens``. Returns (prefill logits (T, V) per sequence, decode logits (N, V))."""
    gp, gd = graphs
    pre_out, dec_out = [], []
    present_names = [o.name for o in prefill.get_outputs() if o.name.startswith("present")]
    for ids, nxt in zip(seqs, next_tokens):
        ids = ids[-gp.tokens:]
        res = prefill.run(["logits"] + present_names, prefill_feed(prefill, ids, gp))
        pre_out.append(res[0][0, gp.tokens - len(ids):].astype(np.float32))
        presents = dict(zip(present_names, res[1:]))
        feed = decode_feed(decode, nxt, len(ids), presents, len(ids), gd)
        dec_out.append(decode.run(["logits"], feed)[0][0, -1].astype(np.float32))
    return pre_out, np.stack(dec_out)


# -- the HTP backend ----------------------------------------------------------------------------
def qnn_available() -> str | None:
    """None when onnxruntime-qnn can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_qnn") is None:
        return "onnxruntime-qnn is not installed (pip install onnxruntime-qnn; Linux x86_64)"
    return None


def htp_options(profile) -> dict:
    """QNN provider options for the profile's Hexagon: backend, SoC and HTP architecture."""
    import onnxruntime_qnn

    c = profile.constraints
    opts = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if c.htp_arch:
        opts["htp_arch"] = str(c.htp_arch)
    if c.soc_model:
        opts["soc_model"] = str(c.soc_model)
    return opts


def context_path(graph: Path) -> Path:
    """Where the compiled HTP context of a QDQ graph is saved (an EPContext ONNX model with the
    QNN context binary embedded: what the phone loads without compiling)."""
    return graph.with_name(graph.name.removesuffix(".onnx") + ".qnn-ctx.onnx")


def context_options(tmp: Path) -> dict:
    """Session config entries that make onnxruntime save the compiled HTP graph to ``tmp``."""
    return {"ep.context_enable": "1", "ep.context_file_path": str(tmp),
            "ep.context_embed_mode": "1"}


def htp_session(path: Path, options: dict, fallback: bool = False, profile_to: str | None = None,
                config: dict | None = None):
    """An onnxruntime session on the QNN HTP backend. Without ``fallback`` a node the HTP
    cannot take fails the session instead of quietly running on the CPU. ``config``: extra
    session config entries."""
    import onnxruntime as ort
    import onnxruntime_qnn

    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNNExecutionProvider",
                                                onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if profile_to:
        so.enable_profiling = True
        so.profile_file_prefix = profile_to
    so.add_provider_for_devices(devices[:1], options)
    return ort.InferenceSession(str(path), sess_options=so)


def coverage(path: Path, options: dict, feed: dict) -> dict:
    """Which nodes of ``path`` the HTP takes: run once with CPU fallback allowed and read
    onnxruntime's profile for nodes executed by the CPU provider."""
    import onnx

    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory(prefix="edgedistill-qnn-") as tmp:
        sess = htp_session(path, options, fallback=True, profile_to=str(Path(tmp) / "p"))
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    cpu: dict[str, str] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and args.get("provider") == "CPUExecutionProvider":
            cpu[e["name"].rsplit("_kernel_time", 1)[0]] = args.get("op_name", "?")
    ops = sorted(set(cpu.values()))
    return {"nodes": nodes, "on_htp": nodes - len(cpu), "on_cpu": len(cpu),
            "unsupported_ops": [{"op": o, "fix": OP_FIXES.get(
                o, f"replace {o} with ops the HTP supports, or keep it outside the graph")}
                for o in ops]}
