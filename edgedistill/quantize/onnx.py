"""ONNX quantization with onnxruntime's quantizers.

- ``int8``: dynamic quantization (int8 weights, activations quantized at run time), FFN down
  projections kept float (activation outliers; see :func:`ffn_down_nodes`);
- ``int4``: weight-only 4-bit MatMulNBits, block size from the profile;
- ``qdq_a8w8`` / ``qdq_a16w8`` / ``qdq_a16w4``: static QDQ with activation ranges calibrated on
  the user's data (what NPUs run).

Each writes ``model.<quant>.onnx`` beside the float model, via a temporary file.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from ..errors import EdgeDistillError
from ..formats import quant_names

# Static QDQ covers the weight-carrying ops. Elementwise ops of a causal LM see its attention
# mask (-3.4e38 where masked): calibrating their ranges on it flattens every other value to 0.
QDQ_OPS = ("MatMul", "Gemm", "Gather")
_LARGE = 1_800_000_000  # protobuf's 2 GB limit, with room


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


def quantized_path(fp32_path: Path, quant: str) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}.{quant}.onnx")


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(fp32_path: str | Path, quant: str, *, block_size: int = 32,
                  calibration: Iterable[dict] | None = None) -> Path:
    """Quantize ``fp32_path`` to ``quant``; returns the new file's path.

    ``calibration``: feed dicts (input name -> numpy array) for the static QDQ schemes.
    Raises EdgeDistillError for an unknown quantization or missing calibration data.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32_path = Path(fp32_path)
    if quant == "fp32":
        return fp32_path
    if quant not in quant_names("onnx"):
        raise EdgeDistillError(f"unknown ONNX quantization {quant!r}.",
                               f"use one of {', '.join(quant_names('onnx'))}")
    out = quantized_path(fp32_path, quant)
    large = fp32_path.stat().st_size > _LARGE
    with quiet_root_logger(), atomic_onnx(out) as tmp:
        if quant == "int8":
            quantize_dynamic(fp32_path, tmp, weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=large,
                             nodes_to_exclude=ffn_down_nodes(fp32_path))
        elif quant == "int4":
            _int4(fp32_path, tmp, block_size, large)
        elif quant == "fp16":
            _fp16(fp32_path, tmp)
        else:
            feeds = list(calibration or [])
            if not feeds:
                raise EdgeDistillError(
                    f"{quant} is a static quantization and needs calibration data.",
                    "pass --data (text to calibrate activation ranges on)")
            act = QuantType.QUInt16 if quant.startswith("qdq_a16") else QuantType.QUInt8
            weight = QuantType.QInt4 if quant.endswith("w4") else QuantType.QInt8
            quantize_static(
                fp32_path, tmp, FeedReader(feeds), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=act, weight_type=weight,
                use_external_data_format=large, op_types_to_quantize=list(QDQ_OPS),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               "MinimumRealRange": 1e-4},
            )
    return out


def ffn_down_nodes(path: Path) -> list[str]:
    """MatMul nodes of the FFN down projections. Their inputs carry the activation outliers
    of transformer FFNs; per-tensor dynamic int8 on them cost our trained test llama 30x more
    KL to torch (0.0026 vs 0.00008) and 5 points of top-1 agreement, so they stay float."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and (
        "down_proj" in n.name or re.search(r"/layer\.\d+/output/dense/", n.name))]


def _int4(src: Path, dst: Path, block_size: int, large: bool) -> None:
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Asymmetric blocks (scale + 4-bit zero point): on our test models they keep ~8 points
    # more top-1 agreement than symmetric ones, for the same file size.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    head = output_head_nodes(model)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                             accuracy_level=4, nodes_to_exclude=head)
    q.process()
    if head:
        # The output projection's errors land on the logits unaveraged: 4-bit blocks there
        # cost our trained test llama 3 points of top-1 agreement. Like llama.cpp's Q4_K_M and
        # Q4_0 (output tensor at Q6_K), it gets more bits: 8-bit blocks, MatMulNBits as well.
        q = MatMulNBitsQuantizer(q.model.model, bits=8, block_size=block_size,
                                 is_symmetric=False, accuracy_level=4,
                                 nodes_to_exclude=_other_matmuls(q.model.model, head))
        q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=large)


def output_head_nodes(model) -> list[str]:
    """Names of the MatMul nodes that produce the graph's ``logits`` output (the LM head);
    empty for graphs without one (encoders)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    heads = []
    for out in model.graph.output:
        if out.name != "logits":
            continue
        node = producers.get(out.name)
        # follow shape-only ops (Reshape, Cast, Identity) back to the projection
        while node is not None and node.op_type != "MatMul" and node.input:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "MatMul":
            heads.append(node.name)
    return heads


def _other_matmuls(model, keep: list[str]) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
