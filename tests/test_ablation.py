"""The ablation switches: layer dropping per stack, learnable or fixed gates, side_init."""

import pytest
import torch
from tiny_models import tiny_backbone, tiny_inputs

from laddertune import LSTConfig, LSTConfigError, get_lst_model
from laddertune.config import default_side_layers

R = 4


def _bert(**config):
    return get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=R, **config))


def _n_trainable(model):
    return model.get_nb_trainable_parameters()[0]


def test_default_layer_dropping_is_the_papers():
    assert default_side_layers(12) == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert _bert().kept_layers == [[1, 2, 3]]


def test_three_kept_layers_give_three_side_blocks_four_ladders_three_gates():
    model = _bert(side_layers=[3, 0, 2])
    ladder = model.ladders[0]
    assert model.kept_layers == [[0, 2, 3]]
    assert len(model.side_model.encoder.layer) == 3
    assert len(ladder.down) == 4             # the embeddings + one per kept layer
    assert ladder.gate_alphas.shape == (3,)
    out = model(**tiny_inputs("bert"), labels=torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(out.loss)


def test_one_more_kept_layer_adds_one_side_block_one_ladder_one_gate():
    two, three = _bert(side_layers=[1, 2]), _bert(side_layers=[1, 2, 3])
    block = sum(p.numel() for p in three.side_model.encoder.layer[0].parameters())
    down = sum(p.numel() for p in three.ladders[0].down[0].parameters())
    assert _n_trainable(three) - _n_trainable(two) == block + down + 1


def test_fixed_gates_are_a_buffer_not_trained():
    learnable, fixed = _bert(gate="learnable"), _bert(gate="fixed")
    names = dict(fixed.named_parameters())
    assert "ladders.0.gate_alphas" not in names
    assert "ladders.0.gate_alphas" in dict(fixed.named_buffers())
    assert "ladders.0.gate_alphas" in fixed.state_dict()          # still saved
    assert _n_trainable(learnable) - _n_trainable(fixed) == 3     # one alpha per side block
    optimizer = torch.optim.AdamW(fixed.parameters(), lr=0.1)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(fixed.ladders[0].gate_alphas) not in in_optimizer

    inputs, labels = tiny_inputs("bert"), torch.tensor([0, 1, 0, 1])
    learnable_opt = torch.optim.AdamW(learnable.parameters(), lr=0.1)
    for model, opt in ((fixed, optimizer), (learnable, learnable_opt)):
        model(**inputs, labels=labels).loss.backward()
        opt.step()
    torch.testing.assert_close(fixed.ladders[0].gates(), torch.full((3,), 0.5))
    assert not torch.allclose(learnable.ladders[0].gates(), torch.full((3,), 0.5))


def test_fixed_gates_hold_sigmoid_of_alpha_over_temperature():
    model = _bert(gate="fixed", gate_alpha_init=0.2, gate_temperature=0.1)
    torch.testing.assert_close(model.ladders[0].gates(), torch.sigmoid(torch.full((3,), 2.0)))


def test_decoder_side_layers_are_independent_of_encoder_side_layers():
    model = get_lst_model(tiny_backbone("t5", task="lm"), LSTConfig(
        task_type="SEQ_2_SEQ_LM", reduction_factor=R, side_layers=[0, 1, 2],
        decoder_side_layers=[3]))
    assert model.kept_layers == [[0, 1, 2], [3]]
    assert len(model.side_model.encoder.block) == 3
    assert len(model.side_model.decoder.block) == 1
    assert [len(ladder.down) for ladder in model.ladders] == [4, 2]
    ids = tiny_inputs("t5")["input_ids"]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    with pytest.raises(LSTConfigError, match="decoder_side_layers"):
        _bert(decoder_side_layers=[1])


def test_side_init_switch():
    backbone = tiny_backbone("bert")

    def side_weight(side_init, seed):
        torch.manual_seed(seed)
        model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init=side_init))
        return model.side_model.encoder.layer[0].intermediate.dense.weight

    assert torch.equal(side_weight("magnitude", 0), side_weight("magnitude", 1))  # no randomness
    assert not torch.equal(side_weight("random", 0), side_weight("random", 1))
    assert not torch.equal(side_weight("random", 0), side_weight("magnitude", 0))


def _meta_t5(**shape):
    from transformers import T5Config, T5ForConditionalGeneration
    with torch.device("meta"):   # the checkpoint's shape, no memory used
        return T5ForConditionalGeneration(T5Config(vocab_size=32128, **shape))


@pytest.mark.parametrize(("shape", "expected"), [
    (dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12),       # t5-base
     [1, 2, 3, 5, 6, 7, 9, 10, 11]),
    (dict(d_model=1024, d_ff=4096, d_kv=64, num_layers=24, num_heads=16),      # t5-large
     list(range(1, 24, 2))),
    (dict(d_model=1024, d_ff=16384, d_kv=128, num_layers=24, num_heads=32),    # t5-3b
     [23]),
    (dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8),         # t5-small: none
     [1, 2, 3, 5]),
])
def test_default_layers_are_the_reference_codes_per_t5_checkpoint(shape, expected):
    """The reference scripts pick the layers per checkpoint, the same for both stacks."""
    model = get_lst_model(_meta_t5(**shape), LSTConfig(
        task_type="SEQ_2_SEQ_LM", reduction_factor=8, side_init="random"))
    assert model.kept_layers == [expected, expected]
    assert len(model.side_stacks[1].block) == len(expected)


def test_other_backbones_of_24_layers_drop_every_fourth():
    from transformers import BertConfig, BertModel
    with torch.device("meta"):
        backbone = BertModel(BertConfig(hidden_size=1024, num_hidden_layers=24,
                                        num_attention_heads=16, intermediate_size=4096))
    model = get_lst_model(backbone, LSTConfig(reduction_factor=8, side_init="random"))
    assert model.kept_layers == [default_side_layers(24)]
    assert 0 not in model.kept_layers[0] and 4 not in model.kept_layers[0]
