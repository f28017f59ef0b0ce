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
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import LSTConfigError, UnsupportedModelError

ENCODER, DECODER, ENCODER_DECODER, VISION = "encoder", "decoder", "encoder-decoder", "vision"


# ---- how a block is pruned (see laddertune.prune) ------------------------------------------------

STACKED, PER_HEAD = "stacked", "per_head"   # layouts of a fused q/k/v linear


@dataclass(frozen=True)
class Attention:
    """Paths (inside a block) of one attention module's linears."""

    q: str
    k: str
    v: str
    o: str
    # q, k, v are one linear: STACKED [q | k | v], or PER_HEAD: for each key/value head, its
    # query heads then its k and v ([q_h | k_h | v_h] for each head h without grouped queries)
    fused: str | None = None
    position: tuple[str, ...] = ()  # relative-position projections to q/k rows (DeBERTa)
    q_norm: str | None = None       # norm of q (Qwen3, Gemma 3: per head; OLMo 2: all heads)
    k_norm: str | None = None


@dataclass(frozen=True)
class BlockPlan:
    """How one stack's blocks are pruned. Paths are relative to the stack or the block."""

    embedding: str                       # stack path of the module whose weight ranks hidden dims
    attentions: tuple[Attention, ...]    # self-attention, then cross-attention in decoders
    ffn_in: tuple[str, ...]              # linears that make the intermediate (two when gated)
    ffn_out: str                         # the linear back to the model width
    rotary: bool = False                 # rotary embedding: q, k keep fixed pairs
    # rotary pairs are adjacent dims (2j, 2j + 1) (Cohere, GLM), not rotate_half's (j, j + d/2)
    rotary_interleaved: bool = False
    conv1d: bool = False                 # weights stored (in, out), as GPT-2's Conv1D does
    # the one ffn_in linear writes gate and up stacked, [gate | up] (Phi-3's gate_up_proj)
    ffn_fused: bool = False


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
    # layout of a fused q/k/v linear, which shapes cannot tell: GPT-2's c_attn is STACKED
    # [q | k | v], GPT-NeoX's query_key_value PER_HEAD [q_h | k_h | v_h] for each head h
    fused_qkv: str | None = None
    # config key of the number of learned absolute positions, the longest input accepted;
    # None: read off the position-embedding module (see `max_positions`)
    max_positions_key: str | None = None
    relative_positions: bool = False   # rotary or relative positions only: no length limit
    scales_tied_head: bool = False     # T5: output times d_model^-0.5 before a tied LM head
    # a model of two towers (CLIP): the side network tunes one, so these classes are asked for
    towers: tuple[str, ...] = ()
    # the side layers the reference code kept for this checkpoint, in every stack (a function of
    # the config giving None for checkpoints it never ran: those use default_side_layers)
    reference_side_layers: Callable[..., list[int] | None] | None = None


# The reference code picks the side layers per checkpoint: one script each,
# seq2seq/scripts/ladder_side_tuning_{base,large,3b}.sh, the same list for encoder and decoder.
# Checkpoints are told apart by shape, (layers, d_model, d_ff, heads), as a name may be a folder.
_T5_REFERENCE_SIDE_LAYERS = {
    (12, 768, 3072, 12): [1, 2, 3, 5, 6, 7, 9, 10, 11],   # t5-base: drop 0, 4, 8
    (24, 1024, 4096, 16): list(range(1, 24, 2)),          # t5-large: the odd layers, 12 of 24
    (24, 1024, 16384, 32): [23],                          # t5-3b: the last layer only
}


def _t5_reference_side_layers(config) -> list[int] | None:
    shape = (config.num_layers, config.d_model, config.d_ff, config.num_heads)
    if config.num_decoder_layers != config.num_layers:
        return None
    return _T5_REFERENCE_SIDE_LAYERS.get(shape)


_BERT_LIKE = Family(ENCODER, "encoder.layer", "embeddings", ("pooler",),
                    max_positions_key="max_position_embeddings")
