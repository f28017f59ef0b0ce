"""Side-network initialisation by structural pruning of the backbone, as the LST paper does.

The side blocks are the backbone's own block class at width d/r, so every side parameter has a
backbone twin of the same name. Which linear of a block is q, k, v, o or the feed-forward is read
off the module structure (`backbones.block_plan`). Pruning keeps, for each dimension of each
twin, a set of indices, chained so the side network is a consistent narrow copy of the backbone:

    hidden  d/r of the d model dims, ranked by the column L1 importance of the token embedding
            ("the embedding chooses the kept hidden dimensions"; for images the out-channels of
            the patch projection; for token embeddings narrower than the model, as in ELECTRA
            and OPT-350m, the output rows of their projection to the model width). One index
            for the whole model:
            every block's input and output dims, its norms, the stacks' final norms and position
            tables, and (encoder-decoder models share one embedding) cross-attention inputs.
    heads   per attention module: every head is kept, d_head/r dims inside each, chosen for two
            circuits. q and k share one index (their dot product pairs dims), v and the
            columns of W_o share another (o reads what v writes). Without rotary embeddings both
            are the same importance-chosen index: dim j of a head scores q_j * k_j * v_j, the
            row L1 importances. With grouped-query attention the dims are chosen per key/value
            head, its query heads' scores summed, and each query head (and its W_o columns)
            uses its key/value head's dims.
            Rotary families (Llama, Qwen2, Mistral, Gemma) fix q and k: the side rotary
            embedding is rebuilt for head size d_s = d_head/r, so side pair i (dims i, i + d_s/2,
            rotate_half convention) rotates at theta^(-2i/d_s) = theta^(-2ir/d_head), the
            frequency of backbone pair i*r and no other. q and k keep dims {i*r} then
            {i*r + d_head/2}, i = 0..d_s/2 - 1, so every side pair is a backbone pair at its own
            frequency and the pruned q.k is exactly the backbone's sum over those pairs. v (and
            W_o's columns) keep the d_s dims of largest v row importance per key/value head.
            Families that pair adjacent dims (2j, 2j + 1) (Cohere, GLM) keep backbone pairs
            i*r the same way: dims {2ir, 2ir + 1}.
            Exact for the default, linear and llama3 rope types, whose frequencies depend on
            the base frequency only (yarn, dynamic and longrope also depend on the head size).
            Where only the first rot dims of a head rotate (GPT-NeoX: a quarter), the side
            head's first int(d_s * rot/d_head) dims keep pairs the same way, at stride
            rot / that, and the rest are the backbone's non-rotating dims of largest q_j * k_j.
            A fused q/k/v linear keeps the same rows in its layout: [q | k | v] (GPT-2, MPT, and
            Phi-3 with k and v of the key/value heads' size) or, for each key/value head, its
            query heads then its k and v ([q_h | k_h | v_h] for each head h in GPT-NeoX, BLOOM;
            grouped in Falcon). DeBERTa's relative-position projections, which meet q and k,
            keep their rows. Norms of q and k keep q's and k's rows where they are as wide
            (OLMo 2); where one norm a head wide serves every head (Qwen3, Gemma 3), q and k
            keep the same dims in every head, their scores summed over heads, and the norm
            keeps those dims; a norm with a row per head (Cohere) keeps each head's dims.
    ffn     d_ff/r intermediate units, ranked by the row L1 importance of the input linear
            (the product of the two for gated feed-forwards; Phi-3 fuses them as [gate | up],
            whose rows keep the index in both halves).

    side W_q = W_q[q, hidden]    side W_k = W_k[k, hidden]    side W_v = W_v[v, hidden]
    side W_o = W_o[hidden, o]    side W_in = W_in[ffn, hidden]    side W_out = W_out[hidden, ffn]
    side norm = norm[hidden]           biases follow their weight's rows
    T5's and MPNet's relative position biases (buckets x heads) are copied whole.

Importance of a weight W, elementwise:
    magnitude   |W|. Needs no data.
    fisher      sum over examples of (dL/dW)^2 (empirical Fisher), examples one at a time.
A row's score is the L1 norm of its importances (an embedding column's, for the hidden dims).
Importances are non-negative and summed, so the scores are accumulated directly: one vector per
weight is kept, never a second copy of the backbone.

Ladders, gates, the up-projection and the task head are untouched (they start fresh).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import backbones as bb
from .errors import LSTConfigError, MissingInputError, UnsupportedModelError

logger = logging.getLogger(__name__)


def plans_for(model) -> tuple[bb.BlockPlan, ...]:
    """The pruning plan of an LSTModel's backbone, one per stack (`backbones.prune_plans`).

    Raises:
        UnsupportedModelError: the structure cannot be read, the side blocks are not native, or
            the side heads cannot keep the backbone's rotary frequencies.
    """
    if any(p.is_meta for p in model.backbone.parameters()):
        raise UnsupportedModelError("the backbone's weights are on the meta device (not loaded)")
    if model.side_blocks != "native":
        raise UnsupportedModelError(
            f"generic side blocks have no backbone twin to prune from "
            f"({model.backbone.config.model_type})")
    plans = bb.prune_plans(model.backbone, model.family)
    config = model.backbone.config
    for stack_index, plan in enumerate(plans):
        if plan.rotary:   # the side head size must pair with the backbone's frequencies
            head_dim = _head_dim(config, model.width, stack_index)
            keep = head_dim // model.config.reduction_factor
            rotary_dims(head_dim, keep, rotary_fraction(config), plan.rotary_interleaved)
    return plans


# ---- importance ---------------------------------------------------------------------------------

def ranked_weights(model) -> dict[nn.Parameter, int]:
    """The backbone weights whose scores choose indices, each with the axis it scores (its L1
    norm sums the other axes): the token embedding's model dims (or an image model's patch
    projection's out-channels) and the output rows of the attention and feed-forward linears of
    every kept layer."""
    plans = plans_for(model)
    embedding = bb.get_path(model.stacks[0], plans[0].embedding)
    axis = 1 if isinstance(embedding, nn.Embedding) else 0   # (vocab, d) or (d, c, p, p)
    if embedding.weight.shape[axis] != model.width:
        raise UnsupportedModelError(
            f"the input embedding is {embedding.weight.shape[axis]} wide, not the model width "
            f"{model.width}, so it cannot rank the hidden dims")
    weights = {embedding.weight: axis}
    for stack, kept, plan in zip(model.stacks, model.kept_layers, plans):
        blocks = bb.get_path(stack, model.family.layers)
        for layer in kept:
            paths = [*plan.ffn_in]
            for attention in plan.attentions:
                paths += [attention.q, attention.k, attention.v]
            for path in paths:
                weights[bb.get_path(blocks[layer], path).weight] = 1 if plan.conv1d else 0
    return weights


def _other_axes(tensor: torch.Tensor, axis: int) -> list[int]:
    return [dim for dim in range(tensor.dim()) if dim != axis]


def magnitude_importance(weights: dict[nn.Parameter, int]) -> dict[nn.Parameter, torch.Tensor]:
    """Scores from |W|: the L1 norm of each entry of the scored axis, keyed by the parameter."""
    return {p: _l1_along(p.detach(), axis) for p, axis in weights.items()}


def _l1_along(weight: torch.Tensor, axis: int, rows: int = 4096) -> torch.Tensor:
    """|W| summed over every axis but `axis`, in float64, a slice of `rows` at a time along a
    summed axis: |W| of a whole embedding table, and its float64 copy, would be two more
    copies of the largest weight while the model loads."""
    others = _other_axes(weight, axis)
    if not others:
        return weight.abs().sum(others, dtype=torch.float64)
    return sum(part.abs().sum(others, dtype=torch.float64)
               for part in weight.split(rows, dim=others[0]))


def fisher_importance(model, init_data: Iterable[dict], num_samples: int,
                      weights: dict[nn.Parameter, int] | None = None
                      ) -> dict[nn.Parameter, torch.Tensor]:
    """Scores from the empirical Fisher: sum over `num_samples` examples (batch 1) of (dL/dW)^2,
    L1-summed per entry of each weight's scored axis as it accumulates. The examples are a
    random sample of `init_data` (`sample_examples`, seeded by `config.prune_seed`), as the
    reference code takes them from a shuffled loader.

    The backbone runs in eval mode (no dropout) with autograd. Gradients come from
    `torch.autograd.grad`, so no `.grad` field is written and the weights are never touched; the
    backbone's `requires_grad` flags and train/eval modes are restored afterwards.

    The loss L is the task loss the side network will be trained on, as far as the frozen
    backbone can compute it:
      * CAUSAL_LM / SEQ_2_SEQ_LM: the backbone's own LM loss (its LM head, or its tied input
        embedding as the head for a bare model).
      * SEQ_CLS / TOKEN_CLS: a bare backbone has no trained head, so L is the classification
        loss of a *fixed random* linear head (seed 0, std d^-0.5) on the backbone's last hidden
        state, pooled as the LST model pools (CLS or last non-padding token). The head is a
        proxy: it makes the gradients depend on the labels and the task's pooling, which a
        label-free loss would not.

    Raises:
        MissingInputError: init_data is None or yields no examples.
        LSTConfigError: FEATURE_EXTRACTION has no task loss to rank weights by.
    """
    task = model.config.task_type
    if init_data is None:
        raise MissingInputError(
            "side_init='fisher' needs examples: pass init_data=[{'input_ids': ..., "
            "'labels': ...}, ...] to get_lst_model, or use side_init='magnitude'")
    if task == "FEATURE_EXTRACTION":
        raise LSTConfigError("side_init='fisher' needs a task loss and FEATURE_EXTRACTION has "
                             "none; use side_init='magnitude'")
    backbone = model.backbone
    weights = ranked_weights(model) if weights is None else weights
    params = list(weights)
    importance = {p: torch.zeros(p.shape[axis], dtype=torch.float64, device=p.device)
                  for p, axis in weights.items()}   # one score per entry of the scored axis
    flags = [p.requires_grad for p in params]
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    seen = 0
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for example in sample_examples(init_data, num_samples, model.config.prune_seed):
                loss = _task_loss(model, example)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for p, grad in zip(params, grads):
                    if grad is not None:
                        squared = grad.detach().float().pow(2)   # float: bf16 squares underflow
                        importance[p] += squared.sum(_other_axes(squared, weights[p]),
                                                     dtype=torch.float64)
                seen += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
    if seen == 0:
        raise MissingInputError("init_data yielded no examples; pass at least one example "
                                "(a dict with input_ids and labels) for side_init='fisher'")
    return importance


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values",
                 "decoder_input_ids", "decoder_attention_mask")


def sample_examples(init_data: Iterable[dict], num_samples: int, seed: int) -> list[dict]:
    """`num_samples` batch-1 examples drawn uniformly, without replacement, from all of
    `init_data`, in random order; all of them, shuffled, if there are fewer.

    Reservoir sampling: `init_data` is read once to the end and only the sample is held.
    """
    generator = torch.Generator().manual_seed(seed)
    sample = []
    for seen, example in enumerate(_single_examples(init_data)):
        slot = seen if seen < num_samples else int(torch.randint(seen + 1, (), generator=generator))
        if slot < num_samples:
            example = {k: v.clone() for k, v in example.items()}   # not a view of its batch
            if slot == len(sample):
                sample.append(example)
            else:
                sample[slot] = example
    return [sample[i] for i in torch.randperm(len(sample), generator=generator)]


def _single_examples(init_data: Iterable[dict]):
    """Yield batch-1 dicts from dicts of batched (or unbatched) tensors."""
    for batch in init_data:
        batch = {k: torch.as_tensor(v) for k, v in batch.items()}
        if "input_ids" not in batch and "pixel_values" not in batch:
            raise MissingInputError("every init_data example needs input_ids (or pixel_values) "
                                    "and labels; got keys " + ", ".join(sorted(batch)))
        if "labels" not in batch:
            raise MissingInputError("side_init='fisher' ranks weights by the task loss; add "
                                    "'labels' to every init_data example")
        if "input_ids" in batch and batch["input_ids"].dim() == 1:   # one unbatched example
            yield {k: v.unsqueeze(0) for k, v in batch.items()}
            continue
        lead = batch.get("input_ids", batch.get("pixel_values"))
        for i in range(lead.shape[0]):
            yield {k: v[i:i + 1] for k, v in batch.items()}


def _task_loss(model, example: dict) -> torch.Tensor:
    """The loss that ranks backbone weights (see `fisher_importance`), for one example."""
    backbone, task = model.backbone, model.config.task_type
    device = next(backbone.parameters()).device
    example = {k: v.to(device) for k, v in example.items()}
    labels = example.pop("labels")
    inputs = {k: v for k, v in example.items() if k in _MODEL_INPUTS}
    has_lm_head = getattr(backbone, "get_output_embeddings", lambda: None)() is not None
    if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM") and has_lm_head:
        return backbone(**inputs, labels=labels).loss
    if model.family.kind == bb.ENCODER_DECODER and "decoder_input_ids" not in inputs:
        source = labels if task == "SEQ_2_SEQ_LM" else inputs["input_ids"]
        inputs["decoder_input_ids"] = model.shift_right(source)
        if task != "SEQ_2_SEQ_LM":
            inputs["decoder_attention_mask"] = inputs.get("attention_mask")
    hidden = backbone.base_model(**inputs, return_dict=True).last_hidden_state  # (1, t, d)
    if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):  # bare model: its tied input embedding is the head
        _, _, scale = bb.lm_head(backbone, model.family)
        logits = F.linear(hidden * scale, backbone.get_input_embeddings().weight)  # (1, t, vocab)
        if task == "CAUSAL_LM":
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100)
    if task == "SEQ_CLS":
        pad_mask = inputs.get("decoder_attention_mask", inputs.get("attention_mask"))
        hidden = model._pool(hidden, pad_mask)                                  # (1, d)
    head = _proxy_head(hidden.shape[-1], model.config.num_labels, hidden)
    logits = F.linear(hidden, head)                                             # (..., labels)
    if model.config.num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100)


def _proxy_head(width: int, num_labels: int, like: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(num_labels, width, generator=generator) * width ** -0.5
    return weight.to(device=like.device, dtype=like.dtype)


# ---- choosing indices ---------------------------------------------------------------------------

def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest scores' positions, in increasing order (pruning keeps the original order)."""
    return torch.topk(scores, k).indices.sort().values


