"""Golden values of the ladder: gate mixing, projection shapes, trainable counts, API details."""

import math

import pytest
import torch
from tiny_models import tiny_backbone, tiny_inputs

from laddertune import LSTConfig, get_lst_model
from laddertune.config import default_side_layers
from laddertune.side import Ladder


@pytest.mark.numerics
def test_gate_mixing_by_hand():
    ladder = Ladder(width=4, side_width=2, kept_layers=[0, 2], temperature=0.1, alpha_init=0.0,
                    learnable_gates=True)
    with torch.no_grad():
        ladder.gate_alphas.copy_(torch.tensor([0.0, 0.2]))
        for proj in ladder.down:
            proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
            proj.bias.copy_(torch.tensor([0.5, -0.5]))
    hidden = [torch.full((1, 1, 4), float(i)) for i in range(4)]  # embeddings + 3 layer outputs
    side = torch.tensor([[[10.0, 20.0]]])
    # side block 1 reads backbone layer 2, i.e. hidden_states[3] = 3.0 everywhere
    mu = 1 / (1 + math.exp(-0.2 / 0.1))
    expected = mu * side + (1 - mu) * torch.tensor([[[3.0 + 0.5, 6.0 - 0.5]]])
    torch.testing.assert_close(ladder.mix(1, side, hidden), expected)
    torch.testing.assert_close(ladder.gates(), torch.tensor([0.5, mu]))
    torch.testing.assert_close(ladder.first(hidden[0]), torch.tensor([[[0.5, -0.5]]]))  # e = 0


def test_backbone_states_reach_the_ladder_only_inside_reading():
    """The states are passed for one call and never set on the ladder."""
    ladder = Ladder(width=4, side_width=2, kept_layers=[0], temperature=0.1, alpha_init=0.0,
                    learnable_gates=True)
    attributes = dict(vars(ladder))
    outer, inner = (torch.zeros(1, 1, 4),) * 2, (torch.ones(1, 1, 4),) * 2
    with ladder.reading(outer):
        with ladder.reading(inner):
            assert ladder.read()[0] is inner[0]
            assert vars(ladder) == attributes
        assert ladder.read()[0] is outer[0]
    with pytest.raises(RuntimeError):
        ladder.read()


def test_projection_shapes_and_initialisation():
    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4))
    ladder = model.ladders[0]
    assert [tuple(p.weight.shape) for p in ladder.down] == [(8, 32)] * 4  # d -> d/r
    assert tuple(model.up.weight.shape) == (32, 8)                        # d/r -> d
    assert all(torch.count_nonzero(p.bias) == 0 for p in ladder.down)
    assert 0.005 < ladder.down[1].weight.std().item() < 0.02               # N(0, 0.01)
    assert torch.equal(ladder.gates(), torch.full((3,), 0.5))              # alpha 0 -> mu 0.5


def test_trainable_count_by_hand():
    """Tiny BERT, d=32, ffn 64, r=4, 4 layers -> keeps [1, 2, 3]."""
    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4, num_labels=3))
    d, s, f, kept, labels = 32, 8, 16, 3, 3
    ladders = (kept + 1) * (d * s + s) + kept                    # down-projections + gates
    block = 4 * (s * s + s) + 2 * s + (s * f + f) + (f * s + s) + 2 * s  # attn, LN, FFN, LN
    head = (s * d + d) + (d * labels + labels)                   # up-projection + classifier
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == ladders + kept * block + head
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert total == backbone + trainable


def test_print_trainable_parameters_uses_peft_format(capsys):
    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4))
    model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    trainable, total = model.get_nb_trainable_parameters()
    assert line == (f"trainable params: {trainable:,d} || all params: {total:,d} || "
                    f"trainable%: {100 * trainable / total:.4f}")


def test_default_layer_dropping():
    assert default_side_layers(12) == [1, 2, 3, 5, 6, 7, 9, 10, 11]  # T5-base in the paper
    assert default_side_layers(24)[:4] == [1, 2, 3, 5]
    assert default_side_layers(1) == [0]


def test_backbone_is_held_not_registered():
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=4))
    backbone_params = {id(p) for p in backbone.parameters()}
    assert not backbone_params & {id(p) for p in model.parameters()}
    assert not any(key.startswith("backbone") for key in model.state_dict())
    assert all(p.requires_grad for p in backbone.parameters())  # user's flags untouched
    model.to(torch.float64)
    assert next(backbone.parameters()).dtype == torch.float64  # .to() moves both


def test_backbone_runs_in_eval_and_keeps_its_mode():
    backbone = tiny_backbone("bert").train()
    model = get_lst_model(backbone, LSTConfig(reduction_factor=4)).eval()
    inputs = tiny_inputs("bert")
    first = model(**inputs).logits
    second = model(**inputs).logits
    torch.testing.assert_close(first, second)  # no backbone dropout
    assert backbone.training and all(m.training for m in backbone.modules())


def test_backbone_output_has_no_autograd_graph():
    model = get_lst_model(tiny_backbone("llama"), LSTConfig(reduction_factor=4))
    seen = []
    model.ladders[0].down[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(**tiny_inputs("llama"))
    assert seen and seen[0].grad_fn is None and not seen[0].requires_grad


def test_deepcopy_and_pickle_carry_their_own_ladders(tmp_path):
    import copy

    model = get_lst_model(tiny_backbone("llama"), LSTConfig(reduction_factor=4)).eval()
    # before any forward: transformers adds unpicklable output-capture hooks of its own later
    torch.save(model, tmp_path / "model.pt")        # our ladder hooks pickle
    inputs = tiny_inputs("llama")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.ladders[0].down[1].weight.mul_(3)    # only the clone's ladder changes
        original, changed = model(**inputs).logits, clone(**inputs).logits
    assert not torch.allclose(original, changed)


@pytest.mark.numerics
def test_padding_is_ignored():
    """Right padding changes nothing for the sequence it pads (masks reach the side blocks)."""
    for model_type in ("bert", "llama", "gpt2", "t5", "bart"):
        model = get_lst_model(tiny_backbone(model_type), LSTConfig(reduction_factor=4)).eval()
        ids = torch.randint(3, 60, (1, 6))
        padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
        mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], 1).long()
        with torch.no_grad():
            alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            with_pad = model(input_ids=padded, attention_mask=mask).logits
        torch.testing.assert_close(with_pad, alone, rtol=1e-4, atol=1e-5, msg=model_type)


def test_from_pretrained_is_frozen_unless_trainable(tmp_path):
    from laddertune import LSTModel

    backbone = tiny_backbone("bert")
    get_lst_model(backbone, LSTConfig(reduction_factor=4, side_layers=[0, 2])).save_pretrained(
        tmp_path)
    frozen = LSTModel.from_pretrained(backbone, tmp_path)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.kept_layers == [[0, 2]] and frozen.config.side_layers == [0, 2]
    trainable = LSTModel.from_pretrained(backbone, tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in trainable.parameters())


def test_pooling_choices():
    """mean by default for text encoders; first and last read one token; mean skips padding."""
    from laddertune.model import LSTModel

    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4))
    hidden = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = {"mean": hidden[0, :3].mean(0), "first": hidden[0, 0], "last": hidden[0, 2]}
    assert model.family.pooling == "mean"
    for pooling, value in expected.items():
        model.config.pooling = pooling
        torch.testing.assert_close(LSTModel._pool(model, hidden, mask)[0], value)
    vision = get_lst_model(tiny_backbone("vit"), LSTConfig(reduction_factor=4))
    assert vision.family.pooling == "first"
