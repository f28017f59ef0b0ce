"""The side-network designs of later work, each an LSTConfig option (docs/design.md): shapes,
parameter counts, training only what the design trains, save and reload, on several families.
Also: a warm-up asked for is never 0 steps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import ALL_FAMILIES, SEQ2SEQ_FAMILIES, tiny_backbone, tiny_inputs

from laddertune import LSTConfig, LSTModel, get_lst_model
from laddertune import backbones as bb
from laddertune.app.options import TrainConfig, UsageError
from laddertune.app.trainer import warmup_steps
from laddertune.config import CONFIG_NAME
from laddertune.errors import InputError, LSTConfigError, UnsupportedModelError
from laddertune.side import Ladder, LowRankDown

# the LSTConfig fields of the designs here: folders saved before them load without them
DESIGN_FIELDS = ("head_gate", "head_gate_init", "up_init", "ladder_rank", "gate_per_channel",
                 "late_layers", "late_tuning", "late_lora_rank", "xladder_depth")


@pytest.mark.parametrize("ratio, total, expected", [
    (0.1, 8, 1),        # int(0.8) would be 0: the generation demo's short runs had no warm-up
    (0.1, 100, 10),
    (0.0, 100, 0),      # none asked for: none
    (0.5, 1, 1),
])
def test_a_warmup_asked_for_is_at_least_one_step(ratio, total, expected):
    assert warmup_steps(ratio, total) == expected


# ---- shared checks ------------------------------------------------------------------------------

def build(model_type, task="SEQ_CLS", **config):
    backbone = tiny_backbone(model_type, task="lm" if "LM" in task else "bare")
    torch.manual_seed(0)
    return backbone, get_lst_model(backbone, LSTConfig(task_type=task, num_labels=2,
                                                       reduction_factor=4, dropout=0.0, **config))


def labels_for(model_type, task, inputs) -> torch.Tensor:
    if "LM" in task:
        return inputs["input_ids"].clone()
    if task == "TOKEN_CLS":
        return inputs["input_ids"] % 2
    if "pixel_values" in inputs:
        return (inputs["pixel_values"][:, 0].mean(dim=(1, 2)) > 0).long()
    return inputs["input_ids"][:, 1] % 2


def trains_only_its_own_and_reloads(model_type, task, tmp_path, **config):
    """One step: the backbone gets no gradient and does not change, the design's parameters do;
    then save -> load gives the same outputs. Returns the model and its gradients."""
    backbone, model = build(model_type, task, **config)
    inputs = tiny_inputs(model_type, batch=4, length=6)
    labels = labels_for(model_type, task, inputs)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model.train()
    model(**inputs, labels=labels).loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    model.eval()
    with torch.no_grad():
        ours = model(**inputs, labels=labels).logits
    model.save_pretrained(tmp_path)
    loaded = LSTModel.from_pretrained(backbone, tmp_path)
    with torch.no_grad():
        theirs = loaded(**inputs, labels=labels).logits
    torch.testing.assert_close(theirs, ours)      # same weights, same inputs, same kernels
    assert all(getattr(loaded.config, name) == getattr(model.config, name)
               for name in DESIGN_FIELDS)
    return model, grads


def nonzero(grads, prefix) -> bool:
    return any(g.abs().sum() > 0 for name, g in grads.items() if name.startswith(prefix))


# ---- 1. output mixing, QST-style ---------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(ALL_FAMILIES))
def test_head_gate_trains_on_every_family(model_type, tmp_path):
    model, grads = trains_only_its_own_and_reloads(model_type, "SEQ_CLS", tmp_path,
                                                   head_gate=True, up_init="default")
    assert model.head_gate_logits.shape == (model.width,)
    assert nonzero(grads, "head_gate_logits") and nonzero(grads, "ladders.0.down.0")


@pytest.mark.parametrize("model_type, task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"),
                                              ("t5", "SEQ_2_SEQ_LM"), ("roberta", "TOKEN_CLS")])
def test_head_gate_mixes_before_lm_and_token_heads(model_type, task, tmp_path):
    model, grads = trains_only_its_own_and_reloads(model_type, task, tmp_path, head_gate=True)
    assert nonzero(grads, "head_gate_logits") and nonzero(grads, "up.weight")


def test_head_gate_starts_at_sigmoid_one_of_the_backbone_with_a_zero_up_projection():
    backbone, model = build("llama", "CAUSAL_LM", head_gate=True, up_init="zero")
    inputs = tiny_inputs("llama", batch=2, length=6)
    with torch.no_grad():
        final = backbone.model(**inputs).last_hidden_state                 # (b, t, d)
        expected = backbone.lm_head(torch.sigmoid(torch.tensor(1.0)) * final)
        ours = model.eval()(**inputs).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)   # one matmul, reordered
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert model.ladders[0].down[0].weight.grad.abs().sum() == 0      # zero up: no side gradient
    assert model.head_gate_logits.grad.abs().sum() > 0


def test_up_init_default_is_pytorchs_and_zero_is_zero():
    _, default = build("bert", up_init="default")
    _, zero = build("bert", up_init="zero")
    _, auto = build("bert")
    assert zero.up.weight.abs().sum() == 0
    assert default.up.weight.abs().max() > 0.05                         # kaiming-uniform
    # auto is the same start without head_residual (plateau.md: std 0.01 stalled the head)
    assert auto.up.weight.abs().max() > 0.05 and auto.up.bias.abs().max() > 0
    _, small = build("bert", up_init="small")           # auto's start before 2026-12-07
    assert 0 < small.up.weight.std() < 0.02 and small.up.bias.abs().sum() == 0
    assert auto.head_gate_logits is None


def test_head_gate_and_head_residual_exclude_each_other_and_need_a_head():
    with pytest.raises(LSTConfigError, match="turn one of them off"):
        LSTConfig(head_gate=True, head_residual=True)
    with pytest.raises(LSTConfigError, match="FEATURE_EXTRACTION has none"):
        build("bert", "FEATURE_EXTRACTION", head_gate=True)


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_head_gate_reads_the_final_state_from_given_states(model_type):
    backbone, model = build(model_type, head_gate=True)
    inputs = tiny_inputs(model_type, batch=2, length=6)
    last = len(model.stacks) - 1
    depth = len(bb.get_path(model.stacks[last], model.family.layers))
    assert model.ladder_inputs(last)[-1] == depth + 1          # what a cache stores: h too
    with torch.no_grad():
        given = model.eval()(**inputs, backbone_hidden_states=model.backbone_states(**inputs))
        torch.testing.assert_close(given.logits, model(**inputs).logits)   # same kernels


def test_a_folder_saved_before_the_designs_loads_as_today(tmp_path):
    backbone, model = build("bert")
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    for name in DESIGN_FIELDS:
        meta.pop(name)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    loaded = LSTModel.from_pretrained(backbone, tmp_path)
    assert all(getattr(loaded.config, name) == getattr(LSTConfig(), name)
               for name in DESIGN_FIELDS)


# ---- 2. ladders, QST-style: low rank, swish, LayerNorm; per-channel gates ------------------------

@pytest.mark.parametrize("model_type", sorted(ALL_FAMILIES))
def test_low_rank_ladders_with_per_channel_gates_train_on_every_family(model_type, tmp_path):
    model, grads = trains_only_its_own_and_reloads(
        model_type, "SEQ_CLS", tmp_path, ladder_rank=4, gate_per_channel=True,
        gate_temperature=1.0, gate_alpha_init=0.5)
    ladder = model.ladders[0]
    assert isinstance(ladder.down[1], LowRankDown) and ladder.down[1].inner.out_features == 4
    assert ladder.gate_alphas.shape == (len(ladder.kept_layers), model.side_width)
    assert nonzero(grads, "ladders.0.gate_alphas") and nonzero(grads, "ladders.0.down.1.inner")


def test_a_low_rank_ladder_reads_as_qst_writes_it():
    ladder = LowRankDown(width=32, rank=4, side_width=8)
    x = torch.randn(2, 3, 32)                                          # (b, t, d)
    expected = F.layer_norm(ladder.outer(F.silu(ladder.inner(x))), (8,),
                            ladder.norm.weight, ladder.norm.bias)
    torch.testing.assert_close(ladder(x), expected)
    assert ladder(x).shape == (2, 3, 8)


def test_per_channel_gates_mix_each_channel_by_its_own_alpha():
    ladder = Ladder(8, 4, [0, 1], temperature=1.0, alpha_init=0.0, learnable_gates=True,
                    per_channel_gates=True)
    with torch.no_grad():
        ladder.gate_alphas[0] = torch.tensor([-20.0, 20.0, 0.0, 0.0])  # ladder, side, 50/50
    side, states = torch.ones(1, 1, 4), [torch.zeros(1, 1, 8)] * 3
    down = ladder.down[1](states[1])                                   # (1, 1, 4)
    mixed = ladder.mix(0, side, states)
    torch.testing.assert_close(mixed[..., 0], down[..., 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[..., 1], side[..., 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[..., 2], (side[..., 2] + down[..., 2]) / 2)


def test_ladder_rank_is_checked():
    with pytest.raises(LSTConfigError, match="ladder_rank must be"):
        LSTConfig(ladder_rank=0)


# ---- 3. capacity decoupled from ladder parameters: a wider side network, low-rank ladders -------

def ladder_and_block_parameters(r: int, rank: int | None) -> tuple[int, int]:
    backbone = tiny_backbone("bert", hidden_size=128, intermediate_size=256)
    model = get_lst_model(backbone, LSTConfig(reduction_factor=r, ladder_rank=rank,
                                              side_init="random"))
    ladders = sum(p.numel() for p in model.ladders.parameters())
    blocks = sum(p.numel() for p in model.side_model.parameters())
    return ladders, blocks


def test_a_wider_side_network_with_low_rank_ladders_grows_its_blocks_not_its_ladders():
    d, k, n = 128, 16, 4                       # width, ladder rank, ladders (embeddings + 3 layers)
    for r in (8, 4, 2):
        s = d // r
        full, _ = ladder_and_block_parameters(r, None)
        low, _ = ladder_and_block_parameters(r, k)
        assert full == n * (d + 1) * s + 3          # + one scalar gate per side block
        assert low == n * ((d + 1) * k + (k + 3) * s) + 3
    full_8, blocks_8 = ladder_and_block_parameters(8, None)
    full_2, blocks_2 = ladder_and_block_parameters(2, None)
    low_8, _ = ladder_and_block_parameters(8, k)
    low_2, _ = ladder_and_block_parameters(2, k)
    assert full_2 / full_8 == pytest.approx(4, rel=0.01)       # full ladders: linear in d/r
    assert low_2 / low_8 < 1.5                                  # low rank: barely moves
    assert blocks_2 / blocks_8 > 10                             # the capacity: ~ (d/r)^2


# ---- 4. the late route: side blocks below, the top K layers trained ------------------------------

ONE_STACK_FAMILIES = sorted(set(ALL_FAMILIES) - set(SEQ2SEQ_FAMILIES))


@pytest.mark.parametrize("model_type", ONE_STACK_FAMILIES)
def test_late_route_trains_on_every_one_stack_family(model_type, tmp_path):
    model, grads = trains_only_its_own_and_reloads(model_type, "SEQ_CLS", tmp_path, late_layers=2)
    depth = len(model.late.blocks) + model.late.first_layer
    assert len(model.late.blocks) == 2 and model.late.first_layer == depth - 2
    assert max(model.kept_layers[0]) < depth - 2              # side blocks below the top K only
    assert nonzero(grads, "late.blocks") and nonzero(grads, "up.weight")


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "llama", "gpt2", "opt", "vit"])
def test_late_route_starts_as_the_backbone(model_type):
    """up starts at zero and the top layers are copies: the head reads the backbone's state."""
    backbone = tiny_backbone(model_type)
    model = get_lst_model(backbone, LSTConfig(task_type="FEATURE_EXTRACTION",
                                              reduction_factor=4, late_layers=2)).eval()
    inputs = tiny_inputs(model_type, batch=2, length=6)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).last_hidden_state,
                                   backbone(**inputs).last_hidden_state)   # same kernels


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_late_route_as_a_language_model_starts_from_the_pretrained_one(tuning, tmp_path):
    backbone = tiny_backbone("llama", task="lm")
    model, grads = trains_only_its_own_and_reloads("llama", "CAUSAL_LM", tmp_path,
                                                   late_layers=1, late_tuning=tuning)
    fresh = get_lst_model(backbone, LSTConfig(task_type="CAUSAL_LM", reduction_factor=4,
                                              late_layers=1, late_tuning=tuning)).eval()
    inputs = tiny_inputs("llama", batch=2, length=6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, backbone(**inputs).logits)
    trained = {n for n, p in fresh.named_parameters() if p.requires_grad and n.startswith("late")}
    if tuning == "lora":
        assert trained and all("lora_" in n for n in trained)
        assert nonzero(grads, "late.blocks.0.self_attn.q_proj.lora_b")   # B starts at 0, A waits
    else:
        assert "late.blocks.0.mlp.down_proj.weight" in trained
    out = fresh.generate(inputs["input_ids"], max_new_tokens=3)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3   # no cache: the prompt reruns


