"""The family registry (laddertune.backbones): one entry holds everything family-specific."""

import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_backbone
from transformers import AutoConfig, AutoModel

from laddertune.backbones import FAMILIES, max_positions

CORE = Path(__file__).parents[1] / "src" / "laddertune"


def _meta_model(model_type: str, **config):
    with torch.device("meta"):   # full-size position tables, no memory used
        return AutoModel.from_config(AutoConfig.for_model(model_type, **config))


@pytest.mark.parametrize(("model_type", "config", "expected"), [
    ("bert", {}, 512),
    ("roberta", dict(max_position_embeddings=514, pad_token_id=1), 512),  # counts from pad + 1
    ("mpnet", dict(max_position_embeddings=514, pad_token_id=1), 512),    # no entry: structure
    ("electra", {}, 512),
    ("distilbert", {}, 512),
    ("gpt2", {}, 1024),
    ("opt", dict(max_position_embeddings=2048), 2048),    # table of 2050 rows, offset 2
    ("bart", dict(max_position_embeddings=1024), 1024),
    ("clip_text_model", {}, 77),
    ("deberta-v2", dict(position_biased_input=True, max_position_embeddings=512), 512),
])
def test_max_positions_of_learned_absolute_positions(model_type, config, expected):
    assert max_positions(_meta_model(model_type, **config)) == expected


@pytest.mark.parametrize(("model_type", "config"), [
    ("llama", {}), ("qwen2", {}), ("mistral", {}), ("gpt_neox", {}), ("t5", {}),
    ("deberta-v2", dict(position_biased_input=False, relative_attention=True)),
    ("vit", {}),
])
def test_no_position_limit_for_rotary_relative_or_image_inputs(model_type, config):
    assert max_positions(_meta_model(model_type, **config)) is None


def test_max_positions_of_the_structure_matches_the_position_table():
    """An unlisted family reads its table: MPNet's rows minus its padding offset."""
    assert "mpnet" not in FAMILIES
    model = _meta_model("mpnet", max_position_embeddings=40, pad_token_id=1)
    assert model.embeddings.position_embeddings.num_embeddings == 40
    assert max_positions(model) == 38


def test_tiny_models_report_their_configured_limits():
    assert max_positions(tiny_backbone("gpt2")) == 64
    assert max_positions(tiny_backbone("opt")) == 64
    assert max_positions(tiny_backbone("llama")) is None


def test_no_model_type_tests_outside_the_registry():
    """Family-specific rules live in FAMILIES; the core never tests a model_type or class name."""
    pattern = re.compile(r"model_type\s*(==|!=|in\s*\()|__name__\s*==")
    offenders = [f"{path.name}:{n}" for path in CORE.glob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders
