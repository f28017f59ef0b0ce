"""LSTConfig: every field documented, the paper preset."""

import dataclasses

import pytest
from tiny_models import tiny_backbone

from laddertune import LSTConfig, get_lst_model


def test_every_field_has_help_and_is_in_the_docstring():
    for field in dataclasses.fields(LSTConfig):
        assert field.metadata.get("help"), field.name
        assert f"        {field.name}:" in LSTConfig.__doc__, field.name


def test_paper_preset_sets_the_reference_codes_choices():
    config = LSTConfig.paper()
    assert (config.side_init, config.prune_samples, config.reduction_factor) == ("fisher", 1024, 8)
    assert config.ladder_last_layer == "raw" and config.backbone_dropout
    assert config.side_attention_dropout == 0.1 and config.dropout == 0.1
    assert (config.gate, config.gate_temperature, config.gate_alpha_init) == ("learnable", 0.1, 0)
    assert not config.gate_weight_decay and config.side_layers is None
    for name in ("side_init", "ladder_last_layer", "backbone_dropout", "side_attention_dropout"):
        assert name in LSTConfig.paper.__doc__
    defaults = LSTConfig()
    assert defaults.side_init == "magnitude" and not defaults.backbone_dropout
    assert defaults.side_attention_dropout == 0.0


def test_paper_preset_takes_overrides_and_builds_a_model():
    config = LSTConfig.paper(task_type="SEQ_2_SEQ_LM", reduction_factor=4, side_init="random")
    assert config.task_type == "SEQ_2_SEQ_LM" and config.reduction_factor == 4
    assert config.backbone_dropout
    model = get_lst_model(tiny_backbone("t5", task="lm"), config)
    assert model.side_model.config.dropout_rate == 0.1


def test_paper_preset_validates_like_the_constructor():
    from laddertune import LSTConfigError
    with pytest.raises(LSTConfigError):
        LSTConfig.paper(ladder_last_layer="final")
