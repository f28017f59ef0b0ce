"""Mistakes a user can make get a typed error with one line that names the fix."""

import json

import pytest
import torch
from tiny_models import tiny_backbone, tiny_inputs

from laddertune import (
    BackboneMismatchError,
    CheckpointError,
    InputError,
    LSTConfig,
    LSTConfigError,
    LSTModel,
    MissingInputError,
    UnsupportedModelError,
    get_lst_model,
)
from laddertune.config import CONFIG_NAME, WEIGHTS_NAME


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def lst(model_type="bert", **config):
    return get_lst_model(tiny_backbone(model_type), LSTConfig(reduction_factor=4, **config))


def test_not_a_transformer():
    with pytest.raises(UnsupportedModelError) as err:
        get_lst_model(torch.nn.Linear(4, 4), LSTConfig())
    assert "AutoModel" in one_line(err)


def test_clip_model_with_two_towers_names_the_tower_classes():
    from transformers import CLIPConfig, CLIPModel
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         vocab_size=64),
                        vision_config=dict(hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           image_size=16, patch_size=4), projection_dim=16)
    with pytest.raises(UnsupportedModelError) as err:
        get_lst_model(CLIPModel(config), LSTConfig())
    assert "CLIPVisionModel" in one_line(err)


def test_task_the_family_cannot_do():
    with pytest.raises(UnsupportedModelError) as err:
        lst("bert", task_type="CAUSAL_LM")
    assert "SEQ_CLS" in one_line(err)


def test_causal_lm_on_a_model_without_head():
    with pytest.raises(UnsupportedModelError) as err:
        model = get_lst_model(tiny_backbone("llama", tie_word_embeddings=False),
                              LSTConfig(task_type="CAUSAL_LM", reduction_factor=4))
        inputs = tiny_inputs("llama")
        model(**inputs, labels=inputs["input_ids"])
    assert "AutoModelForCausalLM" in one_line(err)


@pytest.mark.parametrize("factor, hint", [(16, "heads"), (3, "divide"), (0, ">= 1")])
def test_reduction_factor_heads_cannot_split(factor, hint):
    with pytest.raises(LSTConfigError) as err:
        get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=factor))
    message = one_line(err)
    assert hint in message
    if factor:
        assert "use one of [1, 2, 4" in message  # 32 wide, 4 heads: r in 1, 2, 4, 8


def test_t5_head_size_must_divide():
    with pytest.raises(LSTConfigError) as err:
        get_lst_model(tiny_backbone("t5"), LSTConfig(reduction_factor=16))
    assert "heads" in one_line(err)


def test_side_layer_out_of_range():
    with pytest.raises(LSTConfigError) as err:
        lst("bert", side_layers=[1, 4])
    assert "0..3" in one_line(err)


def test_decoder_side_layers_only_for_encoder_decoder():
    with pytest.raises(LSTConfigError):
        lst("bert", decoder_side_layers=[1])


@pytest.mark.parametrize("field, value", [("task_type", "CLASSIFY"), ("gate", "open"),
                                          ("reduction_factor", True), ("num_labels", 2.5),
                                          ("prune_samples", 0), ("pooling", "max"),
                                          ("side_init", "zeros"), ("dropout", 1.5),
                                          ("side_layers", []), ("side_layers", [1, 1]),
                                          ("side_attention_dropout", -0.1),
                                          ("ladder_last_layer", "final"),
                                          ("backbone_dropout", "yes"), ("prune_seed", -1),
                                          ("gate_weight_decay", 1)])
def test_bad_config_values(field, value):
    with pytest.raises(LSTConfigError) as err:
        LSTConfig(**{field: value})
    one_line(err)


def test_missing_labels_when_loss_is_asked():
    model = lst()
    with pytest.raises(MissingInputError) as err:
        model(**tiny_inputs("bert"), return_loss=True)
    assert "labels" in one_line(err)


def test_label_out_of_range():
    model = lst(num_labels=3)
    with pytest.raises(InputError) as err:
        model(**tiny_inputs("bert"), labels=torch.tensor([0, 1, 2, 7]))
    assert "num_labels" in one_line(err)


def test_labels_of_wrong_shape():
    with pytest.raises(InputError) as err:
        lst()(**tiny_inputs("bert"), labels=torch.zeros(4, 8, dtype=torch.long))
    assert "one label per sequence" in one_line(err)


def test_vision_model_without_pixels():
    with pytest.raises(MissingInputError) as err:
        lst("vit")(input_ids=torch.ones(1, 4, dtype=torch.long))
    assert "pixel_values" in one_line(err)


@pytest.fixture
def saved(tmp_path):
    model = lst()
    model.save_pretrained(tmp_path)
    return tmp_path


def test_truncated_weights(saved):
    weights = saved / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), saved)
    assert "truncated" in one_line(err)


def test_weights_damaged_in_the_middle_fail_their_sha256(saved):
    weights = saved / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF          # still a readable safetensors file, wrong values
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), saved)
    assert "sha256" in one_line(err)


