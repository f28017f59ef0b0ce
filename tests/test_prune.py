"""Side initialisation by structural pruning (laddertune.prune)."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_backbone, tiny_inputs
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from laddertune import LSTConfig, LSTConfigError, MissingInputError, get_lst_model
from laddertune.backbones import get_path
from laddertune.prune import fisher_importance

R = 4          # width 32 -> 8; heads of 8 -> 2 dims
KEPT = [1, 3]  # side block k <-> backbone layer KEPT[k]; layer 0 is not kept

# Each family's linears: module path in a block -> (row index, column index).
# "q"/"k"/"v"/"o" are the head indices of attention number a (0 self, 1 cross); Conv1D is
# transposed.
_BERT = {"attention.self.query": ("q0", "hidden"), "attention.self.key": ("k0", "hidden"),
         "attention.self.value": ("v0", "hidden"), "attention.output.dense": ("hidden", "o0"),
         "intermediate.dense": ("ffn", "hidden"), "output.dense": ("hidden", "ffn")}
_LLAMA = {"self_attn.q_proj": ("q0", "hidden"), "self_attn.k_proj": ("k0", "hidden"),
          "self_attn.v_proj": ("v0", "hidden"), "self_attn.o_proj": ("hidden", "o0"),
          "mlp.gate_proj": ("ffn", "hidden"), "mlp.up_proj": ("ffn", "hidden"),
          "mlp.down_proj": ("hidden", "ffn")}
_T5_SELF = {"layer.0.SelfAttention.q": ("q0", "hidden"),
            "layer.0.SelfAttention.k": ("k0", "hidden"),
            "layer.0.SelfAttention.v": ("v0", "hidden"),
            "layer.0.SelfAttention.o": ("hidden", "o0")}
_T5_ENC = {**_T5_SELF, "layer.1.DenseReluDense.wi": ("ffn", "hidden"),
           "layer.1.DenseReluDense.wo": ("hidden", "ffn")}
_T5_DEC = {**_T5_SELF, "layer.1.EncDecAttention.q": ("q1", "hidden"),
           "layer.1.EncDecAttention.k": ("k1", "hidden"),
           "layer.1.EncDecAttention.v": ("v1", "hidden"),
           "layer.1.EncDecAttention.o": ("hidden", "o1"),
           "layer.2.DenseReluDense.wi": ("ffn", "hidden"),
           "layer.2.DenseReluDense.wo": ("hidden", "ffn")}
_BART_ENC = {"self_attn.q_proj": ("q0", "hidden"), "self_attn.k_proj": ("k0", "hidden"),
             "self_attn.v_proj": ("v0", "hidden"), "self_attn.out_proj": ("hidden", "o0"),
             "fc1": ("ffn", "hidden"), "fc2": ("hidden", "ffn")}
_BART_DEC = {**_BART_ENC, "encoder_attn.q_proj": ("q1", "hidden"),
             "encoder_attn.k_proj": ("k1", "hidden"), "encoder_attn.v_proj": ("v1", "hidden"),
             "encoder_attn.out_proj": ("hidden", "o1")}
_GPT2 = {"attn.c_attn": ("qkv0", "hidden"), "attn.c_proj": ("hidden", "o0"),
         "mlp.c_fc": ("ffn", "hidden"), "mlp.c_proj": ("hidden", "ffn")}
_MPNET = {"attention.attn.q": ("q0", "hidden"), "attention.attn.k": ("k0", "hidden"),
          "attention.attn.v": ("v0", "hidden"), "attention.attn.o": ("hidden", "o0"),
          "intermediate.dense": ("ffn", "hidden"), "output.dense": ("hidden", "ffn")}
# DeBERTa's relative-position projections meet q and k: they keep the q/k rows
_DEBERTA = {"attention.self.query_proj": ("q0", "hidden"),
            "attention.self.key_proj": ("k0", "hidden"),
            "attention.self.value_proj": ("v0", "hidden"),
            "attention.self.pos_key_proj": ("q0", "hidden"),
            "attention.self.pos_query_proj": ("q0", "hidden"),
            "attention.output.dense": ("hidden", "o0"),
            "intermediate.dense": ("ffn", "hidden"), "output.dense": ("hidden", "ffn")}
_VIT = {"attention.q_proj": ("q0", "hidden"), "attention.k_proj": ("k0", "hidden"),
        "attention.v_proj": ("v0", "hidden"), "attention.o_proj": ("hidden", "o0"),
        "mlp.fc1": ("ffn", "hidden"), "mlp.fc2": ("hidden", "ffn")}
_CLIP = {"self_attn.q_proj": ("q0", "hidden"), "self_attn.k_proj": ("k0", "hidden"),
         "self_attn.v_proj": ("v0", "hidden"), "self_attn.out_proj": ("hidden", "o0"),
         "mlp.fc1": ("ffn", "hidden"), "mlp.fc2": ("hidden", "ffn")}
# GPT-NeoX fuses q, k, v per head: rows [q_h | k_h | v_h] for every head h
_NEOX = {"attention.query_key_value": ("qkv_per_head0", "hidden"),
         "attention.dense": ("hidden", "o0"),
         "mlp.dense_h_to_4h": ("ffn", "hidden"), "mlp.dense_4h_to_h": ("hidden", "ffn")}
LINEARS = {"bert": [_BERT], "llama": [_LLAMA], "t5": [_T5_ENC, _T5_DEC],
           "bart": [_BART_ENC, _BART_DEC], "gpt2": [_GPT2], "mpnet": [_MPNET],
           "deberta-v2": [_DEBERTA], "vit": [_VIT], "clip_vision_model": [_CLIP],
           "gpt_neox": [_NEOX], "gemma": [_LLAMA]}
HEAD_DIM = 8   # every tiny model: width 32, heads of 8


def _index(kind, indices, stack, layer, width):
    if kind == "hidden":
        return indices.hidden
    if kind == "ffn":
        return indices.ffn[stack, layer]
    head = indices.heads[stack, layer, int(kind[-1])]
    if kind.startswith("qkv_per_head"):
        rows = []
        for h in range(width // HEAD_DIM):
            start = 3 * HEAD_DIM * h
            for part, kept in enumerate((head.q, head.k, head.v)):
                dims = kept.view(width // HEAD_DIM, -1)[h] - HEAD_DIM * h   # dims inside head h
                rows.append(start + part * HEAD_DIM + dims)
        return torch.cat(rows)
    if kind.startswith("qkv"):   # GPT-2's fused c_attn: q, k, v stacked along the outputs
        return torch.cat([head.q, head.k + width, head.v + 2 * width])
    return getattr(head, kind[0])


def _hidden_cut(tensor, side_shape, indices):
    """Cut every dim that shrank with the hidden index (norms, position tables)."""
    for dim, (size, side_size) in enumerate(zip(tensor.shape, side_shape)):
        if size != side_size:
            tensor = tensor.index_select(dim, indices.hidden)
    return tensor


@pytest.mark.parametrize("model_type", sorted(LINEARS))
def test_every_side_weight_is_the_backbone_submatrix_at_the_chosen_indices(model_type):
    backbone = tiny_backbone(model_type)
    config = LSTConfig(task_type="FEATURE_EXTRACTION", reduction_factor=R, side_init="magnitude",
                       side_layers=KEPT,
                       decoder_side_layers=KEPT if model_type in ("t5", "bart") else None)
    model = get_lst_model(backbone, config)
    indices, width, layers_path = model.prune_indices, model.width, model.family.layers
    assert len(indices.hidden) == width // R
    checked = 0
    for s, (stack, side_stack) in enumerate(zip(model.stacks, model.side_stacks)):
        linears = LINEARS[model_type][s]
        blocks = get_path(stack, layers_path)
        for k, layer in enumerate(KEPT):
            twins = dict(blocks[layer].named_parameters())
            for name, side_param in get_path(side_stack, layers_path)[k].named_parameters():
                path, kind = name.rsplit(".", 1)
                if path in linears:
                    row_kind, col_kind = linears[path]
                    rows = _index(row_kind, indices, s, layer, width)
                    cols = _index(col_kind, indices, s, layer, width)
                    expected = twins[name]
                    if model_type == "gpt2" and kind == "weight":   # Conv1D stores (in, out)
                        expected = expected[cols][:, rows]
                    elif kind == "weight":
                        expected = expected[rows][:, cols]
                    else:
                        expected = expected[rows]
                elif "relative_attention_bias" in name:   # T5: copied whole from block 0
                    expected = dict(blocks[0].named_parameters())[name]
                else:                                     # norms
                    expected = _hidden_cut(twins[name], side_param.shape, indices)
                assert torch.equal(side_param, expected), name
                checked += 1
        for name, side_param in side_stack.named_parameters():   # final norms, positions
            if not name.startswith(layers_path + "."):
                twin = dict(stack.named_parameters())[name]
                assert torch.equal(side_param, _hidden_cut(twin, side_param.shape, indices)), name
                checked += 1
    assert checked == sum(1 for _ in model.side_model.parameters())


def test_magnitude_needs_no_data_and_picks_the_largest_embedding_columns():
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="magnitude"))
    embedding = backbone.embeddings.word_embeddings.weight
    expected = torch.topk(embedding.abs().sum(0), 32 // R).indices.sort().values
    assert torch.equal(model.prune_indices.hidden, expected)


def _lm_examples(n=3, length=6):
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": ids[None], "attention_mask": torch.ones(1, length, dtype=torch.long),
             "labels": ids[None]}
            for ids in torch.randint(3, 64, (n, length), generator=generator)]


def _direct_fisher(backbone, examples):
    """Sum over examples of squared gradients, the plain way (.backward on a copy)."""
    backbone = copy.deepcopy(backbone).eval()
    fisher = {name: torch.zeros_like(p) for name, p in backbone.named_parameters()}
    for example in examples:
        backbone.zero_grad()
        backbone(**example).loss.backward()
        for name, p in backbone.named_parameters():
            if p.grad is not None:
                fisher[name] += p.grad ** 2
    return fisher


def test_fisher_indices_equal_a_direct_computation():
    torch.manual_seed(0)
    backbone = tiny_backbone("llama", task="lm")
    examples = _lm_examples()
    model = get_lst_model(backbone, LSTConfig(task_type="CAUSAL_LM", reduction_factor=R,
                                              side_init="fisher", side_layers=KEPT),
                          init_data=examples)
    fisher = _direct_fisher(backbone, examples)
    got = model.prune_indices

    hidden = torch.topk(fisher["model.embed_tokens.weight"].sum(0), 8).indices.sort().values
    assert torch.equal(got.hidden, hidden)

    layer = "model.layers.3."
    row_l1 = {name: fisher[layer + name + ".weight"].double().sum(1)
              for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                           "mlp.gate_proj", "mlp.up_proj")}
    ffn = torch.topk(row_l1["mlp.gate_proj"] * row_l1["mlp.up_proj"], 16).indices.sort().values
    assert torch.equal(got.ffn[0, 3], ffn)

    # 4 query heads share 2 key/value heads of 8 dims, 2 kept per head. Rotary: q and k keep
    # backbone pair 0 (dims 0 and 4) in every head, the one whose frequency side pair 0 has.
    head = got.heads[0, 3, 0]
    assert torch.equal(head.q, torch.tensor([0, 4, 8, 12, 16, 20, 24, 28]))
    assert torch.equal(head.k, torch.tensor([0, 4, 8, 12]))
    # v keeps its own 2 largest rows per key/value head; query head h reads group h // 2
    v_dims = torch.topk(row_l1["self_attn.v_proj"].view(2, 8), 2).indices.sort(1).values
    assert torch.equal(head.v, (v_dims + torch.tensor([[0], [8]])).flatten())
    o_cols = v_dims.repeat_interleave(2, 0) + 8 * torch.arange(4)[:, None]
    assert torch.equal(head.o, o_cols.flatten())


def test_non_rotary_heads_share_one_index_scored_by_q_k_v():
    """BERT, magnitude: dim j of a head scores |q_j| |k_j| |v_j| (row L1); q, k, v, o share it."""
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="magnitude",
                                              side_layers=KEPT))
    attention = backbone.encoder.layer[3].attention.self

    def row_l1(linear):
        return linear.weight.abs().sum(1, dtype=torch.float64).view(4, 8)   # (heads, d_head)

    score = row_l1(attention.query) * row_l1(attention.key) * row_l1(attention.value)
    dims = torch.topk(score, 2).indices.sort(1).values
    rows = (dims + 8 * torch.arange(4)[:, None]).flatten()
    head = model.prune_indices.heads[0, 3, 0]
    for kept in head:
        assert torch.equal(kept, rows)


def test_rotary_side_head_rotates_kept_dims_at_the_backbones_frequencies():
    """Llama, r = 2: side heads of 4 dims (2 rotary pairs) from backbone heads of 8 (4 pairs).

    The side model's own rotary embedding, applied to the kept dims of the backbone's q and k,
    equals the backbone's rotary embedding applied to full q and k, then cut to the kept dims.
    So the side attention scores are the backbone's, summed over the kept pairs only.
    """
    torch.manual_seed(0)
    backbone = tiny_backbone("llama")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=2, side_init="magnitude"))
    attention = backbone.layers[2].self_attn
    head = model.prune_indices.heads[0, 2, 0]
    assert torch.equal(head.q.view(4, 4)[0], torch.tensor([0, 2, 4, 6]))  # pairs 0 and 2 of 0-3
    x = torch.randn(1, 5, 32)
    positions = torch.tensor([[0, 1, 7, 30, 63]])

    def split(t, heads):                                       # (1, t, heads*dh) -> (1, h, t, dh)
        return t.view(1, 5, heads, -1).transpose(1, 2)

    q, k = split(attention.q_proj(x), 4), split(attention.k_proj(x), 2)        # d_head 8
    cos, sin = backbone.rotary_emb(x, positions)                               # (1, 5, 8)
    full_q, full_k = apply_rotary_pos_emb(q, k, cos, sin)
    side_q = split(F.linear(x, attention.q_proj.weight[head.q]), 4)            # d_head 4
    side_k = split(F.linear(x, attention.k_proj.weight[head.k]), 2)
    side_cos, side_sin = model.side_model.rotary_emb(x, positions)             # (1, 5, 4)
    got_q, got_k = apply_rotary_pos_emb(side_q, side_k, side_cos, side_sin)
    dims = head.k[:4]                                                          # dims in a head
    torch.testing.assert_close(got_q, full_q[..., dims])
    torch.testing.assert_close(got_k, full_k[..., dims])
    # the rule matters: pairs 0 and 1 (dims 0, 1, 4, 5) rotate at the wrong frequency
    wrong = torch.tensor([0, 1, 4, 5])
    wrong_q, _ = apply_rotary_pos_emb(q[..., wrong], k[..., wrong], side_cos, side_sin)
    assert not torch.allclose(wrong_q, full_q[..., wrong])


def test_fisher_leaves_backbone_weights_grads_and_modes_untouched():
    backbone = tiny_backbone("t5", task="lm").train()
    backbone.encoder.block[0].layer[0].SelfAttention.q.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    flags = {name: p.requires_grad for name, p in backbone.named_parameters()}
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in _lm_examples()]
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=R,
                                              side_init="fisher"), init_data=examples)
    assert model.prune_indices is not None
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in backbone.parameters())
    assert flags == {name: p.requires_grad for name, p in backbone.named_parameters()}
    assert all(module.training for module in backbone.modules())


def test_fisher_for_classification_uses_labels_and_prune_samples():
    """A bare BERT has no head: a fixed random head makes the importance depend on the labels."""
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="random"))
    inputs = tiny_inputs("bert", batch=4)
    embedding = backbone.embeddings.word_embeddings.weight

    def importance(labels, samples=4):
        data = [{**inputs, "labels": labels}]   # one batch of 4, split into examples of 1
        return fisher_importance(model, data, samples)[embedding]

    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert importance(zeros).sum() > 0
    assert not torch.equal(importance(zeros), importance(ones))
    # with prune_samples=2 the labels of the two examples left out of the sample do not count
    from laddertune.prune import sample_examples
    numbered = [{**inputs, "labels": torch.arange(4)}]
    sampled = [int(e["labels"]) for e in sample_examples(numbered, 2, model.config.prune_seed)]
    left_out = torch.tensor([i not in sampled for i in range(4)])
    torch.testing.assert_close(importance(zeros, samples=2),
                               importance(left_out.long(), samples=2))
    assert not torch.allclose(importance(zeros), importance(left_out.long()))


def test_fisher_without_init_data_raises():
    with pytest.raises(MissingInputError, match="init_data"):
        get_lst_model(tiny_backbone("bert"), LSTConfig(side_init="fisher"))


def test_default_falls_back_to_random_on_unsupported_families_but_explicit_raises(caplog):
    from transformers import AutoConfig, AutoModel

    # CodeGen's qkv_proj interleaves q, k and v in model-parallel groups, a layout not listed
    backbone = AutoModel.from_config(AutoConfig.for_model(
        "codegen", n_embd=32, n_layer=4, n_head=4, rotary_dim=4, vocab_size=64))
    with caplog.at_level(logging.WARNING, logger="laddertune"):
        model = get_lst_model(backbone, LSTConfig(reduction_factor=R))
    assert model.config.side_init == "magnitude"
    assert model.prune_indices is None and "start random" in caplog.text
    with pytest.raises(LSTConfigError, match="side_init='random'"):
        get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="magnitude"))
    bert = tiny_backbone("bert")
    generic = get_lst_model(bert, LSTConfig(reduction_factor=R, side_blocks="generic"))
    assert generic.prune_indices is None
    with pytest.raises(LSTConfigError, match="side_init='random'"):
        get_lst_model(bert, LSTConfig(reduction_factor=R, side_blocks="generic",
                                      side_init="fisher"), init_data=[])


def test_t5_base_shape_trains_the_papers_share_of_parameters():
    """T5-base, r = 8, layers [1,2,3,5,6,7,9,10,11] in both stacks: the paper's 1.74%."""
    with torch.device("meta"):
        backbone = T5ForConditionalGeneration(T5Config(   # t5-base's shape, no memory used
            d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12, vocab_size=32128))
    kept = [1, 2, 3, 5, 6, 7, 9, 10, 11]
    model = get_lst_model(backbone, LSTConfig(
        task_type="SEQ_2_SEQ_LM", reduction_factor=8, side_layers=kept,
        decoder_side_layers=kept, side_init="random"))
    trainable, total = model.get_nb_trainable_parameters()
    share = 100 * trainable / (total - trainable)   # of the backbone, as the paper counts
    assert abs(share - 1.74) < 0.2
    assert len(model.side_stacks[1].block) == 9


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_default_side_init_falls_back_when_rotary_heads_cannot_be_pruned(model_type, caplog):
    """Head size 8 and r = 8 leave side heads of one dim: no rotary pair to keep."""
    backbone = tiny_backbone(model_type)
    with caplog.at_level(logging.WARNING, logger="laddertune"):
        model = get_lst_model(backbone, LSTConfig(reduction_factor=8))
    assert model.prune_indices is None
    warnings = [r for r in caplog.records if "start random" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert torch.isfinite(model(**tiny_inputs(model_type)).logits).all()
    for side_init in ("magnitude", "fisher"):
        with pytest.raises(LSTConfigError, match="side_init='random'") as err:
            get_lst_model(backbone, LSTConfig(reduction_factor=8, side_init=side_init),
                          init_data=[{**tiny_inputs(model_type), "labels": torch.ones(4).long()}])
        assert "\n" not in str(err.value) and "reduction_factor" in str(err.value)


def test_a_failed_pruning_leaves_the_side_network_as_built(monkeypatch):
    """Values are computed before any is copied: a late failure leaves no half-pruned side."""
    from laddertune import prune
    from laddertune.errors import UnsupportedModelError

    backbone = tiny_backbone("bert")
    torch.manual_seed(0)
    random_side = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="random"))

    def fail(model, indices):
        raise UnsupportedModelError("a side parameter has no backbone twin")

    monkeypatch.setattr(prune, "pruned_values", fail)
    torch.manual_seed(0)
    model = get_lst_model(backbone, LSTConfig(reduction_factor=R))
    for (name, value), expected in zip(model.state_dict().items(),
                                       random_side.state_dict().values()):
        assert torch.equal(value, expected), name


