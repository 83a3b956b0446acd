"""ONNX quantization with onnxruntime's quantizers.

- ``int8``: causal LMs: 8-bit weights in blocks of 32 with activations quantized to int8 per
  block at run time (MatMulNBits, accuracy level 4), what llama.cpp's Q8_0 does; encoders:
  dynamic quantization (per-channel int8 weights, activations per tensor at run time, FFN
  down projections kept float: see :func:`_dynamic_int8`);
- ``int4``: 4-bit weights in blocks (size from the profile), activations likewise at run time;
  the output head, the attention value and the FFN down projections at 8 bits (as llama.cpp's
  Q4_K_M gives those more bits); the embedding tables in 4-bit blocks (GatherBlockQuantized);
- ``qdq_a8w8`` / ``qdq_a16w8`` / ``qdq_a16w4``: static QDQ with activation ranges calibrated on
  the user's data (what NPUs run).

Each writes ``model.<quant>.onnx`` beside the float model, via a temporary file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from edgedistill.convert.onnx import atomic_onnx, quiet_root_logger
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import ONNX_INT4_AT_8_BITS, quant_names

# Static QDQ covers the weight-carrying ops. Elementwise ops of a causal LM see its attention
# mask (-3.4e38 where masked): calibrating their ranges on it flattens every other value to 0.
QDQ_OPS = ("MatMul", "Gemm", "Gather")
_LARGE = 1_800_000_000  # protobuf's 2 GB limit, with room


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
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

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
            if _is_causal(fp32_path):
                _nbits(fp32_path, tmp, {8: None}, 32, large)
            else:
                _dynamic_int8(fp32_path, tmp, large)
        elif quant == "int4":
            _nbits(fp32_path, tmp, {8: sensitive_nodes, 4: None}, block_size, large)
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


def _is_causal(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(o.name == "logits" for o in graph.output)


def _dynamic_int8(src: Path, dst: Path, large: bool) -> None:
    """onnxruntime's dynamic int8, for encoders: batched, compute-bound work, where its integer
    matmuls ran the MiniLM teacher 1.4x faster than fp32 (96 vs 137 ms per batch of 32) and
    8-bit MatMulNBits blocks did not (138 ms), at cosine 0.9958 to the float model. The FFN
    down projections stay float: their inputs carry the FFN's activation outliers, and
    per-tensor activation scales there cost our trained test llama 5 points of top-1."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    down = [n.name for n in model.graph.node if n.op_type == "MatMul" and (
        "down_proj" in n.name or re.search(r"/layer\.\d+/output/dense/", n.name))]
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=large, nodes_to_exclude=down)


def _nbits(src: Path, dst: Path, plan: dict, block: int, large: bool) -> None:
    """Blockwise MatMulNBits quantization of every MatMul with a constant weight. ``plan``:
    bits -> a function of the model naming the nodes to quantize at that width (None: all the
    rest), applied in order. 8-bit blocks of 32 are symmetric (one scale each, like Q8_0);
    4-bit ones asymmetric (scale and 4-bit zero point: on our test llama ~8 points more top-1
    agreement than symmetric ones for the same size). Accuracy level 4: activations are
    quantized to int8 per block at run time. Blockwise scales follow the outlier channels that
    onnxruntime's per-tensor dynamic int8 flattened: on SmolLM2-135M that one agreed with
    torch on 86% of top-1 tokens and decoded 1.45x slower; 8-bit blocks agree on 96.6%."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    if 4 in plan:  # a tied head, transposed at run time, becomes a weight to quantize
        fold_constant_transposes(model)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    left = set(matmuls)
    for bits, pick in plan.items():
        names = set(left) if pick is None else set(pick(model)) & left
        left -= names
        if not names:
            continue
        # 4 bits: the embedding tables too (GatherBlockQuantized, blocks along the hidden
        # axis), which otherwise stay float and make the file larger than its int8 one
        gathers = {"op_types_to_quantize": ("MatMul", "Gather"),
                   "quant_axes": (("MatMul", 0), ("Gather", 1))} if bits == 4 else {}
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block if bits == 4 else 32,
                                 is_symmetric=bits == 8, accuracy_level=4,
                                 nodes_to_exclude=[n for n in matmuls if n not in names],
                                 **gathers)
        q.process()
        model = q.model.model
    onnx.save_model(model, str(dst), save_as_external_data=large,
                    location=f"{dst.name}.data" if large else None)


def fold_constant_transposes(model) -> int:
    """Replace each Transpose of an initializer that feeds only MatMul weights (a tied LM
    head: the embedding table, transposed) by a transposed initializer
    (``<name>_transposed``), so that MatMulNBits can quantize the head, and the embedding
    table, left to its Gather, can be quantized on its own. In place; returns how many."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users: dict[str, list] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            users.setdefault(name, []).append((n, i))
    folded = 0
    for node in list(g.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        out = node.output[0]
        if any(u.op_type != "MatMul" or i != 1 for u, i in users.get(out, [])) or \
                out in {o.name for o in g.output}:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        arr = numpy_helper.to_array(inits[node.input[0]])
        name = f"{node.input[0]}_transposed"
        if name not in inits:
            t = numpy_helper.from_array(np.ascontiguousarray(arr.transpose(perm)), name)
            g.initializer.append(t)
            inits[name] = t
        for u, i in users.get(out, []):
            u.input[i] = name
        g.node.remove(node)
        folded += 1
    return folded


def sensitive_nodes(model) -> list[str]:
    """MatMuls whose errors cost the most agreement at 4 bits, kept at 8 as llama.cpp's Q4_K_M
    gives the like more bits: the output head (its errors land on the logits unaveraged), the
    attention value projections and the FFN down projections (whose inputs carry the FFN's
    activation outliers). On SmolLM2-135M (8 held-out sequences) they raise int4's top-1
    agreement with torch from 74% to 84% (KL -60%) for 8% more file; on our 4.2M test llama
    from 95.3% to 96.0%."""
    names = set(output_head_nodes(model))
    for n in model.graph.node:
        if n.op_type == "MatMul" and re.search(ONNX_INT4_AT_8_BITS, n.name):
            names.add(n.name)
    return sorted(names)


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


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
