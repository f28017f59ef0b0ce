"""LSTModel: what the ladders read from the backbone, and the optimizer groups it offers."""

import json

import pytest
import torch
from tiny_models import tiny_backbone, tiny_inputs

from laddertune import LSTConfig, LSTModel, get_lst_model
from laddertune.backbones import get_path
from laddertune.config import CONFIG_NAME
from laddertune.errors import LSTConfigError


def _ladder_inputs(model, stack, projection, **inputs):
    """What down-projection `projection` of stack `stack`'s ladder reads in one forward."""
    seen = []
    hook = model.ladders[stack].down[projection].register_forward_pre_hook(
        lambda module, args: seen.append(args[0]))
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def _last_block_outputs(model, stack, **inputs):
    """The backbone's last block output and hidden_states[-1] of one stack, read directly."""
    blocks = get_path(model.stacks[stack], model.family.layers)
    seen = []
    hook = blocks[-1].register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model.stacks[stack](**inputs, output_hidden_states=True, return_dict=True)
    finally:
        hook.remove()
    return seen[0], out.hidden_states[-1]


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["t5", "llama", "gpt2"])
def test_last_ladder_reads_the_raw_block_output_or_the_normed_stream(model_type):
    backbone = tiny_backbone(model_type, task="lm" if model_type == "t5" else "bare")
    inputs = tiny_inputs(model_type)
    for reading in ("raw", "normed"):
        model = get_lst_model(backbone, LSTConfig(
            task_type="SEQ_2_SEQ_LM" if model_type == "t5" else "FEATURE_EXTRACTION",
            reduction_factor=4, ladder_last_layer=reading)).eval()
        assert model.kept_layers[0][-1] == 3                       # the last of 4 layers
        raw, normed = _last_block_outputs(model, 0, input_ids=inputs["input_ids"],
                                          attention_mask=inputs["attention_mask"])
        assert not torch.allclose(raw, normed)                      # a final norm sits between
        forward = {**inputs, "labels": inputs["input_ids"]} if model_type == "t5" else inputs
        got = _ladder_inputs(model, 0, 3, **forward)
        torch.testing.assert_close(got, raw if reading == "raw" else normed, rtol=0, atol=0)
    hooks = [hook for m in backbone.modules() for hook in m._forward_hooks.values()]
    assert not any(hook.__qualname__.startswith("block_outputs") for hook in hooks)  # removed


@pytest.mark.numerics
def test_t5_decoder_ladder_reads_the_raw_last_block_too():
    backbone = tiny_backbone("t5", task="lm")
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=4)).eval()
    inputs = tiny_inputs("t5")
    decoder_ids = model.shift_right(inputs["input_ids"])
    with torch.no_grad():
        memory = model.stacks[0](**inputs).last_hidden_state
    raw, _ = _last_block_outputs(model, 1, input_ids=decoder_ids, encoder_hidden_states=memory,
                                 encoder_attention_mask=inputs["attention_mask"])
    got = _ladder_inputs(model, 1, 3, **inputs, labels=inputs["input_ids"])
    torch.testing.assert_close(got, raw, rtol=0, atol=0)


def test_backbone_dropout_noises_the_ladders_only_while_training():
    backbone = tiny_backbone("bert", hidden_dropout_prob=0.5).eval()
    inputs = tiny_inputs("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=4, backbone_dropout=True))
    model.train()
    first, second = (_ladder_inputs(model, 0, 2, **inputs) for _ in range(2))
    assert not torch.allclose(first, second)
    assert not any(m.training for m in backbone.modules())            # its mode restored
    model.eval()
    first, second = (_ladder_inputs(model, 0, 2, **inputs) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    quiet = get_lst_model(backbone, LSTConfig(reduction_factor=4)).train()
    first, second = (_ladder_inputs(quiet, 0, 2, **inputs) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)         # default: eval mode


def test_side_attention_dropout_reaches_every_side_attention():
    backbone = tiny_backbone("t5", task="lm")
    for rate in (0.0, 0.1):
        model = get_lst_model(backbone, LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=4,
                                                  side_attention_dropout=rate))
        attentions = [m for m in model.side_model.modules() if type(m).__name__ == "T5Attention"]
        assert attentions and all(m.dropout == rate for m in attentions)
    bert = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4,
                                                          side_attention_dropout=0.2))
    assert bert.side_model.config.attention_probs_dropout_prob == 0.2
    assert bert.side_model.config.hidden_dropout_prob == 0.1


