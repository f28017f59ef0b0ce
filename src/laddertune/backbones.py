"""How to read each Hugging Face model family: where its layers and input embeddings live.

A family is one small `Family` entry holding everything family-specific: its kind, its paths,
its pruning plan, its position limit, its LM-head scale, whether it is two towers. No other
module tests a `model_type`. Paths are relative to the *stack*: the base model for
encoders, decoders and vision towers, or each of `get_encoder()` / `get_decoder()` for
encoder-decoder models. The same paths hold in the backbone and in the side network, because the
side network is the backbone's own model class built at width d/r.

A family nobody listed usually works anyway: `detect_family` finds the longest list of identical
blocks, the `embeddings` module (or the input embeddings) and the kind of model from its config.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LSTConfigError, UnsupportedModelError

ENCODER, DECODER, ENCODER_DECODER, VISION = "encoder", "decoder", "encoder-decoder", "vision"


# ---- how a block is pruned (see laddertune.prune) ------------------------------------------------

@dataclass(frozen=True)
class Attention:
    """Paths (inside a block) of one attention module's four linears."""

    q: str
    k: str
    v: str
    o: str


@dataclass(frozen=True)
class BlockPlan:
    """How one stack's blocks are pruned. Paths are relative to the stack or the block."""

    embedding: str                       # stack path of the token embedding (ranks hidden dims)
    attentions: tuple[Attention, ...]    # self-attention, then cross-attention in decoders
    ffn_in: tuple[str, ...]              # linears that make the intermediate (two when gated)
    ffn_out: str                         # the linear back to the model width
    rotary: bool = False                 # rotary embedding: q, k keep fixed pairs
    conv1d: bool = False                 # weights stored (in, out), as GPT-2's Conv1D does

    def fused_qkv(self, attention: Attention) -> bool:
        return attention.q == attention.k == attention.v


_BERT_PLAN = BlockPlan(
    "embeddings.word_embeddings",
    (Attention("attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense"),),
    ("intermediate.dense",), "output.dense")
_LLAMA_PLAN = BlockPlan(
    "embed_tokens",
    (Attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),),
    ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", rotary=True)
_BART_SELF = Attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.out_proj")
_BART_CROSS = Attention("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj",
                        "encoder_attn.out_proj")
_BART_PLANS = (BlockPlan("embed_tokens", (_BART_SELF,), ("fc1",), "fc2"),
               BlockPlan("embed_tokens", (_BART_SELF, _BART_CROSS), ("fc1",), "fc2"))
_T5_SELF = Attention("layer.0.SelfAttention.q", "layer.0.SelfAttention.k",
                     "layer.0.SelfAttention.v", "layer.0.SelfAttention.o")
_T5_CROSS = Attention("layer.1.EncDecAttention.q", "layer.1.EncDecAttention.k",
                      "layer.1.EncDecAttention.v", "layer.1.EncDecAttention.o")


def _t5_plans(config) -> tuple[BlockPlan, BlockPlan]:
    """T5 v1.1 and mT5 gate their feed-forward: wi_0 (gate) and wi_1 (up) both make it."""
    wi = ("wi_0", "wi_1") if config.is_gated_act else ("wi",)
    return (BlockPlan("embed_tokens", (_T5_SELF,),
                      tuple(f"layer.1.DenseReluDense.{name}" for name in wi),
                      "layer.1.DenseReluDense.wo"),
            BlockPlan("embed_tokens", (_T5_SELF, _T5_CROSS),
                      tuple(f"layer.2.DenseReluDense.{name}" for name in wi),
                      "layer.2.DenseReluDense.wo"))


_OPT_SELF = Attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.out_proj")


# ---- the families -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    kind: str             # ENCODER | DECODER | ENCODER_DECODER | VISION
    layers: str           # the stack's ModuleList of blocks
    side_input: str       # module whose output is hidden_states[0]; the side net replaces it
    side_unused: tuple[str, ...] = ()  # side submodules never used (poolers), dropped from the side
    # SEQ_CLS reads the "mean" of the non-padding tokens (text encoders: on BBC News with MiniLM
    # 96.0% against 94.3% for the first token at the same budget), the "first" token (vision
    # models' CLS) or the "last" non-padding one (decoders)
    pooling: str = "mean"
    # pruning plan per stack ([encoder, decoder] for encoder-decoder models), or a function of
    # the config giving it (T5's feed-forward is gated in v1.1); None: pruning starts random
    prune_plans: tuple[BlockPlan, ...] | Callable[..., tuple[BlockPlan, ...]] | None = None
    # config key of the number of learned absolute positions, the longest input accepted;
    # None: read off the position-embedding module (see `max_positions`)
    max_positions_key: str | None = None
    relative_positions: bool = False   # rotary or relative positions only: no length limit
    scales_tied_head: bool = False     # T5: output times d_model^-0.5 before a tied LM head
    # a model of two towers (CLIP): the side network tunes one, so these classes are asked for
    towers: tuple[str, ...] = ()