def test_gpt_neox_side_heads_keep_fused_rows_and_partial_rotary_frequencies():
    """GPT-NeoX, half of each head rotating, r = 2: side heads of 4 dims, 2 of them rotating.

    The side query_key_value keeps, per head, its q, k and v rows; the side rotary embedding on
    them equals the backbone's on the full head, cut to the kept dims (rotating pair 0 at the
    same frequency, then dims that do not rotate).
    """
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_rope

    torch.manual_seed(0)
    backbone = tiny_backbone("gpt_neox", rotary_pct=0.5)
    model = get_lst_model(backbone, LSTConfig(reduction_factor=2, side_init="magnitude",
                                              side_layers=[2]))
    attention = backbone.layers[2].attention
    side_attention = model.side_model.layers[0].attention
    head = model.prune_indices.heads[0, 2, 0]
    dims = head.q.view(4, 4) - 8 * torch.arange(4)[:, None]              # (heads, 4) in a head
    assert torch.equal(dims[:, :2], torch.tensor([[0, 2]] * 4))          # rotating pair 0
    assert (dims[:, 2:] >= 4).all()                                      # dims that do not rotate
    x = torch.randn(1, 5, 32)
    positions = torch.tensor([[0, 1, 7, 30, 63]])

    def split(qkv, head_size):                     # (1, t, h * 3 * dh) -> 3 x (1, h, t, dh)
        return qkv.view(1, 5, 4, 3 * head_size).transpose(1, 2).chunk(3, dim=-1)

    q, k, _ = split(attention.query_key_value(x), 8)
    full_q, full_k = neox_rope(q, k, *backbone.rotary_emb(x, positions))
    fused = attention.query_key_value
    rows = _index("qkv_per_head0", model.prune_indices, 0, 2, 32)
    assert torch.equal(side_attention.query_key_value.bias, fused.bias[rows])
    side_q, side_k, _ = split(F.linear(x, fused.weight[rows], fused.bias[rows]), 4)
    got_q, got_k = neox_rope(side_q, side_k, *model.side_model.rotary_emb(x, positions))
    for h in range(4):
        torch.testing.assert_close(got_q[:, h], full_q[:, h][..., dims[h]])
        torch.testing.assert_close(got_k[:, h], full_k[:, h][..., dims[h]])


