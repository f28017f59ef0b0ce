"""Pruned side initialisation at real head sizes, for every family of the test zoo and for the
structures the shapes alone do not tell: fused q/k/v in a family's own layout, q/k norms one head
wide, token embeddings narrower than the model."""

import logging

import pytest
import torch
from tiny_models import ALL_FAMILIES, UNLISTED_FAMILIES, VISION_FAMILIES, VOCAB, tiny_inputs
from transformers import AutoConfig, AutoModel

from laddertune import LSTConfig, get_lst_model

R = 4            # heads of 32 -> side heads of 8
HEAD_DIM = 32
WIDTH = 64       # 2 heads of 32

# config keys of the tiny zoo, rescaled to heads of HEAD_DIM
_WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "word_embed_proj_dim")
_HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
              "decoder_attention_heads")
_FFN_KEYS = ("intermediate_size", "ffn_dim", "hidden_dim", "d_ff", "encoder_ffn_dim",
             "decoder_ffn_dim")
_DEPTH_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
               "n_layer")


def _real_heads(model_type: str, overrides: dict) -> dict:
    """The zoo's config with WIDTH // HEAD_DIM heads of HEAD_DIM dims (one key/value head),
    feed-forwards 2 * WIDTH wide and 2 layers."""
    config = dict(overrides)
    for key in config:
        if key in _WIDTH_KEYS:
            config[key] = WIDTH
        elif key in _HEAD_KEYS:
            config[key] = WIDTH // HEAD_DIM
        elif key in ("head_dim", "d_kv"):
            config[key] = HEAD_DIM
        elif key in _FFN_KEYS:
            config[key] = 2 * WIDTH
        elif key in _DEPTH_KEYS:
            config[key] = 2
        elif key == "num_key_value_heads":
            config[key] = 1
        elif key == "embedding_size":
            config[key] = WIDTH // 2   # ELECTRA: narrower than the model
    if model_type not in VISION_FAMILIES:
        config["vocab_size"] = VOCAB
    return config


# families with a structure the zoo lacks, at heads of HEAD_DIM
_LLAMA_SHAPE = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, intermediate_size=128, vocab_size=VOCAB)
EXTRA_FAMILIES = {
    "qwen3": dict(_LLAMA_SHAPE, head_dim=HEAD_DIM),          # q/k norms one head wide
    "gemma3_text": dict(_LLAMA_SHAPE, head_dim=HEAD_DIM),    # q/k norms one head wide
    "olmo2": _LLAMA_SHAPE,                                   # q/k norms as wide as q and k
    # q/k norms of one row per head; rotary pairs of adjacent dims (2j, 2j + 1)
    "cohere": dict(_LLAMA_SHAPE, use_qk_norm=True),
    "phi3": dict(_LLAMA_SHAPE, pad_token_id=0),              # [q | k | v], [gate | up] fused
    "bloom": dict(hidden_size=WIDTH, n_layer=2, n_head=2, vocab_size=VOCAB),  # (h, 3, d_h)
    # (h, 3, d_h); q/k norms one head wide, half of each head rotating
    "persimmon": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, qk_layernorm=True, vocab_size=VOCAB),
    "mpt": dict(d_model=WIDTH, n_layers=2, n_heads=2, vocab_size=VOCAB),      # [q | k | v]
    # [q | k | v] with one key/value head; (h, 3, d_h) without multi_query
    "gpt_bigcode": dict(n_embd=WIDTH, n_layer=2, n_head=2, vocab_size=VOCAB),
    "gpt_bigcode per-head": dict(n_embd=WIDTH, n_layer=2, n_head=2, vocab_size=VOCAB,
                                 multi_query=False),
    # query_key_value grouped per key/value head, in each of Falcon's three layouts
    "falcon": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                   vocab_size=VOCAB),                                       # multi-query
    "falcon per-head": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                            multi_query=False, vocab_size=VOCAB),
    "falcon grouped": dict(hidden_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4,
                           num_kv_heads=2, new_decoder_architecture=True, vocab_size=VOCAB),
    "opt": dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                word_embed_proj_dim=WIDTH // 2, vocab_size=VOCAB),           # narrow embedding
}
FAMILIES = {**{t: _real_heads(t, c) for t, c in {**ALL_FAMILIES, **UNLISTED_FAMILIES}.items()},
            **{f"{t} (extra)": c for t, c in EXTRA_FAMILIES.items()}}


