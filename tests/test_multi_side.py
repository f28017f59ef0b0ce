"""Several side networks on one backbone: one backbone pass serves them all, and each answers
as it would alone."""

import json
import re
from pathlib import Path

import pytest
import torch

from laddertune import LSTConfig, get_lst_model
from laddertune.errors import BackboneMismatchError, InputError, LSTWarning
from laddertune.model import DEFAULT_SIDE
from tests.tiny_models import tiny_backbone, tiny_inputs

pytestmark = pytest.mark.numerics   # equalities within a tolerance: rerun on every CPU kernel

# Each side alone runs on its own rows; together, on rows sliced from the whole batch's
# backbone states. The same numbers up to float summation order: 1e-5 on probabilities.
PROBS = dict(rtol=0, atol=1e-5)


def _classifiers(model_type="bert", task="bare"):
    backbone = tiny_backbone(model_type, task=task)
    torch.manual_seed(1)
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_CLS", num_labels=3,
                                              reduction_factor=4)).eval()
    model.add_side("b", LSTConfig(task_type="SEQ_CLS", num_labels=2, reduction_factor=8,
                                  ladder_last_layer="raw")).eval()
    model.add_side("c", LSTConfig(task_type="SEQ_CLS", num_labels=4, reduction_factor=4,
                                  side_layers=[1, 3], head_residual=True)).eval()
    return model


def _count_backbone_passes(model):
    calls = []
    handle = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_a_mixed_batch_runs_the_backbone_once_and_each_side_as_alone(model_type):
    model = _classifiers(model_type)
    inputs = tiny_inputs(model_type, batch=6)
    names = ["b", DEFAULT_SIDE, "c", "b", "c", DEFAULT_SIDE]
    calls, handle = _count_backbone_passes(model)
    with torch.no_grad():
        out = model(**inputs, side_names=names)
    handle.remove()
    assert len(calls) == 1
    assert out.rows == {"b": [0, 3], DEFAULT_SIDE: [1, 5], "c": [2, 4]}
    with torch.no_grad():
        for name, rows in out.rows.items():
            alone = model.side(name)(**{k: v[rows] for k, v in inputs.items()}).logits
            together = out.outputs[name].logits
            assert together.shape == alone.shape
            assert torch.equal(together.argmax(-1), alone.argmax(-1))
            torch.testing.assert_close(together.softmax(-1), alone.softmax(-1), **PROBS)


def test_several_names_per_row_share_one_backbone_pass():
    model = _classifiers()
    inputs = tiny_inputs("bert", batch=3)
    calls, handle = _count_backbone_passes(model)
    with torch.no_grad():
        out = model(**inputs, side_names=[["default", "b", "c"], ["c"], ["b", "default"]])
    handle.remove()
    assert len(calls) == 1
    assert out.rows == {"default": [0, 2], "b": [0, 2], "c": [0, 1]}
    assert set(out.logits_of_row(0)) == {"default", "b", "c"}
    with torch.no_grad():
        for name in model.side_names:
            model.set_side(name)
            alone = model(**inputs).logits          # the active side, on every row
            for row in out.rows[name]:
                torch.testing.assert_close(out.logits_of_row(row)[name].softmax(-1),
                                           alone[row].softmax(-1), **PROBS)


def _same_shape_classifiers(model_type, task_type="SEQ_CLS", sides=4, **design):
    """Side networks of one shape with different weights: `forward_sides` stacks them."""
    torch.manual_seed(0)
    config = dict(task_type=task_type, num_labels=3, reduction_factor=4, head_residual=True,
                  **design)
    model = get_lst_model(tiny_backbone(model_type), LSTConfig(**config)).eval()
    for i in range(1, sides):
        torch.manual_seed(i)
        side = model.add_side(f"s{i}", LSTConfig(**config)).eval()
        with torch.no_grad():               # weights unlike the default's, as training leaves
            for param in side.parameters():
                param.add_(0.1 * torch.randn_like(param))
    return model


def _stacked_calls(model, monkeypatch):
    """Counts the stacked (vmapped) computations forward_sides makes."""
    from laddertune import model as model_module
    calls = []
    real = model_module._stacked_outputs

    def counting(*args, **kwargs):
        calls.append(len(args[2]))          # the names it runs
        return real(*args, **kwargs)
    monkeypatch.setattr(model_module, "_stacked_outputs", counting)
    return calls


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("layout", ["same rows", "mixed rows", "several names per row"])
def test_side_networks_of_one_shape_run_stacked_and_answer_as_alone(model_type, layout,
                                                                     monkeypatch):
    model = _same_shape_classifiers(model_type)
    names = model.side_names
    inputs = tiny_inputs(model_type, batch=5)
    side_names = {"same rows": [names] * 5,
                  "mixed rows": ["s1", "default", "s3", "s1", "s2"],
                  "several names per row": [["s1", "s2"], ["default"], names, ["s2"], ["s3"]],
                  }[layout]
    calls = _stacked_calls(model, monkeypatch)
    with torch.no_grad():
        for _ in range(2):                      # the second reuses what the first worked out
            out = model(**inputs, side_names=side_names)
    assert calls == [len(out.rows)] * 2              # every side in one stacked computation
    with torch.no_grad():
        for name, rows in out.rows.items():
            alone = model.side(name)(**{k: v[rows] for k, v in inputs.items()}).logits
            together = out.outputs[name].logits
            assert together.shape == alone.shape
            assert torch.equal(together.argmax(-1), alone.argmax(-1))
            torch.testing.assert_close(together.softmax(-1), alone.softmax(-1), **PROBS)


@pytest.mark.parametrize("model_type", ["deberta-v2", "opt", "clip_text_model"])
def test_families_that_build_their_own_masks_stack_only_rows_every_side_reads(model_type,
                                                                              monkeypatch):
    """A mixed batch stacks through 4D masks built outside vmap; these families do not take
    them as their own (probed), so their mixed rows take the per-side loop, still exact."""
    model = _same_shape_classifiers(model_type, sides=3)
    inputs = tiny_inputs(model_type, batch=3)
    inputs["attention_mask"][1, 5:] = 0
    calls = _stacked_calls(model, monkeypatch)
    with torch.no_grad():
        for _ in range(2):                      # the second call reads the probe's answer
            mixed = model(**inputs, side_names=[["s1", "s2"], ["default"], ["s1"]])
        same = model(**inputs, side_names=[model.side_names] * 3)
    assert calls == [3]                                 # the same rows only
    with torch.no_grad():
        for out in (mixed, same):
            for name, rows in out.rows.items():
                alone = model.side(name)(**{k: v[rows] for k, v in inputs.items()}).logits
                torch.testing.assert_close(out.outputs[name].logits.softmax(-1),
                                           alone.softmax(-1), **PROBS)


def _assert_each_side_as_alone(model, inputs, out):
    with torch.no_grad():
        for name, rows in out.rows.items():
            alone = model.side(name)(**{k: v[rows] for k, v in inputs.items()}).logits
            assert torch.equal(out.outputs[name].logits.argmax(-1), alone.argmax(-1))
            torch.testing.assert_close(out.outputs[name].logits.softmax(-1), alone.softmax(-1),
                                       **PROBS)


@pytest.mark.parametrize("design", [{"ladder_rank": 3}, {"xladder_depth": 1}],
                         ids=["low-rank ladders", "xladder"])
def test_other_ladder_designs_run_stacked_and_answer_as_alone(design, monkeypatch):
    model = _same_shape_classifiers("llama", sides=3, **design)
    inputs = tiny_inputs("llama", batch=3)
    calls = _stacked_calls(model, monkeypatch)
    with torch.no_grad():
        for side_names in ([model.side_names] * 3, ["s2", "default", "s1"]):
            _assert_each_side_as_alone(model, inputs, model(**inputs, side_names=side_names))
    assert calls == [3, 3]


def test_stacked_weights_are_held_once_and_follow_later_changes():
    """A stacked call stacks the side networks' weights once; each side's own tensors then
    view them, so changes made in place show, and a tensor given new storage restacks."""
    model = _same_shape_classifiers("llama")
    inputs = tiny_inputs("llama", batch=2)
    with torch.no_grad():
        model(**inputs, side_names=[model.side_names] * 2)
    storages = {model.side(name).ladders[0].down[1].weight.untyped_storage().data_ptr()
                for name in model.side_names}
    assert len(storages) == 1                       # one (4, d/r, d) tensor, not four
    with torch.no_grad():
        model.side("s2").classifier.weight.mul_(3)                             # in place
        up = model.side("s1").up
        up.weight.data = up.weight + torch.randn_like(up.weight)               # new storage
        out = model(**inputs, side_names=[["s3", "s1", "s2"], ["s2", "s1"]])  # out of order
    _assert_each_side_as_alone(model, inputs, out)
    model.delete_side("s3")
    with torch.no_grad():
        _assert_each_side_as_alone(model, inputs,
                                   model(**inputs, side_names=[model.side_names] * 2))


def test_token_classifiers_of_one_shape_run_stacked_too(monkeypatch):
    model = _same_shape_classifiers("bert", task_type="TOKEN_CLS", sides=3)
    inputs = tiny_inputs("bert", batch=3)
    calls = _stacked_calls(model, monkeypatch)
    with torch.no_grad():
        out = model(**inputs, side_names=[["default", "s1"], ["s2"], ["s1", "s2"]])
        assert calls == [3]
        for name, rows in out.rows.items():
            alone = model.side(name)(**{k: v[rows] for k, v in inputs.items()})
            torch.testing.assert_close(out.outputs[name].logits.softmax(-1),
                                       alone.logits.softmax(-1), **PROBS)
            # the features a token head reads, too: the same sums in another order
            torch.testing.assert_close(out.outputs[name].last_hidden_state,
                                       alone.last_hidden_state, rtol=1e-4, atol=1e-5)


