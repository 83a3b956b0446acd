import dataclasses
import json

import pytest
import torch

from edgedistill.arch import config_for_shape, shape_from_config
from edgedistill.student import build_student, select_layers, set_dropout


def test_layer_selection_spreads_and_keeps_ends():
    assert select_layers(6, 3) == [0, 2, 5]
    assert select_layers(22, 10)[0] == 0 and select_layers(22, 10)[-1] == 21
    assert len(select_layers(22, 10)) == 10
    assert select_layers(4, 4) == [0, 1, 2, 3]


def test_layer_selection_leaves_out_the_most_alike_run():
    d = torch.ones(7, 7) * 0.5
    d[2, 5] = d[5, 2] = 0.1  # states 2 and 5 alike: layers 2, 3, 4 change little
    assert select_layers(6, 3, d) == [0, 1, 5]
    d[1, 4] = d[4, 1] = 0.05
    assert select_layers(6, 3, d) == [0, 4, 5]
    # the first and last layers are always kept, whatever the distances say
    d[0, 3] = d[6, 3] = d[3, 6] = 0.0
    assert select_layers(6, 3, d)[0] == 0 and select_layers(6, 3, d)[-1] == 5
    assert select_layers(6, 2, d) == [0, 5] and select_layers(6, 1, d) == [5]


def test_calibrated_depth_leaves_out_the_layers_that_change_nothing(tmp_path):
    """Layers 2 and 3 of a 6-layer llama write nothing to the residual stream: with
    calibration text, a 4-layer student keeps 0, 1, 4, 5 (evenly spread would keep 0, 2, 3,
    5) and holds exactly those layers' weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64,
                                           intermediate_size=128, num_hidden_layers=6,
                                           num_attention_heads=4, num_key_value_heads=2))
    with torch.no_grad():
        for i in (2, 3):
            teacher.model.layers[i].self_attn.o_proj.weight.zero_()
            teacher.model.layers[i].mlp.down_proj.weight.zero_()
    teacher.save_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    small = dataclasses.replace(shape_from_config(cfg), num_layers=4)
    ids = torch.randint(1, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    out = build_student(tmp_path / "t", config_for_shape(cfg, small), tmp_path / "s",
                        calibration=[{"input_ids": ids}])
    student = _load(out).state_dict()
    for k, li in enumerate([0, 1, 4, 5]):
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight"):
            assert torch.equal(student[f"model.layers.{k}.{name}"],
                               teacher.state_dict()[f"model.layers.{li}.{name}"])
    # the skipped layers changed nothing, so the student computes the teacher's function
    with torch.no_grad():
        assert torch.allclose(_load(out)(ids).logits, teacher.eval()(ids).logits, atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_set_dropout_reaches_config_and_kernels(family):
    import transformers as tf
    small = dict(num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    model = {"bert": lambda: tf.BertModel(tf.BertConfig(hidden_size=32, intermediate_size=64,
                                                        **small)),
             "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
                 hidden_size=32, intermediate_size=64, attention_dropout=0.2, **small)),
             "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2,
                                                              vocab_size=64))}[family]()
    changed = set_dropout(model, 0.0)
    assert changed and all(v > 0 for v in changed.values())  # what the config had
    cfg = model.config.to_dict()
    assert all(v == 0.0 for k, v in cfg.items()
               if ("dropout" in k or k.endswith("_pdrop")) and isinstance(v, float))
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    # in train mode the model is now deterministic: no dropout left anywhere
    model.train()
    ids = torch.arange(1, 9)[None]
    out = [model(ids)[0] for _ in range(2)]
    assert torch.equal(out[0], out[1])
    assert set_dropout(model, 0.0) == {}  # nothing left to change


def _load(folder):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_same_shape_student_is_the_teacher(trained_llama, tmp_path):
    cfg = json.loads((trained_llama / "config.json").read_text())
    out = build_student(trained_llama, config_for_shape(cfg, shape_from_config(cfg)),
                        tmp_path / "s")
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        assert torch.equal(_load(trained_llama)(ids).logits, _load(out)(ids).logits)
    assert (out / "tokenizer.json").read_text() == (trained_llama / "tokenizer.json").read_text()


@pytest.mark.parametrize("family,calibrated", [("llama", False), ("llama", True),
                                               ("qwen3", True), ("phi3", True),
                                               ("gemma3_text", True)],
                         ids=["weights", "activations", "qwen3-qk-norm", "phi3-fused",
                              "gemma3-sandwich-norms"])
def test_shrunk_student_tracks_the_teacher_better_than_random(request, tmp_path, family,
                                                              calibrated):
    teacher = request.getfixturevalue(f"trained_{family}")
    cfg = json.loads((teacher / "config.json").read_text())
    t = shape_from_config(cfg)
    # the tiny gemma3's last layer alone does not track it (correlation -0.21 with every width
    # kept): it keeps both layers, and the test checks its widths (sandwich norms, q/k norms)
    small = dataclasses.replace(t, num_layers=2 if family == "gemma3_text" else 1,
                                hidden_size=32, num_heads=2, num_kv_heads=1,
                                intermediate_size=64)
    ids = torch.randint(1, 300, (2, 48), generator=torch.Generator().manual_seed(0))
    calib = [{"input_ids": ids}] if calibrated else None
    init = build_student(teacher, config_for_shape(cfg, small), tmp_path / "i",
                         calibration=calib)
    rand = build_student(teacher, config_for_shape(cfg, small), tmp_path / "r",
                         init="random")
    with torch.no_grad():
        ref = _load(teacher)(ids).logits.flatten()
        corr = [torch.corrcoef(torch.stack([ref, _load(p)(ids).logits.flatten()]))[0, 1]
                for p in (init, rand)]
    assert shape_from_config(json.loads((init / "config.json").read_text())) == small
    assert corr[0] > 0.5 and corr[0] > corr[1] + 0.3


def _phi3_as_llama(phi3_dir, out):
    """The same weights in llama's layout: qkv_proj split into q/k/v, gate_up_proj into
    gate/up (phi3 and llama compute the same function of them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((phi3_dir / "config.json").read_text())
    t = shape_from_config(cfg)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
            "rms_norm_eps", "rope_theta", "tie_word_embeddings", "bos_token_id", "eos_token_id")
    model = LlamaForCausalLM(LlamaConfig(**{k: cfg[k] for k in keys if k in cfg}))
    state = {}
    for k, w in _load(phi3_dir).state_dict().items():
        if "qkv_proj" in k:
            q, kk, v = w.split([t.q_dim, t.kv_dim, t.kv_dim])
            for name, part in (("q_proj", q), ("k_proj", kk), ("v_proj", v)):
                state[k.replace("qkv_proj", name)] = part
        elif "gate_up_proj" in k:
            g, u = w.chunk(2)
            state[k.replace("gate_up_proj", "gate_proj")] = g
            state[k.replace("gate_up_proj", "up_proj")] = u
        else:
            state[k] = w
    model.load_state_dict(state)
    model.save_pretrained(out)
    return out