_LLAMA_LIKE = Family(DECODER, "layers", "embed_tokens", pooling="last", relative_positions=True)
_T5_LIKE = Family(ENCODER_DECODER, "block", "embed_tokens", pooling="last",
                  relative_positions=True, scales_tied_head=True,
                  reference_side_layers=_t5_reference_side_layers)
_BART_LIKE = Family(ENCODER_DECODER, "layers", "embed_tokens", pooling="last",
                    max_positions_key="max_position_embeddings")

FAMILIES: dict[str, Family] = {
    "bert": _BERT_LIKE,
    # RoBERTa counts positions from its padding id + 1: read off the position embedding
    "roberta": dataclasses.replace(_BERT_LIKE, max_positions_key=None),
    "electra": _BERT_LIKE,
    # DeBERTa-v2 has absolute positions only with position_biased_input: read off the structure
    "deberta-v2": Family(ENCODER, "encoder.layer", "embeddings", ("pooler",)),
    "distilbert": Family(ENCODER, "transformer.layer", "embeddings",
                         max_positions_key="max_position_embeddings"),
    "gpt2": Family(DECODER, "h", "wte", pooling="last", max_positions_key="n_positions",
                   fused_qkv=STACKED),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "opt": Family(DECODER, "decoder.layers", "decoder.embed_tokens", pooling="last",
                  max_positions_key="max_position_embeddings"),
    "gpt_neox": Family(DECODER, "layers", "embed_in", pooling="last", relative_positions=True,
                       fused_qkv=PER_HEAD),
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "vit": Family(VISION, "layers", "embeddings", ("pooler",), pooling="first"),
    "clip_vision_model": Family(VISION, "encoder.layers", "embeddings", ("post_layernorm",),
                                pooling="first"),
    "clip_text_model": Family(ENCODER, "encoder.layers", "embeddings", pooling="last",
                              max_positions_key="max_position_embeddings"),
    # two towers: nothing to read here, detect_family asks for one of them instead
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
    layout = _FUSED_QKV_LAYOUTS.get(model_type)
    return Family(kind, layers, side_input, unused, pooling,
                  fused_qkv=layout(model.config) if callable(layout) else layout)


# Layouts of the fused q/k/v linear of families without an entry (shapes cannot tell them):
# Phi-3's qkv_proj slices [q | k | v] (k and v of the key/value heads' size), MPT's Wqkv
# chunks [q | k | v]; BLOOM's and Persimmon's query_key_value view their output as
# (heads, 3, head_dim); GPT-BigCode's c_attn does the first with one key/value head
# (multi_query), else the second. Falcon's query_key_value is PER_HEAD in all three of its
# layouts (grouped; multi-query, a single group; one head per group).
_FUSED_QKV_LAYOUTS = {"phi3": STACKED, "mpt": STACKED, "bloom": PER_HEAD, "falcon": PER_HEAD,
                      "persimmon": PER_HEAD,
                      "gpt_bigcode": lambda config: STACKED if config.multi_query else PER_HEAD}


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
                   decoder_layers: list[int] | None, dropout: float, attention_dropout: float):
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
        if isinstance(getattr(type(config), name, None), property):
            continue   # computed from the other fields (Falcon's head_dim)
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
            # attention probabilities get their own rate: at 0 fused attention kernels keep no
            # (t x t) matrix for backward, which would be as large as the backbone's
            setattr(side, name, attention_dropout if "att" in name else dropout)
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
    """How pruning reads each stack's blocks ([encoder, decoder] for encoder-decoder models),
    derived from the module structure (see `block_plan`).

    Raises:
        UnsupportedModelError: the structure does not tell which linear is which.
    """
    width = model_width(backbone.config)
    return tuple(block_plan(stack, family, width) for stack in backbone_stacks(backbone, family))