def hidden_index(embedding_score: torch.Tensor, keep: int) -> torch.Tensor:
    """Kept model dims: the embedding columns (d,) with the largest L1 importance."""
    return top_indices(embedding_score, keep)


def ffn_index(in_scores: list[torch.Tensor], keep: int) -> torch.Tensor:
    """Kept intermediate units: rows of the input linear(s), by the product of their scores."""
    score = in_scores[0]
    for other in in_scores[1:]:
        score = score * other
    return top_indices(score, keep)


class HeadIndex(NamedTuple):
    """One attention module's kept rows of W_q, W_k, W_v and columns of W_o (flat, per head)."""

    q: torch.Tensor   # (heads * d_s,)
    k: torch.Tensor   # (kv_heads * d_s,)
    v: torch.Tensor   # (kv_heads * d_s,)
    o: torch.Tensor   # (heads * d_s,): query head h reads the v dims of key/value head h // g


def head_index(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int,
               keep_per_head: int, rotary: float | None = None,
               shared: bool = False, interleaved: bool = False) -> HeadIndex:
    """The kept dims of every head, from row scores of shape (heads * head_dim,) for q and
    (kv_heads * head_dim,) for k and v. `rotary` is the fraction of head dims that rotate (None
    without rotary embeddings), paired as `rotary_dims` says. With `shared`, q and k keep the
    same dims in every head (their scores summed over heads), as a norm one head wide, shared by
    all heads, needs. See the module doc for the rule.

    Raises:
        UnsupportedModelError: rotary, and the side head cannot keep the backbone's frequencies.
    """
    heads, kv_heads = q.shape[0] // head_dim, k.shape[0] // head_dim
    groups = heads // kv_heads                                  # query heads per key/value head
    q_score = q.view(kv_heads, groups, head_dim).sum(1)          # (kv_heads, head_dim)
    if rotary is not None:
        rotating = rotary_dims(head_dim, keep_per_head, rotary, interleaved).expand(kv_heads, -1)
        first_still = int(head_dim * rotary)        # dims from here on do not rotate
        still_score = _shared((q_score * k.view(kv_heads, head_dim))[:, first_still:], shared)
        still = _top_per_head(still_score, keep_per_head - rotating.shape[1]) + first_still
        qk_dims = torch.cat([rotating, still], dim=1)           # (kv_heads, keep_per_head)
        v_dims = _top_per_head(v.view(kv_heads, head_dim), keep_per_head)
    else:
        score = q_score * k.view(kv_heads, head_dim) * v.view(kv_heads, head_dim)
        qk_dims = v_dims = _top_per_head(_shared(score, shared), keep_per_head)  # (kv_heads, keep)
    return HeadIndex(q=_flat_rows(qk_dims.repeat_interleave(groups, dim=0), head_dim),
                     k=_flat_rows(qk_dims, head_dim),
                     v=_flat_rows(v_dims, head_dim),
                     o=_flat_rows(v_dims.repeat_interleave(groups, dim=0), head_dim))