def test_parameter_groups_decay_matrices_only_and_gates_on_request():
    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4))
    decay, no_decay = model.parameter_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    gate = model.ladders[0].gate_alphas
    assert any(p is gate for p in no_decay["params"])
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])              # biases, norms, gates
    grouped = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())

    optimizer = torch.optim.AdamW(model.parameter_groups(0.5), lr=0.1)
    with torch.no_grad():
        gate.fill_(1.0)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()                                    # no gradient: only decay moves a weight
    assert torch.equal(gate, before[id(gate)])
    assert not torch.equal(model.up.weight, before[id(model.up.weight)])
    assert torch.equal(model.up.bias, before[id(model.up.bias)])

    decaying_gates = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4,
                                                                    gate_weight_decay=True))
    decay, _ = decaying_gates.parameter_groups(0.1)
    assert any(p is decaying_gates.ladders[0].gate_alphas for p in decay["params"])


def test_folders_saved_before_the_last_layer_switch_load_as_normed(tmp_path):
    backbone = tiny_backbone("llama")
    get_lst_model(backbone, LSTConfig(reduction_factor=4)).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["ladder_last_layer"] == "raw"
    assert LSTModel.from_pretrained(backbone, tmp_path).config.ladder_last_layer == "raw"
    del meta["ladder_last_layer"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    assert LSTModel.from_pretrained(backbone, tmp_path).config.ladder_last_layer == "normed"


# ---- head_residual: the LM head reads the backbone's state plus the side network's ------------

@pytest.mark.numerics
@pytest.mark.parametrize("model_type, task", [("gpt2", "CAUSAL_LM"), ("llama", "CAUSAL_LM"),
                                              ("t5", "SEQ_2_SEQ_LM")])
def test_head_residual_starts_as_the_pretrained_model_and_trains_the_side_network(model_type,
                                                                                   task):
    backbone = tiny_backbone(model_type, task="lm")
    model = get_lst_model(backbone, LSTConfig(task_type=task, reduction_factor=4, dropout=0.0,
                                              head_residual=True))
    inputs = tiny_inputs(model_type, batch=2, length=6)
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        theirs = backbone(**inputs, labels=labels)
        ours = model.eval()(**inputs, labels=labels)
    torch.testing.assert_close(ours.logits, theirs.logits.float(), atol=1e-4, rtol=1e-4)
    with torch.no_grad():    # the states the training loop passes hold the final state too
        given = model(**inputs, labels=labels,
                      backbone_hidden_states=model.backbone_states(**inputs, labels=labels))
    torch.testing.assert_close(given.logits, ours.logits)
    model.train()
    model(**inputs, labels=labels).loss.backward()
    assert model.up.weight.grad.abs().sum() > 0          # the correction starts to learn
    assert all(p.grad is None for p in backbone.parameters())


def test_head_residual_needs_a_head():
    with pytest.raises(LSTConfigError, match="FEATURE_EXTRACTION has none"):
        get_lst_model(tiny_backbone("bert"), LSTConfig(task_type="FEATURE_EXTRACTION",
                                                       reduction_factor=4, head_residual=True))


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["bert", "llama", "t5"])
def test_head_residual_classifier_starts_as_a_probe_of_the_pooled_backbone_state(model_type):
    """SEQ_CLS: the classifier reads pool(backbone final state) + up(pool(side)), up at zero."""
    backbone = tiny_backbone(model_type)
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_CLS", num_labels=3, dropout=0.0,
                                              reduction_factor=4, head_residual=True)).eval()
    inputs = tiny_inputs(model_type, batch=2, length=6)      # row 0 padded
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        ours = model(**inputs, labels=labels)
        if model_type == "t5":                   # the decoder reads its own source
            final = backbone(**inputs, decoder_input_ids=model.shift_right(inputs["input_ids"]),
                             decoder_attention_mask=inputs["attention_mask"]).last_hidden_state
        else:
            final = backbone(**inputs).last_hidden_state
        probe = model.classifier(model._pool(final.float(), inputs["attention_mask"]))
        given = model(**inputs, labels=labels,
                      backbone_hidden_states=model.backbone_states(**inputs))
    torch.testing.assert_close(ours.logits, probe, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(given.logits, ours.logits)
    model.train()
    model(**inputs, labels=labels).loss.backward()
    assert model.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.numerics
def test_head_residual_token_classifier_reads_each_backbone_state_plus_the_correction():
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(task_type="TOKEN_CLS", num_labels=4, dropout=0.0,
                                              reduction_factor=4, head_residual=True)).eval()
    inputs = tiny_inputs("bert", batch=2, length=6)
    with torch.no_grad():
        ours = model(**inputs)
        probe = model.classifier(backbone(**inputs).last_hidden_state)
    torch.testing.assert_close(ours.logits, probe, atol=1e-5, rtol=1e-5)