def test_late_route_costs_its_top_layers_in_trainable_parameters():
    _, plain = build("llama")
    _, late = build("llama", late_layers=2)
    layer = sum(p.numel() for p in plain.backbone.layers[-1].parameters())
    norm = sum(p.numel() for p in plain.backbone.norm.parameters())
    assert sum(p.numel() for p in late.late.parameters()) == 2 * layer + norm
    assert len(late.side_model.layers) < len(plain.side_model.layers)   # fewer side blocks


def test_late_route_refusals(tmp_path):
    with pytest.raises(UnsupportedModelError, match="encoder and a decoder"):
        build("t5", late_layers=1)
    with pytest.raises(LSTConfigError, match="use 1 to 3"):
        build("bert", late_layers=4)
    with pytest.raises(LSTConfigError, match="below the late route's top layers"):
        build("bert", late_layers=2, side_layers=[3])
    with pytest.raises(LSTConfigError, match="turn off head_residual"):
        LSTConfig(late_layers=2, head_gate=True)
    with pytest.raises(UsageError, match="late route"):
        TrainConfig(model="x", train=str(tmp_path / "t.csv"), cache_backbone=True,
                    lst_preset="late")
    backbone, model = build("bert", late_layers=2)
    inputs = tiny_inputs("bert", batch=2, length=6)
    with pytest.raises(InputError, match="late route"):
        model(**inputs, backbone_hidden_states=model.backbone_states(**inputs))