def rotary_dims(head_dim: int, keep: int, fraction: float = 1.0,
                interleaved: bool = False) -> torch.Tensor:
    """The rotating head dims a side head of `keep` dims keeps, shape (keep_rot,).

    The first rot = int(head_dim * fraction) dims of a backbone head rotate (rotate_half pairs
    dims j and j + rot/2 at theta^(-2j/rot)); the first keep_rot = int(keep * fraction) of a side
    head do. Side pair i rotates at theta^(-2i/keep_rot), the frequency of backbone pair i*m,
    m = rot / keep_rot, and of no other: so side dims i and i + keep_rot/2 are backbone dims i*m
    and i*m + rot/2. `interleaved` pairs are dims 2j and 2j + 1 instead (Cohere, GLM): side dims
    2i and 2i + 1 are backbone dims 2im and 2im + 1. The rest of the side head is filled with
    dims that do not rotate.

    Raises:
        UnsupportedModelError: keep_rot is odd or does not divide rot, or the backbone head has
            fewer dims that do not rotate than the side head needs.
    """
    rot, keep_rot = int(head_dim * fraction), int(keep * fraction)
    if keep_rot % 2 or (keep_rot and rot % keep_rot) or keep - keep_rot > head_dim - rot:
        raise UnsupportedModelError(
            f"rotary heads of size {head_dim} cannot be pruned to {keep} dims: that needs an "
            "even divisor of the head size, which another reduction_factor may give")
    first = torch.arange(keep_rot // 2) * (rot // keep_rot if keep_rot else 0)  # backbone pairs
    if interleaved:
        return torch.stack([2 * first, 2 * first + 1], dim=1).flatten()   # (keep_rot,)
    return torch.cat([first, first + rot // 2])                           # (keep_rot,)


def rotary_fraction(config) -> float:
    """The fraction of each head's dims that rotate (GPT-NeoX rotates a quarter by default).

    Raises:
        UnsupportedModelError: a rope type whose frequencies depend on the head size.
    """
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in _HEAD_SIZE_FREE_ROPE:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} sets frequencies by the head size, so a narrower side head "
            "cannot keep them")
    return float(rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))


