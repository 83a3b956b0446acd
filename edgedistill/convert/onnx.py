"""ONNX export through optimum-onnx.

Causal LMs: task ``text-generation-with-past`` (one graph with KV-cache inputs; a prompt is
run with an empty past). Encoders: task ``feature-extraction``, plus a ``sentence_embedding``
output appended to the graph: the sentence-transformers pooling (mean or CLS, then optional L2
normalisation) that the model folder declares in ``modules.json`` / ``1_Pooling``.

The export is written to a temporary folder and renamed into place, so an interrupted export
never leaves a half-written ``model.onnx`` behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgedistill.arch import shape_from_config
from edgedistill.formats import SENTENCE_EMBEDDING
from edgedistill.teacher import Pooling, sentence_pooling


def _opset(model) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def add_sentence_embedding(onnx_path: Path, pooling: Pooling) -> None:
    """Append the pooled (and optionally normalised) sentence embedding as an output."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    opset = _opset(model)
    if any(o.name == SENTENCE_EMBEDDING for o in g.output):
        return
    hidden = "last_hidden_state"
    nodes, inits = [], []

    def const(name, values, dtype=TensorProto.INT64):
        inits.append(helper.make_tensor(name, dtype, [len(values)], values))
        return name

    def reduce(op, x, out, axes, keepdims):
        if opset >= 13 and op == "ReduceSum" or opset >= 18:
            nodes.append(helper.make_node(op, [x, const(f"se_axes_{out}", axes)], [out],
                                          keepdims=keepdims))
        else:
            nodes.append(helper.make_node(op, [x], [out], axes=axes, keepdims=keepdims))

    if pooling.mode == "cls":
        nodes.append(helper.make_node("Gather", [hidden, const("se_zero", [0])], ["se_cls"],
                                      axis=1))
        nodes.append(helper.make_node("Squeeze", ["se_cls", const("se_ax1", [1])],
                                      ["se_pooled"]) if opset >= 13 else
                     helper.make_node("Squeeze", ["se_cls"], ["se_pooled"], axes=[1]))
    else:
        # mean over real tokens: sum(h * mask) / max(sum(mask), eps)      (B, S, H) -> (B, H)
        nodes.append(helper.make_node("Cast", ["attention_mask"], ["se_mask"],
                                      to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Unsqueeze", ["se_mask", const("se_neg1", [-1])],
                                      ["se_mask3"]) if opset >= 13 else
                     helper.make_node("Unsqueeze", ["se_mask"], ["se_mask3"], axes=[-1]))
        nodes.append(helper.make_node("Mul", [hidden, "se_mask3"], ["se_masked"]))
        reduce("ReduceSum", "se_masked", "se_sum", [1], 0)
        reduce("ReduceSum", "se_mask3", "se_count", [1], 0)
        inits.append(helper.make_tensor("se_eps", TensorProto.FLOAT, [], [1e-9]))
        nodes.append(helper.make_node("Max", ["se_count", "se_eps"], ["se_count_safe"]))
        nodes.append(helper.make_node("Div", ["se_sum", "se_count_safe"], ["se_pooled"]))
    out = "se_pooled"
    if pooling.normalize:
        reduce("ReduceL2", "se_pooled", "se_norm", [1], 1)
        inits.append(helper.make_tensor("se_eps12", TensorProto.FLOAT, [], [1e-12]))
        nodes.append(helper.make_node("Max", ["se_norm", "se_eps12"], ["se_norm_safe"]))
        nodes.append(helper.make_node("Div", ["se_pooled", "se_norm_safe"], ["se_normed"]))
        out = "se_normed"
    nodes.append(helper.make_node("Identity", [out], [SENTENCE_EMBEDDING]))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.output.append(helper.make_tensor_value_info(SENTENCE_EMBEDDING, TensorProto.FLOAT,
                                                  ["batch_size", None]))
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, opset: int | None = None) -> Path:
    """Export the HF model in ``model_dir`` to ``out_dir/model.onnx`` (with tokenizer and
    config beside it). Returns the path of model.onnx. Replaces ``out_dir`` atomically."""
    import warnings

    from optimum.exporters.onnx import main_export

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    shape = shape_from_config(cfg, str(model_dir / "config.json"))
    task = "feature-extraction" if shape.is_encoder else "text-generation-with-past"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out_dir.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(model_dir), str(tmp), task=task, opset=opset, do_validation=False,
                        local_files_only=True, library_name="transformers")
        if shape.is_encoder:
            add_sentence_embedding(tmp / "model.onnx", sentence_pooling(model_dir))
            for extra in ("modules.json", "1_Pooling", "sentence_bert_config.json"):
                src = model_dir / extra
                if src.is_dir():
                    shutil.copytree(src, tmp / extra, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copy2(src, tmp / extra)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "model.onnx"


@contextmanager
def atomic_onnx(out: Path):
    """A temporary path beside ``out`` to write to; moved onto ``out`` when the block ends
    without an error, removed in every case."""
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def quiet_root_logger():
    """onnxruntime's quantization tools log on the root logger for every model ("Please
    consider to run pre-processing"...); hold it at ERROR meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)