def backbone_of(name: str):
    torch.manual_seed(0)
    model_type = name.split()[0]
    return AutoModel.from_config(AutoConfig.for_model(model_type, **FAMILIES[name])).eval()


def _inputs(name: str) -> dict:
    model_type = name.split()[0]
    return tiny_inputs(model_type if model_type in VISION_FAMILIES else "bert")


def _pruned(backbone, **config):
    return get_lst_model(backbone, LSTConfig(task_type="FEATURE_EXTRACTION", reduction_factor=R,
                                             side_init="magnitude", side_layers=[1], **config))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_starts_pruned_at_real_head_sizes(name, caplog):
    backbone = backbone_of(name)
    with caplog.at_level(logging.WARNING, logger="laddertune"):
        model = get_lst_model(backbone, LSTConfig(reduction_factor=R, num_labels=2))
    assert "start random" not in caplog.text
    assert model.prune_indices is not None
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs(name)).logits).all()


def _hidden(model):
    return model.prune_indices.hidden


def _stacked(rows: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """q, k, v of a [q | k | v] output, as Phi-3, MPT and multi-query GPT-BigCode slice it."""
    return rows.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])


def _grouped(rows: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """q, k, v of an output viewed as (kv_heads, heads // kv_heads + 2, head_dim), as Falcon
    does; with one head per group, as (heads, 3, head_dim), as BLOOM and GPT-BigCode do."""
    groups = heads // kv_heads
    grouped = rows.view(kv_heads, groups + 2, head_dim, *rows.shape[1:])
    return [grouped[:, :groups].flatten(0, 2), grouped[:, groups].flatten(0, 1),
            grouped[:, groups + 1].flatten(0, 1)]


@pytest.mark.parametrize(("name", "attention", "fused", "split", "heads", "kv_heads"), [
    ("phi3 (extra)", "layers.{}.self_attn", "qkv_proj", _stacked, 2, 1),
    ("mpt (extra)", "blocks.{}.attn", "Wqkv", _stacked, 2, 2),
    ("gpt_bigcode (extra)", "h.{}.attn", "c_attn", _stacked, 2, 1),
    ("bloom (extra)", "h.{}.self_attention", "query_key_value", _grouped, 2, 2),
    ("gpt_bigcode per-head (extra)", "h.{}.attn", "c_attn", _grouped, 2, 2),
    ("falcon (extra)", "h.{}.self_attention", "query_key_value", _grouped, 2, 1),
    ("falcon per-head (extra)", "h.{}.self_attention", "query_key_value", _grouped, 2, 2),
    ("falcon grouped (extra)", "h.{}.self_attention", "query_key_value", _grouped, 4, 2),
    ("persimmon (extra)", "layers.{}.self_attn", "query_key_value", _grouped, 2, 2),
])
def test_fused_qkv_keeps_q_k_v_rows_in_the_familys_layout(name, attention, fused, split, heads,
                                                          kv_heads):
    """The side's fused linear, split as the family's forward splits it at side width, is the
    backbone's split the same way, at the kept rows of q, k, v and the kept hidden columns."""
    from laddertune.backbones import get_path

    backbone = backbone_of(name)
    model = _pruned(backbone)
    full = get_path(get_path(backbone, attention.format(1)), fused)
    side = get_path(get_path(model.side_model, attention.format(0)), fused)
    head = model.prune_indices.heads[0, 1, 0]
    hidden = _hidden(model)
    for name_ in ("weight", "bias"):
        if getattr(full, name_) is None:
            continue
        full_parts = split(getattr(full, name_), heads, kv_heads, HEAD_DIM)
        side_parts = split(getattr(side, name_), heads, kv_heads, HEAD_DIM // R)
        for full_part, side_part, kept in zip(full_parts, side_parts, head):
            expected = full_part[kept]
            if name_ == "weight":
                expected = expected[:, hidden]
            assert torch.equal(side_part, expected), name_


def test_phi3_fused_gate_up_keeps_the_intermediate_in_both_halves():
    """Phi-3's gate_up_proj is [gate | up], as its forward chunks it."""
    backbone = backbone_of("phi3 (extra)")
    model = _pruned(backbone)
    block, side = backbone.layers[1], model.side_model.layers[0]
    hidden, ffn = _hidden(model), model.prune_indices.ffn[0, 1]
    gate, up = block.mlp.gate_up_proj.weight.chunk(2)
    side_gate, side_up = side.mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(side_gate, gate[ffn][:, hidden])
    assert torch.equal(side_up, up[ffn][:, hidden])
    assert torch.equal(side.mlp.down_proj.weight, block.mlp.down_proj.weight[hidden][:, ffn])
    o_proj = block.self_attn.o_proj.weight
    head = model.prune_indices.heads[0, 1, 0]
    assert torch.equal(side.self_attn.o_proj.weight, o_proj[hidden][:, head.o])


@pytest.mark.parametrize("name", ["qwen3 (extra)", "gemma3_text (extra)"])
def test_head_wide_qk_norms_keep_the_dims_every_head_keeps(name):
    """A norm one head wide serves every head: q and k keep the same dims in each head, and
    the side norm is the backbone's at those dims."""
    backbone = backbone_of(name)
    model = _pruned(backbone)
    attention, side = backbone.layers[1].self_attn, model.side_model.layers[0].self_attn
    head = model.prune_indices.heads[0, 1, 0]
    q_dims = head.q.view(2, 8) - HEAD_DIM * torch.arange(2)[:, None]
    assert torch.equal(q_dims[0], q_dims[1]) and torch.equal(head.k, q_dims[0])
    assert torch.equal(side.q_norm.weight, attention.q_norm.weight[q_dims[0]])
    assert torch.equal(side.k_norm.weight, attention.k_norm.weight[head.k])
    assert torch.equal(side.q_proj.weight, attention.q_proj.weight[head.q][:, _hidden(model)])


def test_head_wide_qk_norms_with_partial_rotary_share_the_dims_that_do_not_rotate():
    """Persimmon: half of each head rotates and LayerNorms one head wide normalise q and k.
    Every head keeps the same rotating pairs, and the same dims that do not rotate, chosen by
    their scores summed over heads; the norms' weights and biases keep those dims."""
    backbone = backbone_of("persimmon (extra)")
    model = _pruned(backbone)
    attention, side = backbone.layers[1].self_attn, model.side_model.layers[0].self_attn
    head = model.prune_indices.heads[0, 1, 0]
    q_dims = head.q.view(2, 8) - HEAD_DIM * torch.arange(2)[:, None]
    assert torch.equal(q_dims[0], q_dims[1]) and torch.equal(head.k.view(2, 8), head.q.view(2, 8))
    assert torch.equal(q_dims[0, :4], torch.tensor([0, 4, 8, 12]))    # pairs 0, 4 of 8
    assert (q_dims[0, 4:] >= HEAD_DIM // 2).all()                       # dims that do not rotate
    for norm in ("q_layernorm", "k_layernorm"):
        for kind in ("weight", "bias"):
            full = getattr(getattr(attention, norm), kind)
            assert torch.equal(getattr(getattr(side, norm), kind), full[q_dims[0]]), norm


def test_shared_head_dims_sum_the_scores_over_heads():
    """Without rotary embeddings a shared index is the top dims of the scores summed over heads."""
    from laddertune.prune import head_index

    q, k, v = torch.rand(8), torch.rand(8), torch.rand(8)            # 2 heads of 4
    head = head_index(q, k, v, head_dim=4, keep_per_head=2, shared=True)
    summed = (q * k * v).view(2, 4).sum(0)
    dims = torch.topk(summed, 2).indices.sort().values
    assert torch.equal(head.q, torch.cat([dims, dims + 4]))
    assert torch.equal(head.v, head.q)


def test_olmo2_qk_norms_as_wide_as_q_and_k_keep_their_rows():
    backbone = backbone_of("olmo2 (extra)")
    model = _pruned(backbone)
    attention, side = backbone.layers[1].self_attn, model.side_model.layers[0].self_attn
    head = model.prune_indices.heads[0, 1, 0]
    assert torch.equal(side.q_norm.weight, attention.q_norm.weight[head.q])
    assert torch.equal(side.k_norm.weight, attention.k_norm.weight[head.k])


@pytest.mark.parametrize(("name", "projection"), [("electra", "embeddings_project"),
                                                  ("opt (extra)", "decoder.project_in")])
def test_narrow_embeddings_rank_hidden_dims_by_their_projection(name, projection):
    """Token embeddings narrower than the model cannot rank its dims; the projection to the
    model width can: its output rows are the hidden dims."""
    from laddertune.backbones import get_path

    backbone = backbone_of(name)
    model = _pruned(backbone)
    weight = get_path(backbone, projection).weight                      # (d, e)
    assert weight.shape == (WIDTH, WIDTH // 2)
    expected = torch.topk(weight.abs().sum(1), WIDTH // R).indices.sort().values
    assert torch.equal(_hidden(model), expected)
    examples = [{**_inputs(name), "labels": torch.tensor([0, 1, 0, 1])}]
    fisher = get_lst_model(backbone, LSTConfig(reduction_factor=R, num_labels=2,
                                               side_init="fisher"), init_data=examples)
    assert fisher.prune_indices is not None


def test_cohere_per_head_norm_rows_and_interleaved_rotary_pairs():
    """Cohere pairs adjacent dims (2j, 2j + 1) for its rotary embedding: the side's rotary
    embedding on the kept dims of q and k equals the backbone's on the full heads, cut to those
    dims. Its q/k norms hold one row per head: each row keeps its head's dims."""
    from transformers.models.cohere.modeling_cohere import apply_rotary_pos_emb

    backbone = backbone_of("cohere (extra)")
    model = _pruned(backbone)
    attention, side = backbone.layers[1].self_attn, model.side_model.layers[0].self_attn
    head = model.prune_indices.heads[0, 1, 0]
    q_dims = head.q.view(2, 8) - HEAD_DIM * torch.arange(2)[:, None]
    # side pairs (0, 1), (2, 3), ... are backbone pairs 0, 4, 8, 12 of 16: the same frequencies
    assert torch.equal(q_dims[0], torch.tensor([0, 1, 8, 9, 16, 17, 24, 25]))
    assert torch.equal(side.q_norm.weight, attention.q_norm.weight.gather(1, q_dims))
    assert torch.equal(side.k_norm.weight, attention.k_norm.weight[:, head.k])

    torch.manual_seed(0)
    x, positions = torch.randn(1, 5, WIDTH), torch.tensor([[0, 1, 7, 30, 63]])

    def split(t, heads):                                       # (1, t, heads*dh) -> (1, h, t, dh)
        return t.view(1, 5, heads, -1).transpose(1, 2)

    q, k = split(attention.q_proj(x), 2), split(attention.k_proj(x), 1)
    full_q, full_k = apply_rotary_pos_emb(q, k, *backbone.rotary_emb(x, positions))
    side_q = split(torch.nn.functional.linear(x, attention.q_proj.weight[head.q]), 2)
    side_k = split(torch.nn.functional.linear(x, attention.k_proj.weight[head.k]), 1)
    got_q, got_k = apply_rotary_pos_emb(side_q, side_k, *model.side_model.rotary_emb(x, positions))
    torch.testing.assert_close(got_q, full_q[..., q_dims[0]])
    torch.testing.assert_close(got_k, full_k[..., head.k])