def block_plan(stack: nn.Module, family: Family, width: int) -> BlockPlan:
    """Which linear of a block is which, read off the module structure.

    Attention modules are the outermost modules of a block whose class is named "...Attention":
    the last of their linears that writes the model width is the output projection o; the others
    are q, k, v by their names (query/q, key/k, value/v), or one fused q/k/v linear laid out as
    the family entry says. Relative-position projections named pos_... (DeBERTa) follow q and k;
    norms named q_norm / k_norm (or query/key ... norm) are q's and k's. The other linears are
    the feed-forward: those reading the model width make the intermediate (two when gated, or
    one writing twice the intermediate: gate and up stacked), the one writing it goes back.
    Rotary embeddings are a "...Rotary..." module of the stack. The token embedding (for images
    the patch projection's out-channels, for a narrower embedding its projection) ranks the
    hidden dims.

    Raises:
        UnsupportedModelError: a linear has no role, or a role has no linear.
    """
    block = get_path(stack, family.layers)[0]
    linears = {name: module for name, module in block.named_modules() if _is_linear(module)}
    if not linears:
        raise UnsupportedModelError(f"{type(block).__name__} has no linear layers to prune")
    conv1d = {isinstance(module, Conv1D) for module in linears.values()}
    if len(conv1d) > 1:
        raise UnsupportedModelError(f"{type(block).__name__} mixes Linear and Conv1D layers")
    attention_paths = _attention_modules(block)
    if not attention_paths:
        raise UnsupportedModelError(f"{type(block).__name__} has no module named ...Attention")
    attentions = []
    for path in attention_paths:
        inside = {name: m for name, m in linears.items() if name.startswith(path + ".")}
        roles = _attention_roles(inside, family, width, type(block).__name__)
        attentions.append(dataclasses.replace(roles, **_qk_norms(block, path)))
    feed_forward = {name: m for name, m in linears.items()
                    if not any(name.startswith(path + ".") for path in attention_paths)}
    ffn_in = tuple(name for name, m in feed_forward.items() if _in_out(m)[0] == width)
    ffn_out = [name for name, m in feed_forward.items() if _in_out(m)[1] == width]
    hidden_sizes = {_in_out(feed_forward[name])[1] for name in ffn_in}
    intermediate = _in_out(feed_forward[ffn_out[0]])[0] if len(ffn_out) == 1 else None
    ffn_fused = len(ffn_in) == 1 and hidden_sizes == {2 * intermediate}   # [gate | up]
    if (len(ffn_out) != 1 or len(ffn_in) not in (1, 2) or len(feed_forward) != len(ffn_in) + 1
            or (hidden_sizes != {intermediate} and not ffn_fused)):
        raise UnsupportedModelError(
            f"cannot tell the feed-forward of {type(block).__name__} from its linears "
            f"{sorted(feed_forward)}")
    pairing = _rotary_pairing(stack, block)
    return BlockPlan(_ranking_embedding(stack, family, width), tuple(attentions), ffn_in,
                     ffn_out[0], rotary=pairing is not None, conv1d=conv1d == {True},
                     ffn_fused=ffn_fused, rotary_interleaved=pairing == "interleaved")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _in_out(linear: nn.Module) -> tuple[int, int]:
    """(in, out) features of an nn.Linear, or of transformers' Conv1D (weight stored (in, out))."""
    rows, cols = linear.weight.shape
    return (cols, rows) if isinstance(linear, nn.Linear) else (rows, cols)


def _attention_modules(block: nn.Module) -> list[str]:
    """Paths of the outermost "...Attention" modules holding linears, in registration order."""
    paths = []
    for name, module in block.named_modules():
        if (name and "Attention" in type(module).__name__
                and not any(name.startswith(path + ".") for path in paths)
                and any(_is_linear(m) for m in module.modules())):
            paths.append(name)
    return paths


_ROLE_WORDS = {"q": {"q", "query"}, "k": {"k", "key"}, "v": {"v", "value"}}