def test_the_late_preset_names_the_late_route_and_the_paper_stays(tmp_path):
    cfg = TrainConfig(model="x", train=str(tmp_path / "t.csv"), lst_preset="late")
    assert cfg.lst_config().late_layers == 2 and cfg.lst_config().late_tuning == "full"
    overridden = TrainConfig(model="x", train=str(tmp_path / "t.csv"), lst_preset="late",
                             lst={"late_layers": 1, "late_tuning": "lora"}).lst_config()
    assert (overridden.late_layers, overridden.late_tuning) == (1, "lora")
    assert LSTConfig.paper().late_layers == 0 and LSTConfig().late_layers == 0


# ---- 5. depth extension, xLadder: 2 delta side blocks on top, fed by the top delta layers --------

@pytest.mark.parametrize("model_type", sorted(ALL_FAMILIES))
def test_xladder_trains_on_every_family(model_type, tmp_path):
    model, grads = trains_only_its_own_and_reloads(model_type, "SEQ_CLS", tmp_path,
                                                   xladder_depth=2)
    for kept, ladder in zip(model.kept_layers, model.ladders):
        assert ladder.kept_layers == kept + [2, 2, 3, 3]      # 4 layers: the top 2, twice each
        assert len(ladder.down) == len(kept) + 5
    extra = len(model.ladders[0].kept_layers) - 1             # the last side block's ladder
    assert nonzero(grads, f"ladders.0.down.{extra + 1}")