def test_vision_hidden_dims_are_ranked_by_the_patch_projection():
    backbone = tiny_backbone("vit")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="magnitude"))
    projection = backbone.embeddings.patch_embeddings.projection.weight   # (d, 3, 4, 4)
    expected = torch.topk(projection.abs().sum((1, 2, 3)), 32 // R).indices.sort().values
    assert torch.equal(model.prune_indices.hidden, expected)


def test_unlisted_families_prune_from_their_structure():
    """MPNet (encoder, relative bias) and Gemma (rotary, grouped-query) have no entry."""
    from laddertune.backbones import FAMILIES

    for model_type in ("mpnet", "gemma"):
        assert model_type not in FAMILIES
        model = get_lst_model(tiny_backbone(model_type), LSTConfig(reduction_factor=R))
        assert model.prune_indices is not None, model_type


def test_fisher_examples_are_a_seeded_uniform_sample_of_all_of_init_data():
    """The reference shuffles its loader: the sample reaches past the first prune_samples."""
    from laddertune.prune import sample_examples

    data = [{"input_ids": torch.arange(10)[:, None] + 3, "labels": torch.arange(10)}]

    def drawn(seed):
        return sorted(int(e["labels"]) for e in sample_examples(data, 3, seed))

    assert drawn(0) == drawn(0) and len(set(drawn(0))) == 3
    counts = torch.zeros(10)
    for seed in range(300):
        counts[drawn(seed)] += 1
    assert counts.min() > 50 and counts.max() < 130          # 90 each if uniform
    everything = sample_examples(data, 20, 0)                # fewer than asked: all, shuffled
    assert sorted(int(e["labels"]) for e in everything) == list(range(10))
    assert [int(e["labels"]) for e in everything] != list(range(10))


def test_fisher_uses_the_sampled_examples_and_prune_seed():
    from laddertune.prune import sample_examples

    backbone = tiny_backbone("bert")
    embedding = backbone.embeddings.word_embeddings.weight
    inputs = tiny_inputs("bert", batch=8)
    data = [{**inputs, "labels": torch.tensor([0, 1] * 4)}]

    def importance(seed, examples=data, samples=2):
        model = get_lst_model(backbone, LSTConfig(reduction_factor=R, side_init="random",
                                                  prune_seed=seed))
        return fisher_importance(model, examples, samples)[embedding]

    torch.testing.assert_close(importance(0), importance(0, sample_examples(data, 2, 0)))
    assert not torch.allclose(importance(0), importance(1))