# rope types whose frequencies depend on the base frequency only, not on the head size
_HEAD_SIZE_FREE_ROPE = ("default", "linear", "llama3")


def _shared(score: torch.Tensor, shared: bool) -> torch.Tensor:
    """(heads, n) scores, summed over heads for every head when `shared`."""
    return score.sum(0, keepdim=True).expand_as(score) if shared else score


def _top_per_head(score: torch.Tensor, keep: int) -> torch.Tensor:
    """(heads, head_dim) scores -> (heads, keep) dims with the largest scores, in order."""
    return torch.topk(score, keep).indices.sort(dim=1).values


def _flat_rows(dims: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(heads, keep) dims inside each head -> (heads * keep,) rows of the full projection."""
    return (torch.arange(dims.shape[0])[:, None] * head_dim + dims).flatten()


@dataclass
class PruneIndices:
    """Every index pruning chose. Keys: (stack, backbone layer) and, for heads, attention number."""

    hidden: torch.Tensor
    heads: dict[tuple[int, int, int], HeadIndex] = field(default_factory=dict)
    ffn: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


def choose_indices(model, importance: dict[nn.Parameter, torch.Tensor]) -> PruneIndices:
    """Chain the indices through the backbone as the module doc describes.

    `importance` maps each of `ranked_weights(model)` to its scores (`magnitude_importance`,
    `fisher_importance`).
    """
    plans = plans_for(model)
    config = model.backbone.config
    embedding = bb.get_path(model.stacks[0], plans[0].embedding).weight      # (vocab, d)
    indices = PruneIndices(hidden_index(importance[embedding].cpu(), model.side_width))
    for s, (stack, side_stack, plan) in enumerate(zip(model.stacks, model.side_stacks, plans)):
        blocks = bb.get_path(stack, model.family.layers)
        side_blocks = bb.get_path(side_stack, model.family.layers)
        head_dim = _head_dim(config, model.width, s)
        rotary = rotary_fraction(config) if plan.rotary else None
        for k, layer in enumerate(model.kept_layers[s]):
            block, side_block = blocks[layer], side_blocks[k]

            def score(path, block=block):
                return importance[bb.get_path(block, path).weight].cpu()   # (out,)

            for a, attention in enumerate(plan.attentions):
                rows = _out_features(block, attention.q, plan)
                keep = head_dim * _out_features(side_block, attention.q, plan) // rows
                q, kk, v = _qkv_scores(score(attention.q), score(attention.k),
                                       score(attention.v), attention, head_dim,
                                       _in_features(block, attention.o, plan))
                shared = _has_head_wide_norm(block, attention, head_dim)
                indices.heads[s, layer, a] = head_index(q, kk, v, head_dim, keep, rotary, shared,
                                                        plan.rotary_interleaved)
            keep = _out_features(side_block, plan.ffn_out, plan, out=False)
            in_scores = [score(path) for path in plan.ffn_in]
            if plan.ffn_fused:                                 # [gate | up]: one score each
                in_scores = list(in_scores[0].chunk(2))
            indices.ffn[s, layer] = ffn_index(in_scores, keep)
    return indices


def _qkv_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: bb.Attention,
                head_dim: int, q_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row scores of q (heads * head_dim,), k and v (kv_heads * head_dim,); a fused linear's q,
    k, v are all its scores, split as its layout stacks them. `q_rows` = heads * head_dim, the
    width W_o reads."""
    if attention.fused == bb.STACKED:                       # [q | k | v]
        kv_rows = (q.shape[0] - q_rows) // 2
        return q.split([q_rows, kv_rows, kv_rows])
    if attention.fused == bb.PER_HEAD:   # per key/value head: its query heads, its k, its v
        kv_rows = (q.shape[0] - q_rows) // 2
        groups = q_rows // kv_rows                          # query heads per key/value head
        per_group = q.view(kv_rows // head_dim, groups + 2, head_dim)
        return (per_group[:, :groups].flatten(), per_group[:, groups].flatten(),
                per_group[:, groups + 1].flatten())
    return q, k, v


def _has_head_wide_norm(block: nn.Module, attention: bb.Attention, head_dim: int) -> bool:
    """Whether q or k has a norm one head wide, shared by every head (Qwen3, Gemma 3)."""
    paths = [path for path in (attention.q_norm, attention.k_norm) if path]
    return any(p.shape == (head_dim,) for path in paths
               for p in bb.get_path(block, path).parameters())


def _out_features(block: nn.Module, path: str, plan: bb.BlockPlan, out: bool = True) -> int:
    """Output features of a linear of a block (input features with out=False)."""
    return bb.get_path(block, path).weight.shape[int(plan.conv1d) ^ (not out)]


def _in_features(block: nn.Module, path: str, plan: bb.BlockPlan) -> int:
    return _out_features(block, path, plan, out=False)


def _head_dim(config, width: int, stack_index: int) -> int:
    for name in ("head_dim", "d_kv"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    heads = getattr(config, "decoder_attention_heads", None) if stack_index == 1 else None
    heads = heads if isinstance(heads, int) else bb._heads(config)
    if heads is None:
        raise UnsupportedModelError(f"cannot read the head size of a {config.model_type} config")
    return width // heads


# ---- copying the pruned weights -----------------------------------------------------------------

@torch.no_grad()
def pruned_values(model, indices: PruneIndices) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Every side block and side stack parameter with the pruned backbone twin it starts from.

    Raises:
        UnsupportedModelError: a side parameter is not a cut of a backbone twin.
    """
    plans = plans_for(model)
    hidden = indices.hidden
    values = []
    for s, (stack, side_stack, plan) in enumerate(zip(model.stacks, model.side_stacks, plans)):
        blocks = bb.get_path(stack, model.family.layers)
        side_blocks = bb.get_path(side_stack, model.family.layers)
        head_dim = _head_dim(model.backbone.config, model.width, s)
        for k, layer in enumerate(model.kept_layers[s]):
            # (rows, columns) of every linear whose dims are not just the hidden index, and the
            # kept rows of q or k that the q and k norms follow
            linears, norms = {}, {}
            for a, attention in enumerate(plan.attentions):
                head = indices.heads[s, layer, a]
                if attention.fused == bb.STACKED:
                    q_rows = _in_features(blocks[layer], attention.o, plan)
                    kv_rows = (_out_features(blocks[layer], attention.q, plan) - q_rows) // 2
                    linears[attention.q] = (torch.cat([head.q, head.k + q_rows,
                                                       head.v + q_rows + kv_rows]), hidden)
                elif attention.fused == bb.PER_HEAD:
                    q_rows = _in_features(blocks[layer], attention.o, plan)
                    kv_rows = (_out_features(blocks[layer], attention.q, plan) - q_rows) // 2
                    linears[attention.q] = (_per_head_rows(head, head_dim, kv_rows // head_dim),
                                            hidden)
                else:
                    linears[attention.q] = (head.q, hidden)
                    linears[attention.k] = (head.k, hidden)
                    linears[attention.v] = (head.v, hidden)
                for path in attention.position:   # DeBERTa: position rows meet q and k rows,
                    linears[path] = (head.q, hidden)   # one shared index without rotary
                linears[attention.o] = (hidden, head.o)
                for path, kept in ((attention.q_norm, head.q), (attention.k_norm, head.k)):
                    if path:
                        norms[path] = kept
            ffn = indices.ffn[s, layer]
            if plan.ffn_fused:                                   # [gate | up]
                intermediate = _in_features(blocks[layer], plan.ffn_out, plan)
                linears[plan.ffn_in[0]] = (torch.cat([ffn, ffn + intermediate]), hidden)
            else:
                for path in plan.ffn_in:
                    linears[path] = (ffn, hidden)
            linears[plan.ffn_out] = (hidden, ffn)
            twins = dict(blocks[layer].named_parameters())
            first_block = dict(blocks[0].named_parameters())  # T5 keeps its position bias here
            for name, side_param in side_blocks[k].named_parameters():
                module_path, kind = name.rsplit(".", 1)
                twin = twins.get(name, first_block.get(name))
                if twin is None:
                    raise UnsupportedModelError(f"side parameter {name} has no backbone twin")
                if module_path in linears:
                    rows, cols = linears[module_path]
                    if kind == "weight":
                        row_dim, col_dim = (1, 0) if plan.conv1d else (0, 1)
                        value = _take(_take(twin, rows, row_dim), cols, col_dim)
                    else:
                        value = _take(twin, rows, 0)
                elif (module_path in norms and (value := _norm_entries(
                        twin, norms[module_path], head_dim)) is not None):
                    pass
                else:
                    value = _prune_by_width(twin, side_param.shape, hidden, model.width, name)
                values.append((side_param, value))
        # stack-level side parameters: final norms, BART's position table and embedding norm
        twins = dict(stack.named_parameters())
        for name, side_param in side_stack.named_parameters():
            if name.startswith(model.family.layers + "."):
                continue
            if name not in twins:
                raise UnsupportedModelError(f"side parameter {name} has no backbone twin")
            values.append((side_param, _prune_by_width(twins[name], side_param.shape, hidden,
                                                       model.width, name)))
    return values


def _norm_entries(twin: torch.Tensor, kept: torch.Tensor, head_dim: int) -> torch.Tensor | None:
    """The kept entries of a q or k norm, from the kept rows of q or k: a norm one head wide
    (Qwen3, Gemma 3) keeps the dims every head keeps, one as wide as q or k (OLMo 2) the rows.
    A norm of one row per head (Cohere) keeps each head's dims. None for any other shape."""
    if twin.dim() == 2 and twin.shape[1] == head_dim:
        return _take(twin.reshape(-1), kept, 0).view(twin.shape[0], -1)
    if twin.dim() != 1:
        return None
    if twin.shape[0] == head_dim:
        return _take(twin, kept[kept < head_dim], 0)            # head 0's dims, as every head's
    if twin.shape[0] == int(kept.max()) // head_dim * head_dim + head_dim:
        return _take(twin, kept, 0)
    return None


def _per_head_rows(head: HeadIndex, head_dim: int, kv_heads: int) -> torch.Tensor:
    """Kept rows of a fused linear laid out per key/value head g as [q heads of g | k_g | v_g]
    ([q_h | k_h | v_h] for every head h without grouped queries: GPT-NeoX, BLOOM)."""
    groups = head.q.shape[0] // head.k.shape[0]               # query heads per key/value head
    q = head.q.view(kv_heads, groups, -1) % head_dim           # (kv_heads, groups, d_s)
    k, v = (index.view(kv_heads, 1, -1) % head_dim for index in (head.k, head.v))
    start = torch.arange(kv_heads)[:, None, None] * (groups + 2) * head_dim
    q = q + torch.arange(groups)[None, :, None] * head_dim
    rows = torch.cat([q, k + groups * head_dim, v + (groups + 1) * head_dim], dim=1)
    return (start + rows).flatten()                            # (kv_heads * (groups + 2) * d_s,)


def _take(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor.index_select(dim, index.to(tensor.device))


def _prune_by_width(twin: torch.Tensor, side_shape: torch.Size, hidden: torch.Tensor,
                    width: int, name: str) -> torch.Tensor:
    """Cut every dim that shrank from d to d/r with the hidden index; keep equal dims whole."""
    value = twin
    for dim, (full, side) in enumerate(zip(twin.shape, side_shape)):
        if full == side:
            continue
        if full == width and side == len(hidden):
            value = _take(value, hidden, dim)
        else:
            raise UnsupportedModelError(
                f"side parameter {name} {tuple(side_shape)} is not a hidden-dim cut of "
                f"{tuple(twin.shape)}")
    return value


# ---- entry point --------------------------------------------------------------------------------

def init_side_from_backbone(model, init_data=None) -> PruneIndices | None:
    """Initialise `model`'s side blocks by pruning its backbone (`config.side_init`).

    With the default side_init (magnitude, not chosen by the user), a backbone pruning cannot
    handle keeps its random side blocks and logs a warning; a side_init the user chose raises.
    Every pruned value is computed before the first is copied, so a failure leaves the side
    network as it was built.

    Raises:
        LSTConfigError: side_init was set explicitly for a backbone pruning cannot handle.
        MissingInputError: side_init='fisher' without init_data.
    """
    config = model.config
    try:
        weights = ranked_weights(model)
        if config.side_init == "fisher":
            importance = fisher_importance(model, init_data, config.prune_samples, weights)
        else:
            importance = magnitude_importance(weights)
        indices = choose_indices(model, importance)
        values = pruned_values(model, indices)
    except UnsupportedModelError as err:
        if getattr(config.side_init, "is_default", False):
            logger.warning("laddertune: side blocks of %s start random: cannot prune (%s)",
                           model.backbone.config.model_type, err)
            return None
        raise LSTConfigError(
            f"side_init={str(config.side_init)!r} cannot prune this backbone ({err}); "
            "use side_init='random'") from None
    with torch.no_grad():
        for side_param, value in values:
            side_param.copy_(value)
    model.prune_indices = indices
    return indices