_BERT_LIKE = Family(ENCODER, "encoder.layer", "embeddings", ("pooler",), prune_plans=(_BERT_PLAN,),
                    max_positions_key="max_position_embeddings")
_LLAMA_LIKE = Family(DECODER, "layers", "embed_tokens", pooling="last",
                     prune_plans=(_LLAMA_PLAN,), relative_positions=True)
_T5_LIKE = Family(ENCODER_DECODER, "block", "embed_tokens", pooling="last", prune_plans=_t5_plans,
                  relative_positions=True, scales_tied_head=True)
_BART_LIKE = Family(ENCODER_DECODER, "layers", "embed_tokens", pooling="last",
                    prune_plans=_BART_PLANS, max_positions_key="max_position_embeddings")

FAMILIES: dict[str, Family] = {
    "bert": _BERT_LIKE,
    # RoBERTa counts positions from its padding id + 1: read off the position embedding
    "roberta": dataclasses.replace(_BERT_LIKE, max_positions_key=None),
    # ELECTRA's plan ranks hidden dims by its embedding, so only when embedding_size == hidden
    "electra": _BERT_LIKE,
    # DeBERTa-v2 has absolute positions only with position_biased_input: read off the structure
    "deberta-v2": Family(ENCODER, "encoder.layer", "embeddings", ("pooler",)),
    "distilbert": Family(ENCODER, "transformer.layer", "embeddings", prune_plans=(BlockPlan(
        "embeddings.word_embeddings",
        (Attention("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),),
        ("ffn.lin1",), "ffn.lin2"),), max_positions_key="max_position_embeddings"),
    # GPT-2: Conv1D weights are stored (in, out), and q, k, v are one fused c_attn of 3d outputs
    "gpt2": Family(DECODER, "h", "wte", pooling="last", prune_plans=(BlockPlan(
        "wte", (Attention("attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj"),),
        ("mlp.c_fc",), "mlp.c_proj", conv1d=True),), max_positions_key="n_positions"),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    # OPT's plan ranks hidden dims by its embedding, so only when word_embed_proj_dim == hidden
    "opt": Family(DECODER, "decoder.layers", "decoder.embed_tokens", pooling="last",
                  prune_plans=(BlockPlan("decoder.embed_tokens", (_OPT_SELF,), ("fc1",), "fc2"),),
                  max_positions_key="max_position_embeddings"),
    "gpt_neox": Family(DECODER, "layers", "embed_in", pooling="last", relative_positions=True),
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "vit": Family(VISION, "layers", "embeddings", ("pooler",), pooling="first"),
    "clip_vision_model": Family(VISION, "encoder.layers", "embeddings", ("post_layernorm",),
                                pooling="first"),
    "clip_text_model": Family(ENCODER, "encoder.layers", "embeddings", pooling="last",
                              prune_plans=(BlockPlan("embeddings.token_embedding", (_OPT_SELF,),
                                                     ("mlp.fc1",), "mlp.fc2"),),
                              max_positions_key="max_position_embeddings"),
    "clip": Family(ENCODER, "", "", towers=("CLIPVisionModel", "CLIPTextModel")),
}

# Config fields that hold a width the side network divides by r.
_WIDTHS = ("hidden_size", "d_model", "n_embd", "dim", "intermediate_size", "d_ff", "n_inner",
           "hidden_dim", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_kv", "head_dim")
_MODEL_WIDTHS = ("hidden_size", "d_model", "n_embd", "dim")
# Widths that must equal the side's model width (they only exist to project to it).
_TIED_TO_WIDTH = ("embedding_size", "word_embed_proj_dim", "pooler_hidden_size")
_HEADS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
          "decoder_attention_heads")
_ENCODER_DEPTHS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers")
_DECODER_DEPTHS = ("num_decoder_layers", "decoder_layers")


def get_path(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


def set_path(module: nn.Module, path: str, value: nn.Module | None) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        module = getattr(module, name)
    setattr(module, leaf, value)


def model_width(config) -> int:
    for name in _MODEL_WIDTHS:
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise UnsupportedModelError(
        f"cannot find the hidden width of a {type(config).__name__}; "
        "laddertune reads hidden_size, d_model, n_embd or dim")


def _heads(config) -> int | None:
    for name in _HEADS:
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def detect_family(model) -> Family:
    """The `Family` of a model: a listed entry, else one read off the model's structure."""
    model_type = getattr(model.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is not None and family.towers:
        raise UnsupportedModelError(
            f"{type(model).__name__} holds {len(family.towers)} towers; pass one of "
            f"{' or '.join(family.towers)} (e.g. {family.towers[0]}.from_pretrained(path)) "
            "to tune it")
    if family is not None:
        return family
    if getattr(model.config, "is_encoder_decoder", False):
        stack = model.get_encoder()
        kind = ENCODER_DECODER
    else:
        stack = model.base_model
        kind = VISION if getattr(model, "main_input_name", "") == "pixel_values" else None
    layers = _longest_block_list(stack)
    if layers is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no list of transformer blocks laddertune can find; "
            "add a Family entry for model_type "
            f"{model_type!r} in laddertune/backbones.py")
    if hasattr(stack, "embeddings") and isinstance(stack.embeddings, nn.Module):
        side_input = "embeddings"
    else:
        embedding = stack.get_input_embeddings() if hasattr(stack, "get_input_embeddings") else None
        side_input = next((n for n, m in stack.named_modules() if m is embedding and n), None)
        if side_input is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no input embedding module laddertune can find; "
                f"add a Family entry for model_type {model_type!r} in laddertune/backbones.py")
    if kind is None:
        kind = DECODER if _is_causal(model_type) else ENCODER
    pooling = {ENCODER: "mean", VISION: "first"}.get(kind, "last")
    unused = ("pooler",) if isinstance(getattr(stack, "pooler", None), nn.Module) else ()
    return Family(kind, layers, side_input, unused, pooling)


def _is_causal(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _longest_block_list(stack: nn.Module) -> str | None:
    best, best_len = None, 0
    for name, module in stack.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > best_len:
            if len({type(block) for block in module}) == 1:
                best, best_len = name, len(module)
    return best


def backbone_stacks(model, family: Family) -> list[nn.Module]:
    """The modules that run the backbone: [base] or [encoder, decoder]."""
    if family.kind == ENCODER_DECODER:
        return [model.get_encoder(), model.get_decoder()]
    return [model.base_model]


def num_layers(stack: nn.Module, family: Family) -> int:
    return len(get_path(stack, family.layers))


def reduced_config(config, reduction_factor: int, encoder_layers: list[int],
                   decoder_layers: list[int] | None, dropout: float):
    """A copy of the backbone config at width d/r with one block per kept backbone layer.

    Heads keep their number (as in the paper) and shrink in size; the vocabulary shrinks to two
    rows because the side network never embeds tokens: its first ladder feeds it instead.

    Raises:
        LSTConfigError: if d/r is not a whole number of heads.
    """
    r = reduction_factor
    width = model_width(config)
    heads = _heads(config)
    side = copy.deepcopy(config)
    if width % r or width // r < 1:
        raise LSTConfigError(
            f"reduction_factor={r} does not divide the backbone width {width}; "
            f"use one of {_valid_factors(config)}")
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    if head_dim is not None and isinstance(head_dim, int) and head_dim % r:
        raise LSTConfigError(
            f"reduction_factor={r} leaves attention heads of size {head_dim}/{r}, not whole; "
            f"use one of {_valid_factors(config)}")
    if head_dim is None and heads and (width // r) % heads:
        raise LSTConfigError(
            f"reduction_factor={r} gives side width {width // r}, which {heads} attention heads "
            f"cannot split evenly; use one of {_valid_factors(config)}")
    for name in _WIDTHS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(side, name, max(1, value // r))
    for name in _TIED_TO_WIDTH:
        if isinstance(getattr(config, name, None), int):
            setattr(side, name, width // r)
    for name in _ENCODER_DEPTHS:
        if isinstance(getattr(config, name, None), int):
            setattr(side, name, len(encoder_layers))
    if decoder_layers is not None:
        for name in _DECODER_DEPTHS:
            if isinstance(getattr(config, name, None), int):
                setattr(side, name, len(decoder_layers))
    if isinstance(getattr(config, "layer_types", None), list):
        side.layer_types = [config.layer_types[i] for i in encoder_layers]
    for name, value in vars(config).items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            # No dropout on attention probabilities: fused attention kernels then keep no
            # (t x t) matrix for backward, which would be as large as the backbone's.
            setattr(side, name, 0.0 if "att" in name else dropout)
    side.vocab_size = 2  # never used for lookups; the ladder's first projection replaces it
    if isinstance(getattr(side, "pad_token_id", None), int) and side.pad_token_id >= 2:
        side.pad_token_id = None
    side.tie_word_embeddings = False
    return side


def _valid_factors(config) -> list[int]:
    width, heads = model_width(config), _heads(config)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    valid = []
    for r in range(1, width + 1):
        if width % r:
            continue
        if isinstance(head_dim, int) and head_dim % r:
            continue
        if head_dim is None and heads and (width // r) % heads:
            continue
        valid.append(r)
    return valid[:8]


def side_model_class(backbone):
    """The bare model class of the backbone's family (T5Model for T5ForConditionalGeneration)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING
    try:
        return MODEL_MAPPING[type(backbone.config)]
    except KeyError:
        return type(backbone.base_model)


def lm_head(backbone, family: Family) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The backbone's frozen LM head as (weight, bias, input scale), all detached.

    T5 with tied embeddings scales the decoder output by d_model^-0.5 before its head; BART adds
    `final_logits_bias`. A bare model with tied embeddings uses its input embedding matrix.
    """
    head = backbone.get_output_embeddings() if hasattr(backbone, "get_output_embeddings") else None
    config = backbone.config
    if head is None:
        if not getattr(config, "tie_word_embeddings", False):
            raise UnsupportedModelError(
                f"{type(backbone).__name__} has no LM head; load it with AutoModelForCausalLM or "
                "AutoModelForSeq2SeqLM so the side network can reuse the head")
        head = backbone.get_input_embeddings()
    bias = getattr(head, "bias", None)
    final_bias = getattr(backbone, "final_logits_bias", None)
    if final_bias is not None:
        bias = final_bias.reshape(-1) if bias is None else bias + final_bias.reshape(-1)
    scale = 1.0
    if family.scales_tied_head and getattr(config, "tie_word_embeddings", False):
        scale = model_width(config) ** -0.5
    return head.weight.detach(), None if bias is None else bias.detach(), scale


def prune_plans(backbone, family: Family) -> tuple[BlockPlan, ...]:
    """The family's pruning plan for this backbone, one per stack.

    Raises:
        UnsupportedModelError: the family has no plan.
    """
    plans = family.prune_plans
    if plans is None:
        raise UnsupportedModelError(
            f"no pruning plan for model_type {backbone.config.model_type!r}")
    return plans(backbone.config) if callable(plans) else plans


def max_positions(backbone) -> int | None:
    """The longest token sequence the backbone accepts, or None when nothing limits it.

    Learned absolute positions limit it: the family's `max_positions_key` in the config, else the
    position-embedding module's size less its offset (RoBERTa and MPNet count from their padding
    id + 1, OPT and BART from 2). Rotary and relative positions (Llama, T5) do not limit it, nor
    do images.
    """
    family = detect_family(backbone)
    if family.kind == VISION or family.relative_positions:
        return None
    if family.max_positions_key is not None:
        return getattr(backbone.config, family.max_positions_key)
    stack = backbone_stacks(backbone, family)[0]
    for name, module in stack.named_modules():
        in_blocks = name.startswith(family.layers + ".")
        if isinstance(module, nn.Embedding) and _names_positions(name) and not in_blocks:
            padding = module.padding_idx
            offset = getattr(module, "offset", 0) + (0 if padding is None else padding + 1)
            return module.num_embeddings - offset
    return None


def _names_positions(name: str) -> bool:
    """A learned absolute position table, by name (relative tables are not limits)."""
    leaf = name.rsplit(".", 1)[-1]
    return ("position" in leaf or leaf == "wpe") and "rel" not in leaf
