"""The fake-quant grids (edgedistill/quantgrid.py) are the formats' own: equal to gguf-py's
port of ggml's reference quantizers, and a fixed point of llama.cpp's quantizer, so a file
made from weights on the grid holds exactly those weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from edgedistill import quantgrid
from edgedistill.errors import EdgeDistillError


def _awkward(rows: int = 16, cols: int = 128) -> torch.Tensor:
    """Normal weights with the cases quantizers get wrong: a zero block, equal magnitudes of
    both signs, a lone outlier, values on the rounding boundary."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :32] = 0
    w[1, :32] = torch.tensor([0.25, -0.25] * 16)
    w[2, 5] = 3.0
    w[3, :32] = torch.linspace(-1, 1, 32)
    return w


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_grids_equal_ggml_reference_quantizers(quant):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = _awkward()
    kind = getattr(GGMLQuantizationType, quant.upper())
    want = dequantize(quantize(w.numpy(), kind), kind)
    got = quantgrid.grid("gguf", quant)(w).numpy()
    assert np.array_equal(got, want)


def test_fake_quant_passes_gradients_straight_through():
    w = _awkward().requires_grad_()
    y = quantgrid.fake_quant(w, "gguf", "q4_0")
    assert torch.equal(y.detach(), quantgrid.q4_0(w.detach()))
    (y * 3).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def test_a_format_without_a_grid_is_a_clear_error():
    with pytest.raises(EdgeDistillError) as e:
        quantgrid.grid("gguf", "q4_k_m")
    assert "gguf:q4_0" in e.value.hint
    with pytest.raises(ValueError):
        quantgrid.q4_0(torch.zeros(4, 40))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_llama_cpp_writes_weights_on_the_grid_bit_for_bit(
        trained_llama, trained_qwen2, tmp_path, quant, family):
    """Every matrix the quant-aware targets put on a grid (an untied llama: layers,
    embedding, head; a tied qwen2: layers and the shared embedding) is stored by llama.cpp
    in that grid's type and decodes to exactly the baked weights (the F32 file of the same
    model holds them): requantizing changes nothing, the exact export of a quant-aware
    student."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from edgedistill.convert.gguf import export_gguf
    from edgedistill.distill.quant_aware import targets
    from edgedistill.quantize.gguf import quantize_gguf

    src_dir = trained_llama if family == "llama" else trained_qwen2
    model = tmp_path / "on-grid"
    shutil.copytree(src_dir, model)
    m = AutoModelForCausalLM.from_pretrained(src_dir)
    baked = {}
    with torch.no_grad():
        for mod, q in targets(m, quant):
            mod.weight.copy_(quantgrid.grid("gguf", q)(mod.weight))
            baked[id(mod.weight)] = q
    m.save_pretrained(model)
    f32 = export_gguf(model, tmp_path / "m.f32.gguf", "f32")
    qfile, _ = quantize_gguf(f32, quant, tmp_path / f"m.{quant}.gguf")
    src = {t.name: np.asarray(t.data) for t in GGUFReader(str(f32)).tensors}
    stored = [t for t in GGUFReader(str(qfile)).tensors if t.tensor_type.name not in ("F32",)]
    for t in stored:
        dec = dequantize(np.asarray(t.data), t.tensor_type).reshape(src[t.name].shape)
        assert np.array_equal(dec, src[t.name]), (t.name, t.tensor_type.name)
    # the layers' 14 matrices, with the embedding and the head (llama) or the shared one
    assert len(stored) == len(baked) == (16 if family == "llama" else 15)