def test_xladder_adds_2_delta_side_blocks_of_the_side_width():
    _, plain = build("llama", side_init="random")
    _, deeper = build("llama", side_init="random", xladder_depth=1)
    block = sum(p.numel() for p in plain.side_model.layers[0].parameters())
    ladder = sum(p.numel() for p in plain.ladders[0].down[1].parameters()) + 1    # + its gate
    assert len(deeper.side_model.layers) == len(plain.side_model.layers) + 2
    assert (sum(p.numel() for p in deeper.parameters())
            == sum(p.numel() for p in plain.parameters()) + 2 * (block + ladder))
    assert deeper.ladder_inputs() == plain.ladder_inputs()    # layer 3 was read already


def test_xladder_reads_what_the_ladders_read_from_given_states():
    backbone, model = build("bert", xladder_depth=2, side_layers=[0])
    assert model.ladder_inputs() == [0, 1, 3, 4]              # the top 2 layers' states too
    inputs = tiny_inputs("bert", batch=2, length=6)
    with torch.no_grad():
        given = model.eval()(**inputs, backbone_hidden_states=model.backbone_states(**inputs))
        torch.testing.assert_close(given.logits, model(**inputs).logits)


def test_xladder_depth_is_checked():
    with pytest.raises(LSTConfigError, match="deeper than this backbone's 4 layers"):
        build("bert", xladder_depth=5)
    with pytest.raises(LSTConfigError, match="set one of them to 0"):
        LSTConfig(xladder_depth=1, late_layers=1)
