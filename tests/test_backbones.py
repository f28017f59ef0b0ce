"""The family registry (laddertune.backbones): one entry holds everything family-specific."""

import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_backbone
from transformers import AutoConfig, AutoModel

from laddertune import UnsupportedModelError
from laddertune.backbones import (
    FAMILIES,
    STACKED,
    Attention,
    BlockPlan,
    detect_family,
    max_positions,
    prune_plans,
)

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
    """Family-specific rules live in FAMILIES: neither the core nor the application compares a
    model_type or a class name with a family's name anywhere else."""
    pattern = re.compile(r"model_type\s*(==|!=|in\s*[(\[{\"'])|\.__name__\s*==")
    sources = [p for p in CORE.rglob("*.py") if p.name != "backbones.py"]
    assert any(p.parent.name == "app" for p in sources)
    offenders = [f"{path.name}:{n}" for path in sources
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


# ---- pruning plans read off the structure equal the plans once written by hand ------------------

def _attention(prefix, q="q_proj", k="k_proj", v="v_proj", o="out_proj"):
    return Attention(*(f"{prefix}.{name}" for name in (q, k, v, o)))


_BERT = BlockPlan("embeddings.word_embeddings",
                  (_attention("attention", "self.query", "self.key", "self.value",
                              "output.dense"),), ("intermediate.dense",), "output.dense")
_LLAMA = BlockPlan("embed_tokens", (_attention("self_attn", o="o_proj"),),
                   ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", rotary=True)
_T5_SELF = _attention("layer.0.SelfAttention", "q", "k", "v", "o")
_T5_CROSS = _attention("layer.1.EncDecAttention", "q", "k", "v", "o")
_BART = (BlockPlan("embed_tokens", (_attention("self_attn"),), ("fc1",), "fc2"),
         BlockPlan("embed_tokens", (_attention("self_attn"), _attention("encoder_attn")),
                   ("fc1",), "fc2"))


def _t5(wi):
    return (BlockPlan("embed_tokens", (_T5_SELF,), tuple(f"layer.1.DenseReluDense.{n}" for n in wi),
                      "layer.1.DenseReluDense.wo"),
            BlockPlan("embed_tokens", (_T5_SELF, _T5_CROSS),
                      tuple(f"layer.2.DenseReluDense.{n}" for n in wi),
                      "layer.2.DenseReluDense.wo"))


HAND_WRITTEN_PLANS = {
    "bert": (_BERT,), "roberta": (_BERT,),
    # ELECTRA's embeddings are narrower than the model: their projection ranks the hidden dims
    "electra": (BlockPlan("embeddings_project", _BERT.attentions, _BERT.ffn_in, _BERT.ffn_out),),
    "llama": (_LLAMA,), "qwen2": (_LLAMA,), "mistral": (_LLAMA,),
    "t5": _t5(["wi"]), "t5 gated": _t5(["wi_0", "wi_1"]),
    "bart": _BART, "mbart": _BART,
    "opt": (BlockPlan("decoder.embed_tokens", (_attention("self_attn"),), ("fc1",), "fc2"),),
    "distilbert": (BlockPlan("embeddings.word_embeddings",
                             (_attention("attention", "q_lin", "k_lin", "v_lin", "out_lin"),),
                             ("ffn.lin1",), "ffn.lin2"),),
    "clip_text_model": (BlockPlan("embeddings.token_embedding", (_attention("self_attn"),),
                                  ("mlp.fc1",), "mlp.fc2"),),
    "gpt2": (BlockPlan("wte", (Attention("attn.c_attn", "attn.c_attn", "attn.c_attn",
                                         "attn.c_proj", fused=STACKED),),
                       ("mlp.c_fc",), "mlp.c_proj", conv1d=True),),
}


def _plan_backbone(name):
    if name == "t5 gated":
        return tiny_backbone("t5", feed_forward_proj="gated-gelu")
    if name == "mbart":
        return AutoModel.from_config(AutoConfig.for_model(
            "mbart", d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4,
            vocab_size=64))
    return tiny_backbone(name)


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN_PLANS))
def test_derived_plan_equals_the_hand_written_one(name):
    backbone = _plan_backbone(name)
    assert prune_plans(backbone, detect_family(backbone)) == HAND_WRITTEN_PLANS[name]


def test_a_fused_qkv_without_a_layout_is_refused():
    """Shapes cannot tell GPT-2's stacked [q | k | v] from GPT-NeoX's per-head layout."""
    import dataclasses

    backbone = tiny_backbone("gpt2")
    family = dataclasses.replace(detect_family(backbone), fused_qkv=None)
    with pytest.raises(UnsupportedModelError, match="fused_qkv"):
        prune_plans(backbone, family)