def test_corrupted_config(saved):
    (saved / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), saved)
    assert "corrupted" in one_line(err)


def test_config_that_save_pretrained_did_not_write(saved):
    (saved / CONFIG_NAME).write_text("{}")
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), saved)
    message = one_line(err)
    assert "lacks 'task_type'" in message and "architecture" not in message


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), tmp_path / "nowhere")
    one_line(err)


def test_backbone_with_other_weights(saved):
    with pytest.raises(BackboneMismatchError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert", seed=1), saved)
    assert "different weights" in one_line(err)


def test_backbone_with_other_architecture(saved):
    with pytest.raises(BackboneMismatchError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert", intermediate_size=48), saved)
    assert "architecture" in one_line(err)


def test_backbone_of_other_family(saved):
    with pytest.raises(BackboneMismatchError) as err:
        LSTModel.from_pretrained(tiny_backbone("roberta"), saved)
    assert "bert" in one_line(err)


@pytest.mark.numerics
def test_same_backbone_in_another_dtype_loads(saved):
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = LSTModel.from_pretrained(tiny_backbone("bert"), saved)(**inputs).logits
        model = LSTModel.from_pretrained(tiny_backbone("bert").to(torch.bfloat16), saved)
        assert next(model.parameters()).dtype == torch.float32  # side stays in full precision
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0.05, atol=0.02)


def test_backbone_with_a_merged_lora_is_rejected(tmp_path):
    """Same architecture, every other weight equal: one layer's attention changed."""
    model = get_lst_model(tiny_backbone("llama"), LSTConfig(reduction_factor=4))
    model.save_pretrained(tmp_path)
    changed = tiny_backbone("llama")
    with torch.no_grad():
        changed.layers[2].self_attn.q_proj.weight += 0.05 * torch.randn_like(
            changed.layers[2].self_attn.q_proj.weight)
    with pytest.raises(BackboneMismatchError):
        LSTModel.from_pretrained(changed, tmp_path)


def test_loading_details_do_not_count_as_another_backbone(tmp_path):
    """A pad token set on the config, or another attention kernel, is the same backbone."""
    model = get_lst_model(tiny_backbone("llama"), LSTConfig(reduction_factor=4))
    model.save_pretrained(tmp_path)
    backbone = tiny_backbone("llama")
    backbone.config.pad_token_id = 0
    backbone.config.eos_token_id = 5
    LSTModel.from_pretrained(backbone, tmp_path)


def test_unknown_forward_argument():
    with pytest.raises(InputError) as err:
        lst()(**tiny_inputs("bert"), label=torch.zeros(4, dtype=torch.long))
    assert "label" in one_line(err)


def test_float_labels_for_classification():
    with pytest.raises(InputError) as err:
        lst()(**tiny_inputs("bert"), labels=torch.zeros(4))
    assert "num_labels=1" in one_line(err)


def test_labels_as_a_list_and_int32_work():
    model = lst()
    assert model(**tiny_inputs("bert"), labels=[0, 1, 1, 0]).loss is not None
    assert model(**tiny_inputs("bert"), labels=torch.tensor([0, 1, 1, 0],
                                                            dtype=torch.int32)).loss is not None


def test_token_ids_outside_vocabulary():
    inputs = tiny_inputs("bert")
    inputs["input_ids"][0, 0] = 10_000
    with pytest.raises(InputError) as err:
        lst()(**inputs)
    assert "resize_token_embeddings" in one_line(err)


def test_causal_lm_labels_of_wrong_length():
    model = get_lst_model(tiny_backbone("llama", task="lm"),
                          LSTConfig(task_type="CAUSAL_LM", reduction_factor=4))
    inputs = tiny_inputs("llama")
    with pytest.raises(InputError) as err:
        model(**inputs, labels=inputs["input_ids"][:, :5])
    assert "one label per token" in one_line(err)


def test_generation_past_learned_positions():
    model = get_lst_model(tiny_backbone("gpt2", task="lm"),
                          LSTConfig(task_type="CAUSAL_LM", reduction_factor=4))
    with pytest.raises(InputError) as err:
        model.generate(input_ids=torch.ones(1, 60, dtype=torch.long), max_new_tokens=10)
    assert "64 positions" in one_line(err)


def test_weights_that_do_not_match_config(saved):
    meta = json.loads((saved / CONFIG_NAME).read_text())
    meta["reduction_factor"] = 2
    (saved / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        LSTModel.from_pretrained(tiny_backbone("bert"), saved)
    assert "does not match" in one_line(err)


def test_fingerprint_samples_stay_inside_large_matrices():
    """24,674,304 entries (T5-base's embedding): float32 positions would round past the end."""
    from laddertune.checkpoint import backbone_fingerprint

    stack = torch.nn.Embedding(32128, 768)
    fingerprint = backbone_fingerprint(tiny_backbone("bert").config, [stack])
    assert fingerprint["weight_samples"][-1] == stack.weight.reshape(-1)[-1].item()