def _attention_roles(linears: dict[str, nn.Module], family: Family, width: int,
                     block_name: str) -> Attention:
    writers = [name for name, m in linears.items() if _in_out(m)[1] == width]
    if not writers:
        raise UnsupportedModelError(
            f"no linear of an attention in {block_name} writes the model width")
    o = writers[-1]   # registered last of those writing the model width (Phi-3 registers it first)
    inputs = [name for name in linears if name != o]
    if len(inputs) == 1:
        if family.fused_qkv is None:
            raise UnsupportedModelError(
                f"{inputs[0]} fuses q, k and v in a layout the shapes do not tell; set fused_qkv "
                "in the family's entry in laddertune/backbones.py")
        return Attention(inputs[0], inputs[0], inputs[0], o, fused=family.fused_qkv)
    roles: dict[str, str] = {}
    position = []
    for name in inputs:
        words = set(re.split(r"[._]", name.rsplit(".", 1)[-1].lower()))
        matched = [role for role, names in _ROLE_WORDS.items() if words & names]
        if len(matched) != 1 or (matched[0] in roles and "pos" not in words):
            raise UnsupportedModelError(
                f"cannot tell whether {name} in {block_name} is q, k or v from its name")
        if "pos" in words:
            position.append(name)
        else:
            roles[matched[0]] = name
    if set(roles) != set(_ROLE_WORDS):
        raise UnsupportedModelError(f"an attention in {block_name} lacks one of q, k, v")
    return Attention(roles["q"], roles["k"], roles["v"], o, position=tuple(position))


def _qk_norms(block: nn.Module, attention: str) -> dict[str, str]:
    """Block paths of an attention's norms of q and of k, by name (q_norm, k_norm)."""
    norms = {}
    for name, module in block.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if not name.startswith(attention + ".") or "norm" not in leaf or _is_linear(module):
            continue
        words = set(re.split(r"[._]", leaf.replace("norm", "_norm")))
        matched = [role for role in ("q", "k") if words & _ROLE_WORDS[role]]
        if len(matched) == 1:
            norms[f"{matched[0]}_norm"] = name
    return norms


def _ranking_embedding(stack: nn.Module, family: Family, width: int) -> str:
    """Stack path of the module whose weight ranks the hidden dims: the token embedding, an
    image model's patch projection, or, when the token embedding is narrower than the model
    (ELECTRA, ALBERT, OPT-350m), the linear outside the blocks that projects it to the model
    width, whose output rows are the hidden dims."""
    embedding = stack.get_input_embeddings() if hasattr(stack, "get_input_embeddings") else None
    if embedding is not None and not isinstance(embedding, nn.Embedding):
        embedding = next((m for m in embedding.modules() if isinstance(m, nn.Conv2d)), None)
    if isinstance(embedding, nn.Embedding) and embedding.embedding_dim != width:
        projections = [m for name, m in stack.named_modules()
                       if _is_linear(m) and not name.startswith(family.layers + ".")
                       and _in_out(m) == (embedding.embedding_dim, width)]
        embedding = projections[0] if len(projections) == 1 else embedding
    path = next((name for name, m in stack.named_modules() if m is embedding and name), None)
    if path is None:
        raise UnsupportedModelError(
            f"{type(stack).__name__} has no token embedding or patch projection to rank the "
            "hidden dims by")
    return path


def _rotary_pairing(stack: nn.Module, block: nn.Module) -> str | None:
    """How the stack's rotary embedding pairs the dims of q and k, read off its family's
    rotate_half: "half" (dims j and j + d/2, Llama), "interleaved" (dims 2j and 2j + 1, Cohere,
    GLM), or None without rotary embeddings.

    Raises:
        UnsupportedModelError: a rotary embedding of another pairing, or without a rotate_half
            (GPT-J).
    """
    if not any("Rotary" in type(m).__name__ for m in stack.modules()):
        return None
    rotate_half = getattr(sys.modules[type(block).__module__], "rotate_half", None)
    rotated = rotate_half(torch.arange(4.0)).tolist() if rotate_half else None
    pairing = {(-2.0, -3.0, 0.0, 1.0): "half", (-1.0, 0.0, -3.0, 2.0): "interleaved"}
    if rotated is None or tuple(rotated) not in pairing:
        raise UnsupportedModelError(
            f"{type(block).__name__} rotates q and k by a pairing other than rotate_half")
    return pairing[tuple(rotated)]


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