def test_sides_of_other_shapes_or_with_gradients_take_the_per_side_loop(monkeypatch):
    model = _classifiers()                  # three side networks, three shapes
    inputs = tiny_inputs("bert", batch=3)
    calls = _stacked_calls(model, monkeypatch)
    with torch.no_grad():
        model(**inputs, side_names=[model.side_names] * 3)
    assert calls == []
    same = _same_shape_classifiers("bert", sides=2)
    calls = _stacked_calls(same, monkeypatch)
    out = same(**inputs, side_names=[same.side_names] * 3)     # autograd on: no stacking
    assert calls == [] and out.outputs["s1"].logits.requires_grad


def test_set_side_picks_what_forward_and_generate_run():
    backbone = tiny_backbone("gpt2", task="lm")
    torch.manual_seed(0)
    model = get_lst_model(backbone, LSTConfig(task_type="CAUSAL_LM")).eval()
    torch.manual_seed(1)
    other = model.add_side("other", LSTConfig(task_type="CAUSAL_LM", reduction_factor=4)).eval()
    with torch.no_grad():
        for module in other.modules():          # a side network clearly unlike the default
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.5)
    ids = tiny_inputs("gpt2", batch=2)["input_ids"]
    default_tokens = model.generate(ids, max_new_tokens=5)
    model.set_side("other")
    assert model.active_side == "other"
    assert torch.equal(model.generate(ids, max_new_tokens=5), other.generate(ids, max_new_tokens=5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, other(ids).logits)
    model.set_side(DEFAULT_SIDE)
    assert torch.equal(model.generate(ids, max_new_tokens=5), default_tokens)


def test_generate_side_names_rows_equal_each_side_alone():
    """A generate task in a mixed forward: its next-token logits are the ones it has alone."""
    backbone = tiny_backbone("gpt2", task="lm")
    model = get_lst_model(backbone, LSTConfig(task_type="CAUSAL_LM")).eval()
    model.add_side("cls", LSTConfig(task_type="SEQ_CLS", num_labels=2)).eval()
    inputs = tiny_inputs("gpt2", batch=4)
    with torch.no_grad():
        out = model(**inputs, side_names=[["default", "cls"]] * 4)
        alone = model(**inputs).logits
    assert torch.equal(out.outputs["default"].logits.argmax(-1), alone.argmax(-1))
    torch.testing.assert_close(out.outputs["default"].logits.softmax(-1), alone.softmax(-1),
                               **PROBS)


def test_saved_sides_load_onto_one_backbone_and_the_state_dict_stays_the_default(tmp_path):
    model = _classifiers()
    model.side("b").save_pretrained(tmp_path / "b")
    keys = set(model.state_dict())
    server = get_lst_model(model.backbone, LSTConfig(task_type="SEQ_CLS", num_labels=3,
                                                     reduction_factor=4))
    loaded = server.load_side("task-b", tmp_path / "b")
    assert loaded.backbone is server.backbone
    assert server.side_names == [DEFAULT_SIDE, "task-b"]
    assert set(model.state_dict()) == keys          # extra sides are not this model's weights
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        torch.testing.assert_close(server(**inputs, side_names=["task-b"] * 4)
                                   .outputs["task-b"].logits, model.side("b")(**inputs).logits)
    server.delete_side("task-b")
    assert server.side_names == [DEFAULT_SIDE]


def test_loading_refuses_another_backbone_and_warns_on_another_dtype(tmp_path):
    model = _classifiers()
    model.side("b").save_pretrained(tmp_path / "b")
    stranger = get_lst_model(tiny_backbone("bert", seed=5),
                             LSTConfig(task_type="SEQ_CLS", num_labels=3))
    with pytest.raises(BackboneMismatchError) as err:
        stranger.load_side("b", tmp_path / "b")
    assert "\n" not in str(err.value)
    config = tmp_path / "b" / "lst_config.json"
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "backbone_dtype": "bfloat16"}))
    with pytest.warns(LSTWarning, match="bfloat16.*float32"):
        model.load_side("b16", tmp_path / "b")


def test_bad_side_names_are_refused():
    model = _classifiers()
    inputs = tiny_inputs("bert", batch=2)
    for names, match in ((["nope", "b"], "no side network named 'nope'"),
                         (["b"], "one entry per row"), (["b", []], "names no side network")):
        with pytest.raises(InputError, match=match):
            model(**inputs, side_names=names)
    with pytest.raises(InputError, match="taken"):
        model.add_side("b", LSTConfig(task_type="SEQ_CLS"))
    with pytest.raises(InputError, match="cannot be deleted"):
        model.delete_side(DEFAULT_SIDE)


def test_the_serving_docs_python_example_runs(tmp_path, monkeypatch, capsys):
    docs = Path(__file__).parent.parent / "docs" / "serving.md"
    block = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "serving.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "['default', 'sentiment', 'sentiment-again']" in out
    assert "'default': torch.Size([2, 5])" in out and "'sentiment': torch.Size([2, 3])" in out