def test_phi3_fused_rows_are_pruned_as_llama_prunes_its_separate_ones(trained_phi3, tmp_path):
    """A phi3 student keeps exactly the heads, KV groups and neurons the llama student of the
    same weights keeps: the same logits, so the fused rows were sliced in step."""
    ids = torch.randint(1, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    as_llama = _phi3_as_llama(trained_phi3, tmp_path / "llama")
    with torch.no_grad():
        assert torch.allclose(_load(trained_phi3)(ids).logits, _load(as_llama)(ids).logits,
                              atol=1e-5)
    logits = []
    for teacher in (trained_phi3, as_llama):
        cfg = json.loads((teacher / "config.json").read_text())
        small = dataclasses.replace(shape_from_config(cfg), num_layers=1, hidden_size=48,
                                    num_heads=2, num_kv_heads=1, intermediate_size=96)
        out = build_student(teacher, config_for_shape(cfg, small),
                            tmp_path / f"student-{cfg['model_type']}")
        with torch.no_grad():
            logits.append(_load(out)(ids).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def _distilbert_as_bert(folder, out):
    """The same weights in bert's layout (bert and distilbert compute the same function of
    them when bert's single token type adds zeros)."""
    from transformers import BertConfig, BertModel, DistilBertModel

    d = DistilBertModel.from_pretrained(folder)
    c = d.config
    bert = BertModel(BertConfig(vocab_size=c.vocab_size, hidden_size=c.dim,
                                intermediate_size=c.hidden_dim, num_hidden_layers=c.n_layers,
                                num_attention_heads=c.n_heads, type_vocab_size=1,
                                max_position_embeddings=c.max_position_embeddings,
                                layer_norm_eps=1e-12, pad_token_id=c.pad_token_id))
    names = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
             "attention.v_lin": "attention.self.value",
             "attention.out_lin": "attention.output.dense",
             "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
             "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}
    state = dict(bert.state_dict())
    state["embeddings.token_type_embeddings.weight"] = torch.zeros(1, c.dim)
    for k, w in d.state_dict().items():
        k = k.replace("transformer.layer.", "encoder.layer.")
        for a, b in names.items():
            k = k.replace(a, b)
        state[k] = w
    bert.load_state_dict(state)
    bert.save_pretrained(out)
    for f in folder.glob("*.json"):
        if f.name != "config.json":
            (out / f.name).write_text(f.read_text())
    (out / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    return out


def test_distilbert_is_pruned_as_bert_prunes_the_same_weights(tmp_path):
    """DistilBERT's own names (q_lin, out_lin, ffn.lin1, ...) and size keys (dim, n_layers,
    ...): a shrunk distilbert student computes what the same student of the same weights in
    bert's layout computes."""
    from transformers import AutoModel

    from conftest import tiny_distilbert

    dist = tiny_distilbert(tmp_path / "distilbert")
    bert = _distilbert_as_bert(dist, tmp_path / "bert")
    ids = torch.randint(1000, 3000, (2, 20), generator=torch.Generator().manual_seed(0))
    outs = []
    for teacher in (dist, bert):
        cfg = json.loads((teacher / "config.json").read_text())
        small = dataclasses.replace(shape_from_config(cfg), num_layers=1, hidden_size=32,
                                    num_heads=2, num_kv_heads=2, intermediate_size=64)
        student = build_student(teacher, config_for_shape(cfg, small), tmp_path / f"s{len(outs)}")
        assert shape_from_config(json.loads((student / "config.json").read_text())) == small
        with torch.no_grad():
            outs.append(AutoModel.from_pretrained(student).eval()(input_ids=ids)
                        .last_hidden_state)
    assert "dim" in json.loads((tmp_path / "s0" / "config.json").read_text())
    assert torch.allclose(outs[0], outs[1], atol=1e-5), (outs[0] - outs[1]).abs().max()
