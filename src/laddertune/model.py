"""LSTModel: a frozen backbone, run without autograd, and a trainable ladder side network.

The backbone is held, not registered: `parameters()`, `state_dict()` and an optimizer over them
see the side network only, so nothing can train, save or all-reduce the backbone by accident.
`model.to(...)` still moves both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.utils import ModelOutput

from . import backbones as bb
from . import quant
from .checkpoint import (
    backbone_fingerprint,
    check_fingerprint,
    check_sha256,
    load_json,
    load_weights,
    save_json,
    save_weights,
)
from .config import CONFIG_NAME, WEIGHTS_NAME, LSTConfig, default_side_layers
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    InputError,
    LSTConfigError,
    LSTWarning,
    MissingInputError,
    UnsupportedModelError,
)
from .held import HeldModules
from .late import LateRoute, block_calls, final_norms_agree
from .lm_loss import frozen_head_logits_and_loss
from .side import (
    GenericSideStack,
    Ladder,
    Projected,
    attach_ladder,
    drop_unused,
    generic_heads,
    set_attention_dropout,
)

# Keyword arguments forward accepts and ignores: transformers.Trainer and pipelines pass them.
_TOLERATED_KWARGS = {"num_items_in_batch", "return_dict", "output_attentions",
                     "output_hidden_states"}

_TASKS_BY_KIND = {
    bb.ENCODER: ("SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION"),
    bb.DECODER: ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", "FEATURE_EXTRACTION"),
    bb.ENCODER_DECODER: ("SEQ_CLS", "SEQ_2_SEQ_LM", "FEATURE_EXTRACTION"),
    bb.VISION: ("SEQ_CLS", "FEATURE_EXTRACTION"),
}


@dataclass
class LSTOutput(ModelOutput):
    """loss (given labels), logits (task head), last_hidden_state (side output at width d),
    cache (backbone and side key/value caches, for generation)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    cache: tuple | None = None


DEFAULT_SIDE = "default"   # the name of an LSTModel's own side network, as in PEFT


@dataclass
class SidesOutput:
    """What `LSTModel.forward_sides` returns: each side network's `LSTOutput` over the rows that
    named it (`rows[name]`, in batch order)."""

    outputs: dict[str, LSTOutput]
    rows: dict[str, list[int]]

    def logits_of_row(self, row: int) -> dict[str, torch.Tensor]:
        """The logits of batch row `row`, by the name of each side network that read it."""
        return {name: self.outputs[name].logits[rows.index(row)]
                for name, rows in self.rows.items() if row in rows}


def _rows_of_sides(side_names, batch: int) -> dict[str, list[int]]:
    """{name: the rows that name it}, from one name or a list of names per row."""
    if isinstance(side_names, str) or len(side_names) != batch:
        raise InputError(f"side_names needs one entry per row ({batch} rows): a name, or a list "
                         "of names, for each")
    rows: dict[str, list[int]] = {}
    for row, names in enumerate(side_names):
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise InputError(f"row {row} names no side network; give it at least one name")
        for name in dict.fromkeys(names):
            rows.setdefault(name, []).append(row)
    return rows


class LSTModel(HeldModules, nn.Module):
    """A backbone wrapped with a ladder side network. Build it with `get_lst_model`.

    Args:
        backbone: a Hugging Face `PreTrainedModel` (bare or with a task head). Never modified,
            except that a `config.backbone_dtype` other than float32 converts its weights in
            place, one block at a time, after the side network is initialised from them.
        config: the `LSTConfig`.
        init_data: examples for ``side_init="fisher"`` (an iterable of input dicts with labels).

    Raises:
        UnsupportedModelError: the model is not a Hugging Face transformer laddertune can read,
            or it cannot do `config.task_type`.
        LSTConfigError: `reduction_factor` or `side_layers` do not fit this backbone.
    """

    held_names = ("backbone",)

    def __init__(self, backbone, config: LSTConfig, init_data=None):
        super().__init__()
        _check_is_transformer(backbone)
        self._hold("backbone", backbone)  # held, not registered (module doc)
        self.config = config
        self.family = bb.detect_family(backbone)
        if config.task_type not in _TASKS_BY_KIND[self.family.kind]:
            raise UnsupportedModelError(
                f"task_type {config.task_type} needs another kind of model: "
                f"{backbone.config.model_type} is an {self.family.kind} model; use one of "
                f"{', '.join(_TASKS_BY_KIND[self.family.kind])}")
        self.stacks = bb.backbone_stacks(backbone, self.family)
        self._check_late_route(config)
        self.kept_layers = [self._kept_layers(config.side_layers, self.stacks[0], "side_layers")]
        if self.family.kind == bb.ENCODER_DECODER:
            self.kept_layers.append(self._kept_layers(
                config.decoder_side_layers, self.stacks[1], "decoder_side_layers"))
        elif config.decoder_side_layers is not None:
            raise LSTConfigError("decoder_side_layers is only for encoder-decoder models; "
                                 "use side_layers")
        # what each side block's ladder reads: the kept layers, then xLadder's extra blocks
        self.ladder_layers = [kept + self._xladder_layers(stack)
                              for kept, stack in zip(self.kept_layers, self.stacks)]

        width = bb.model_width(backbone.config)
        self.width, self.side_width = width, width // config.reduction_factor
        dtype = _side_dtype(backbone)
        self.ladders = nn.ModuleList(
            Ladder(width, self.side_width, kept, config.gate_temperature, config.gate_alpha_init,
                   learnable_gates=config.gate == "learnable", rank=config.ladder_rank,
                   per_channel_gates=config.gate_per_channel)
            for kept in self.ladder_layers)
        self.side_model, self.side_stacks, self.side_blocks = self._build_side(backbone, config)
        for name in ("head_residual", "head_gate"):
            if getattr(config, name) and config.task_type == "FEATURE_EXTRACTION":
                raise LSTConfigError(f"{name} mixes the backbone's state in before a head, but "
                                     "FEATURE_EXTRACTION has none; turn it off")
        self.up = nn.Linear(self.side_width, width)            # (b, t, d/r) -> (b, t, d)
        _init_up(self.up, config)
        # QST's output gate: one logit z per channel, sigmoid(z) weighs the backbone's state
        self.head_gate_logits = (nn.Parameter(torch.full((width,), config.head_gate_init))
                                 if config.head_gate else None)                       # (d,)
        self.late = None    # the late route's trained top layers (laddertune.late)
        if config.late_layers:
            self.late = LateRoute(self.stacks[0], self.family, config.late_layers,
                                  config.late_tuning, config.late_lora_rank)
            with frozen(backbone):
                if not final_norms_agree(self.stacks[0], self.family, self.late.final_norms):
                    raise UnsupportedModelError(
                        f"the late route cannot tell which norms {backbone.config.model_type} "
                        "applies after its last layer; set late_layers=0 for this model")
        self.head_dropout = nn.Dropout(config.dropout)
        self.classifier = None
        if config.task_type in ("SEQ_CLS", "TOKEN_CLS"):
            self.classifier = nn.Linear(width, config.num_labels)
        for child in self.children():  # not self.to(): that would also move the backbone
            child.to(device=_device_of(backbone), dtype=dtype)
        self.prune_indices = None  # what pruning chose (prune.PruneIndices), if it ran
        quant.check_convertible(backbone, config.backbone_dtype, config.side_init != "random")
        if config.side_init != "random":
            from .prune import init_side_from_backbone
            init_side_from_backbone(self, init_data)
        # after pruning, which reads the original weights; one block at a time (laddertune.quant)
        if config.backbone_dtype != "float32" and quant.conversion_is_deferred():
            self.backbone_compute_dtype = quant.compute_dtype(config.backbone_dtype,
                                                              _device_of(backbone))
        else:
            self.convert_backbone()

    # ---- construction -------------------------------------------------------------------------

    def convert_backbone(self) -> None:
        """Store the backbone as `config.backbone_dtype` (in place, a block at a time), its
        original fingerprint kept; nothing changes once it is."""
        self.backbone_compute_dtype = quant.convert_backbone(
            self.backbone, self.config.backbone_dtype, self._backbone_blocks(),
            fingerprint=self.fingerprint,
            keep_lm_head=self.config.task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"))

    def _backbone_blocks(self) -> list[nn.Module]:
        return [block for stack in self.stacks for block in bb.get_path(stack, self.family.layers)]

    def _check_late_route(self, config) -> None:
        if not config.late_layers:
            return
        if self.family.kind == bb.ENCODER_DECODER:
            raise UnsupportedModelError(
                f"the late route runs the top layers of one stack, and "
                f"{self.backbone.config.model_type} has an encoder and a decoder; set "
                "late_layers=0 for this model")
        depth = bb.num_layers(self.stacks[0], self.family)
        if not 1 <= config.late_layers < depth:
            raise LSTConfigError(f"late_layers={config.late_layers} leaves no layer below for "
                                 f"the side network: this backbone has {depth} layers; use 1 "
                                 f"to {depth - 1}")

    def _xladder_layers(self, stack) -> list[int]:
        """xLadder: 2 delta side blocks on top of the kept ones, two per backbone layer of the
        top delta, in order: [L - delta, L - delta, ..., L - 1, L - 1]."""
        delta, depth = self.config.xladder_depth, bb.num_layers(stack, self.family)
        if delta > depth:
            raise LSTConfigError(f"xladder_depth={delta} is deeper than this backbone's "
                                 f"{depth} layers; use 0 to {depth}")
        return [layer for layer in range(depth - delta, depth) for _ in range(2)]

    def _kept_layers(self, requested, stack, name) -> list[int]:
        depth = bb.num_layers(stack, self.family) - self.config.late_layers   # below the top K
        if requested is None and self.config.late_layers:
            kept = default_side_layers(depth)
        elif requested is None:
            reference = self.family.reference_side_layers
            kept = (reference and reference(self.backbone.config)) or default_side_layers(depth)
        else:
            kept = list(requested)
        bad = [i for i in kept if not 0 <= i < depth]
        if bad:
            below = " below the late route's top layers" if self.config.late_layers else ""
            raise LSTConfigError(
                f"{name} {bad} out of range: this backbone stack has layers 0..{depth - 1}"
                f"{below}")
        return kept

    def _build_side(self, backbone, config):
        """The side model of the backbone's own class at width d/r, else generic blocks."""
        reduced = bb.reduced_config(
            backbone.config, config.reduction_factor, self.ladder_layers[0],
            self.ladder_layers[1] if len(self.ladder_layers) > 1 else None, config.dropout,
            config.side_attention_dropout)
        if config.side_blocks in ("auto", "native"):
            try:
                with _quiet_transformers():
                    side_model = bb.side_model_class(backbone)(reduced)
            except Exception as err:  # noqa: BLE001 - any failure means: fall back or explain
                if config.side_blocks == "native" or self.family.kind == bb.ENCODER_DECODER:
                    raise UnsupportedModelError(
                        f"cannot build {backbone.config.model_type} blocks at width "
                        f"{self.side_width} ({err}); use side_blocks='generic' or another "
                        "reduction_factor") from None
            else:
                drop_unused(side_model, self.family.side_unused)
                set_attention_dropout(side_model, config.side_attention_dropout)
                if self.family.kind == bb.ENCODER_DECODER:
                    side_stacks = [side_model.get_encoder(), side_model.get_decoder()]
                    drop_unused(side_model, ("shared",))
                else:
                    side_stacks = [side_model]
                for stack, ladder in zip(side_stacks, self.ladders):
                    attach_ladder(stack, self.family, ladder)
                return side_model, side_stacks, "native"
        heads = generic_heads(self.side_width, bb._heads(backbone.config))
        side_model = GenericSideStack(self.ladders[0], self.side_width, heads, config.dropout,
                                      config.side_attention_dropout, self.family.kind)
        return side_model, [side_model], "generic"

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, token_type_ids=None,
                labels=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, cache=None, use_cache=False, return_loss=False,
                position_ids=None, backbone_hidden_states=None, side_names=None,
                **kwargs) -> LSTOutput:
        """Run backbone (no autograd) and side network; compute the loss when labels are given.

        `return_loss=True` asks for a loss and raises `MissingInputError` if labels are absent.
        `position_ids` (decoder-only models) go to backbone and side stack alike; generation
        passes them so left-padded prompts get the positions they would have unpadded.
        `backbone_hidden_states` (what `backbone_states` returns for these inputs, or a cache of
        it) stands in for the backbone: the side network reads them and the backbone never runs.
        `side_names` runs several side networks on one backbone pass (`forward_sides`).
        """
        if side_names is not None:
            return self.forward_sides(side_names, input_ids, attention_mask, pixel_values,
                                      token_type_ids, position_ids)
        if self._active_side_name() != DEFAULT_SIDE:
            return self.side(self._active_side_name())(
                input_ids, attention_mask, pixel_values, token_type_ids, labels,
                decoder_input_ids, decoder_attention_mask, encoder_outputs, cache, use_cache,
                return_loss, position_ids, backbone_hidden_states, **kwargs)
        unknown = set(kwargs) - _TOLERATED_KWARGS
        if unknown:
            raise InputError(f"forward got unknown argument(s) {sorted(unknown)}; "
                             "it takes input_ids, attention_mask, pixel_values, labels, ...")
        if return_loss and labels is None:
            raise MissingInputError(
                "a loss was asked for but no labels were given; pass labels=... to forward")
        inputs = self._stack_inputs(input_ids, attention_mask, pixel_values, token_type_ids)
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels, device=_device_of(self.backbone))
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        given = self._given_states(backbone_hidden_states)
        caches = cache if cache is not None else (None, None)
        if self.family.kind != bb.ENCODER_DECODER:
            side_hidden, cache_out, backbone_last = self._run_stack(0, inputs, caches, use_cache,
                                                                    states=given[0])
            pad_mask = attention_mask
            backbone_last = self._backbone_last(backbone_last, given[0])
        else:
            if encoder_outputs is None:
                encoder_outputs = self._run_encoder(inputs, given[0])
            backbone_memory, side_memory = encoder_outputs                 # (b, s, d), (b, s, d/r)
            dec_inputs = self._decoder_inputs(input_ids, attention_mask, labels,
                                              decoder_input_ids, decoder_attention_mask)
            side_hidden, cache_out, backbone_last = self._run_stack(
                1, dec_inputs, caches, use_cache,
                backbone_extra={"encoder_hidden_states": backbone_memory,
                                "encoder_attention_mask": attention_mask},
                side_extra={"encoder_hidden_states": side_memory,
                            "encoder_attention_mask": attention_mask}, states=given[1])
            pad_mask = dec_inputs["attention_mask"]
            cache_out = (cache_out, encoder_outputs)
            backbone_last = self._backbone_last(backbone_last, given[1])
        return self._task_output(side_hidden, pad_mask, labels, cache_out, backbone_last)

    @property
    def reads_given_states(self) -> bool:
        """Whether `forward(backbone_hidden_states=...)` can stand in for the backbone: not on
        the late route, whose top layers run on the backbone's own call."""
        return self.late is None

    @property
    def head_reads_backbone(self) -> bool:
        """Whether the head reads the backbone's final state (`head_residual`, `head_gate`)."""
        return self.config.head_residual or self.config.head_gate

    def _backbone_last(self, computed, given):
        """The backbone's final hidden state, (b, t, d), when the head reads it: as the
        backbone just computed it, or the entry after the last layer's in given states."""
        if not self.head_reads_backbone or computed is not None:
            return computed
        after_last = bb.num_layers(self.stacks[-1], self.family) + 1
        if len(given) <= after_last or given[after_last] is None:
            raise InputError("the head reads the backbone's final state (head_residual, "
                             "head_gate), which these backbone_hidden_states lack; pass "
                             "model.backbone_states(...) of this model")
        return given[after_last]

    @torch.no_grad()
    def backbone_states(self, input_ids=None, attention_mask=None, pixel_values=None,
                        token_type_ids=None, labels=None, decoder_input_ids=None,
                        decoder_attention_mask=None) -> tuple[tuple, ...]:
        """What the side network reads from the backbone for these inputs, one tuple per
        stack: the embeddings at index 0 and the output of kept layer l at index l + 1,
        (b, t, d) each, and the final state at L + 1 when the head reads it; the layers nothing
        reads are None (`ladder_inputs`). Pass it back as `forward(backbone_hidden_states=)`.
        """
        inputs = self._stack_inputs(input_ids, attention_mask, pixel_values, token_type_ids)
        out, states = self.run_backbone(0, **inputs)
        read = [self._read_only(0, states)]
        if self.family.kind == bb.ENCODER_DECODER:
            dec_inputs = self._decoder_inputs(input_ids, attention_mask, labels,
                                              decoder_input_ids, decoder_attention_mask)
            out, dec_states = self.run_backbone(
                1, **dec_inputs, encoder_hidden_states=out.last_hidden_state,
                encoder_attention_mask=attention_mask)
            read.append(self._read_only(1, dec_states))
        if self.head_reads_backbone:          # what the head reads, after the last layer
            read[-1] = (*read[-1], out.last_hidden_state)
        return tuple(read)

    def ladder_inputs(self, index: int = 0) -> list[int]:
        """Indices of the states of stack `index` the side network reads: 0 (embeddings), then
        l + 1 for each layer l a ladder reads (the kept layers, and xLadder's top ones); and
        L + 1, the final state after the last stack's L layers, when the head reads it
        (`head_residual`, `head_gate`). What `backbone_states` returns, and a cache stores."""
        read = [0, *sorted({layer + 1 for layer in self.ladder_layers[index]})]
        if self.head_reads_backbone and index == len(self.stacks) - 1:
            read.append(bb.num_layers(self.stacks[index], self.family) + 1)
        return read

    def _read_only(self, index: int, states) -> tuple:
        wanted = set(self.ladder_inputs(index))
        return tuple(state if i in wanted else None for i, state in enumerate(states))

    def _given_states(self, given) -> tuple:
        """`backbone_hidden_states` as one entry per stack (None: run the backbone)."""
        stacks = len(self.stacks)
        if given is None:
            return (None,) * stacks
        if stacks == 1 and len(given) and isinstance(given[0], torch.Tensor):
            given = (given,)                 # a single stack's tuple, passed bare
        if len(given) != stacks or any(
                len(states) <= max(self.ladder_inputs(i)) or any(
                    states[j] is None for j in self.ladder_inputs(i))
                for i, states in enumerate(given)):
            raise InputError(
                "backbone_hidden_states does not hold what the ladders read (the embeddings and "
                f"kept layers {self.kept_layers}); pass model.backbone_states(...) for the "
                "same inputs")
        return tuple(given)

    def _decoder_inputs(self, input_ids, attention_mask, labels, decoder_input_ids,
                        decoder_attention_mask) -> dict:
        """The decoder's inputs: given, or the targets shifted right (a classifier reads its
        own source)."""
        if decoder_input_ids is None:
            source = labels if self.config.task_type == "SEQ_2_SEQ_LM" else input_ids
            if source is None:
                raise MissingInputError("a text-to-text forward needs labels or "
                                        "decoder_input_ids; pass one of them")
            decoder_input_ids = self.shift_right(source)
            if self.config.task_type != "SEQ_2_SEQ_LM":
                decoder_attention_mask = attention_mask
        self._check_token_ids(decoder_input_ids)
        return {"input_ids": decoder_input_ids, "attention_mask": decoder_attention_mask}

    def _stack_inputs(self, input_ids, attention_mask, pixel_values, token_type_ids) -> dict:
        if self.family.kind == bb.VISION:
            if pixel_values is None:
                raise MissingInputError(
                    f"{self.backbone.config.model_type} is a vision model; pass pixel_values")
            return {"pixel_values": pixel_values}
        if input_ids is None:
            raise MissingInputError("this text model needs input_ids; pass input_ids=...")
        self._check_token_ids(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return inputs

    def _check_token_ids(self, ids: torch.Tensor) -> None:
        if not ids.numel():
            return
        vocab = self.backbone.get_input_embeddings().num_embeddings
        low, high = (int(v) for v in torch.aminmax(ids))  # one device sync per forward
        if high >= vocab or low < 0:
            bad = high if high >= vocab else low
            raise InputError(
                f"token id {bad} is outside the backbone's vocabulary of {vocab}; use the "
                "backbone's own tokenizer, or call backbone.resize_token_embeddings after adding "
                "tokens")

    def _run_encoder(self, inputs, states=None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Backbone and side encoder outputs of an encoder-decoder model: (b, s, d), (b, s, d/r);
        with given `states` the backbone does not run and its output is None."""
        side_hidden, _, backbone_hidden = self._run_stack(0, inputs, (None, None), False,
                                                          states=states)
        return backbone_hidden, side_hidden

    def _run_stack(self, index, inputs, caches, use_cache, backbone_extra=None, side_extra=None,
                   states=None):
        """One backbone stack under no_grad (unless its `states` are given), then its side stack
        fed by the ladder.

        Returns (side output (b, t, d/r), (backbone cache, side cache) or None, backbone output
        or None when `states` were given).
        """
        side_stack, ladder = self.side_stacks[index], self.ladders[index]
        backbone_cache, side_cache = caches
        cache_kwargs = {}
        if self.family.kind in (bb.DECODER,) or index == 1:
            cache_kwargs = {"use_cache": use_cache, "cache": backbone_cache}
        if self.late is not None:   # the copies keep no cache: generation reruns the prompt
            cache_kwargs = {"use_cache": False} if cache_kwargs else {}
        out, calls = None, None
        if states is None:
            top = bb.get_path(self.stacks[index], self.family.layers)[
                self.late.first_layer:] if self.late is not None else []
            with block_calls(top) as calls:
                out, states = self.run_backbone(index, **inputs, **(backbone_extra or {}),
                                                **cache_kwargs)
        elif self.late is not None:
            raise InputError("the late route runs its top layers on the backbone's own call, "
                             "so it cannot read given backbone_hidden_states; run it on inputs")
        backbone_hidden = None if out is None else out.last_hidden_state
        new_cache = None
        if self.side_blocks == "generic":   # no cache: generation recomputes
            side_hidden = side_stack(states, inputs.get("attention_mask"))
        else:
            if "cache" in cache_kwargs:
                cache_kwargs["cache"] = side_cache
            with ladder.reading(states):
                side_out = side_stack(**inputs, **(side_extra or {}), **cache_kwargs,
                                      return_dict=True)
            side_hidden = side_out.last_hidden_state                       # (b, t, d/r)
            if use_cache and out is not None and self.late is None:
                new_cache = (out.cache, side_out.cache)
        if self.late is not None:   # the side output rejoins the stream before the top K layers
            stream = states[self.late.first_layer].to(side_hidden.dtype)  # (b, t, d)
            backbone_hidden = self.late(stream + self.up(side_hidden), calls)
        return side_hidden, new_cache, backbone_hidden

    def run_backbone(self, index: int, **inputs) -> tuple[ModelOutput, tuple[torch.Tensor, ...]]:
        """Backbone stack `index` without autograd: its output and the states its ladder reads,
        the embeddings then every layer's output, L+1 tensors of (b, t, d).

        The backbone runs in eval mode unless `backbone_dropout` is on and the model trains. With
        `ladder_last_layer="raw"` the last state is the last block's own output, taken before
        the stack's final norm (most families' `hidden_states[-1]` is taken after it).
        """
        stack = self.stacks[index]
        last = bb.num_layers(stack, self.family) - 1
        read_raw = self.config.ladder_last_layer == "raw" and last in self.ladder_layers[index]
        last_block = bb.get_path(stack, self.family.layers)[last]
        recording = block_outputs(last_block) if read_raw else contextlib.nullcontext()
        dropout = self.config.backbone_dropout and self.training
        with frozen(self.backbone, dropout=dropout), recording as raw:
            out = stack(**inputs, output_hidden_states=True, return_dict=True)
        states = out.hidden_states
        if read_raw:
            states = (*states[:-1], raw[-1])
        return out, states

    def _task_output(self, side_hidden, pad_mask, labels, cache, backbone_last=None
                     ) -> LSTOutput:
        task = self.config.task_type
        mixed = self.head_reads_backbone
        if self.late is not None:   # the late route's top layers made the state the head reads
            return self._head(backbone_last, pad_mask, labels, cache)
        if task == "SEQ_CLS":
            pooled = self._pool(side_hidden, pad_mask)                     # (b, d/r)
            if mixed:         # the backbone's pooled state, mixed with the side network's
                up = self._mix_backbone(self._pool(backbone_last, pad_mask), self.up(pooled))
            else:
                up = torch.tanh(self.up(pooled))                             # (b, d)
            logits = self.classifier(self.head_dropout(up))                  # (b, num_labels)
            return LSTOutput(self._classification_loss(logits, labels), logits, None, cache)
        up = self.up(side_hidden)                                            # (b, t, d)
        if mixed:
            up = self._mix_backbone(backbone_last, up)                       # (b, t, d)
        if task == "TOKEN_CLS":
            features = up if mixed else torch.tanh(up)
            logits = self.classifier(self.head_dropout(features))           # (b, t, num_labels)
            return LSTOutput(self._classification_loss(logits, labels), logits, up, cache)
        if task == "FEATURE_EXTRACTION":
            return LSTOutput(None, None, up, cache)
        return self._lm_head(up, labels, cache)

    def _head(self, state, pad_mask, labels, cache) -> LSTOutput:
        """The task head on a state of the backbone's kind, (b, t, d), as the pretrained
        model's own head would read it: pooled for SEQ_CLS, with no tanh."""
        task = self.config.task_type
        if task == "SEQ_CLS":
            logits = self.classifier(self.head_dropout(self._pool(state, pad_mask)))  # (b, k)
            return LSTOutput(self._classification_loss(logits, labels), logits, None, cache)
        if task == "TOKEN_CLS":
            logits = self.classifier(self.head_dropout(state))              # (b, t, num_labels)
            return LSTOutput(self._classification_loss(logits, labels), logits, state, cache)
        if task == "FEATURE_EXTRACTION":
            return LSTOutput(None, None, state, cache)
        return self._lm_head(state, labels, cache)

    def _lm_head(self, up, labels, cache) -> LSTOutput:
        """The backbone's frozen LM head on (b, t, d): logits (b, t, vocab) and the loss."""
        task = self.config.task_type
        weight, bias, scale = bb.lm_head(self.backbone, self.family)
        weight = quant.dense(weight, up.dtype)          # a bf16 backbone computing in fp32
        bias = None if bias is None else bias.to(up.dtype)
        if labels is not None:
            labels = self._check_label_shape(labels, up.shape[:-1], "token")
            self._check_label_range(labels, weight.shape[0])
        # the frozen head's (tokens x vocab) logits are not kept for backward (see lm_loss)
        logits, loss = frozen_head_logits_and_loss(up * scale, weight, bias, labels,
                                                   shift=task == "CAUSAL_LM")  # (b, t, vocab)
        return LSTOutput(loss, logits, up, cache)

    def _mix_backbone(self, backbone, side):
        """What the head reads, (..., d) both: h + up(side) (`head_residual`), or QST's
        sigmoid(z) * h + (1 - sigmoid(z)) * up(side), per channel (`head_gate`)."""
        if self.head_gate_logits is None:
            return backbone + side
        gate = torch.sigmoid(self.head_gate_logits)                          # (d,)
        return gate * backbone + (1 - gate) * side

    def _pool(self, hidden, pad_mask):
        """One vector per sequence: (b, t, w) -> (b, w), side (d/r) or backbone (d) width."""
        pooling = self.family.pooling if self.config.pooling == "auto" else self.config.pooling
        if pooling == "mean":
            if pad_mask is None:
                return hidden.mean(1)
            weights = pad_mask.to(hidden.dtype)[..., None]                 # (b, t, 1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        if pooling == "first":
            return hidden[:, 0]
        if pad_mask is None:
            return hidden[:, -1]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (pad_mask.to(positions.dtype) * positions).argmax(-1)      # last non-padding index
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def _classification_loss(self, logits, labels):
        if labels is None:
            return None
        if self.config.num_labels == 1:
            if labels.numel() != logits.numel():
                raise InputError(f"labels have shape {tuple(labels.shape)} but this regression "
                                 f"model expects {tuple(logits.shape[:-1])}; pass one target each")
            return F.mse_loss(logits.float(), labels.to(torch.float32).reshape(logits.shape))
        unit = "sequence" if self.config.task_type == "SEQ_CLS" else "token"
        labels = self._check_label_shape(labels, logits.shape[:-1], unit)
        self._check_label_range(labels, self.config.num_labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100)

    @staticmethod
    def _check_label_shape(labels, expected, unit) -> torch.Tensor:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputError(f"labels are {labels.dtype}; pass integer class ids (or set "
                             "LSTConfig(num_labels=1) for regression on float targets)")
        if labels.shape != expected:
            raise InputError(f"labels have shape {tuple(labels.shape)} but this model expects "
                             f"{tuple(expected)}; pass one label per {unit}")
        return labels.long()

    @staticmethod
    def _check_label_range(labels, num_classes):
        valid = labels[labels != -100]
        if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
            raise InputError(
                f"label {int(valid.max() if valid.max() >= num_classes else valid.min())} is out "
                f"of range 0..{num_classes - 1}; set LSTConfig(num_labels=...) to the number of "
                "classes or fix the labels")

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens: int = 20,
                 num_beams: int = 1, **kwargs) -> torch.Tensor:
        """Greedy, sampled or beam-search decoding with key/value caches; see
        `laddertune.generation`."""
        if self._active_side_name() != DEFAULT_SIDE:
            return self.side(self._active_side_name()).generate(
                input_ids, attention_mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                **kwargs)
        from .generation import generate
        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        num_beams=num_beams, **kwargs)

    def shift_right(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from targets: start token, then the targets shifted one to the right."""
        config = self.backbone.config
        start = config.decoder_start_token_id
        if start is None:
            start = config.pad_token_id
        shifted = ids.new_full(ids.shape, start)
        shifted[:, 1:] = ids[:, :-1]
        return shifted.masked_fill(shifted == -100, config.pad_token_id)

    # ---- several side networks on one backbone ------------------------------------------------
    # This model's own side network is DEFAULT_SIDE; the others are LSTModels on the same
    # backbone object (no copy), held outside the module tree like the backbone, so
    # `parameters()`, `state_dict()` and `save_pretrained` stay this side network's own.

    def _extra_sides(self) -> dict[str, LSTModel]:
        return self.__dict__.setdefault("_sides", {})

    def _apply(self, fn, recurse=True):
        self._forget_side_shapes()
        super()._apply(fn, recurse)
        for side in self._extra_sides().values():
            nn.Module._apply(side, fn, recurse)   # their backbone is ours: moved once, above
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for side in self._extra_sides().values():
            side.train(mode)
        return self

    def _active_side_name(self) -> str:
        return self.__dict__.get("_active_side", DEFAULT_SIDE)

    @property
    def side_names(self) -> list[str]:
        """The side networks this backbone serves: DEFAULT_SIDE (this model's own) first."""
        return [DEFAULT_SIDE, *self._extra_sides()]

    @property
    def active_side(self) -> str:
        """The side network a plain `forward` or `generate` runs (`set_side`)."""
        return self._active_side_name()

    def side(self, name: str) -> LSTModel:
        """The side network `name`, as an LSTModel over this model's backbone."""
        if name == DEFAULT_SIDE:
            return self
        sides = self._extra_sides()
        if name not in sides:
            raise InputError(f"no side network named {name!r}; this model has "
                             f"{', '.join(map(repr, self.side_names))} (add_side or load_side "
                             "adds one)")
        return sides[name]

    def add_side(self, name: str, config: LSTConfig, init_data=None) -> LSTModel:
        """A new, untrained side network `name` on this model's backbone; returns it (train it
        as any LSTModel, through the returned model or after `set_side(name)`)."""
        return self._keep_side(name, LSTModel(self.backbone, config, init_data=init_data))

    def load_side(self, name: str, directory: str | Path) -> LSTModel:
        """The side network `save_pretrained` wrote to `directory`, added as `name` for
        inference (eval mode, frozen); returns it.

        Raises:
            BackboneMismatchError: it was trained on another backbone (fingerprint).
            CheckpointError: the folder is missing a file or damaged.
        Warns:
            LSTWarning: it was trained with the backbone in another dtype.
        """
        self._check_new_name(name)
        side = LSTModel.from_pretrained(self.backbone, directory)
        trained = load_json(Path(directory) / CONFIG_NAME).get("backbone_dtype")
        now = str(next(self.backbone.parameters()).dtype).removeprefix("torch.")
        if trained and str(trained).removeprefix("torch.") != now:
            warnings.warn(f"side network {name!r} ({directory}) was trained with the backbone in "
                          f"{trained} and now reads it in {now}; its outputs may differ "
                          "slightly", LSTWarning, stacklevel=2)
        return self._keep_side(name, side)

    def delete_side(self, name: str) -> None:
        """Forget the side network `name` (not DEFAULT_SIDE)."""
        self.side(name)
        if name == DEFAULT_SIDE:
            raise InputError("the default side network is this model's own; it cannot be "
                             "deleted")
        del self._extra_sides()[name]
        self._forget_side_shapes()
        if self._active_side_name() == name:
            self.set_side(DEFAULT_SIDE)

    def set_side(self, name: str) -> None:
        """Make `name` the side network a plain `forward` and `generate` run."""
        self.side(name)
        self.__dict__["_active_side"] = name

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or name in self.side_names:
            raise InputError(f"side network name {name!r} is empty or taken; pick a new name "
                             f"(taken: {', '.join(self.side_names)})")

    def _keep_side(self, name: str, side: LSTModel) -> LSTModel:
        self._check_new_name(name)
        if side.family.kind == bb.ENCODER_DECODER:
            raise UnsupportedModelError("several side networks share one backbone pass on "
                                        "encoder-only, decoder-only and vision models; "
                                        "load each text-to-text run as its own LSTModel")
        self._extra_sides()[name] = side
        self._forget_side_shapes()
        return side

    def forward_sides(self, side_names, input_ids=None, attention_mask=None, pixel_values=None,
                      token_type_ids=None, position_ids=None) -> SidesOutput:
        """Several side networks over one backbone pass of the batch.

        Args:
            side_names: one entry per row: a side network's name, or a list of names (every
                one of them reads that row's backbone states; the backbone still runs once).

        Returns:
            `SidesOutput`: per side network, its output over the rows that named it.
        """
        rows = _rows_of_sides(side_names, self._batch_size(input_ids, pixel_values))
        sides = {name: self.side(name) for name in rows}
        inputs = self._stack_inputs(input_ids, attention_mask, pixel_values, token_type_ids)
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        states, raw_last = self._shared_backbone_states(inputs)
        batch = self._batch_size(input_ids, pixel_values)
        picked_inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = {}
        shapes = {name: self._side_shape(name) for name in rows}
        for group in _same_shape_groups(shapes):
            side_states = list(states)
            if raw_last is not None and sides[group[0]].reads_raw_last():
                side_states[-2] = raw_last
            same_rows = all(rows[name] == rows[group[0]] for name in group)
            if (len(group) > 1 and _can_stack([sides[name] for name in group])
                    and (same_rows or self._gathers_rows(shapes[group[0]].key,
                                                         sides[group[0]]))):
                bank = self._side_bank(shapes[group[0]].key)
                group = bank.order(group)
                outputs.update(_stacked_outputs(
                    sides[group[0]], bank.take(group), group,
                    [rows[name] for name in group], picked_inputs, tuple(side_states), batch))
                continue
            # alone in its shape, or a group the stacked path cannot take: one call each
            for name in group:
                picked = dict(picked_inputs)
                name_states = side_states
                if len(rows[name]) < batch:                  # a side named on some rows only
                    index = torch.tensor(rows[name], device=states[0].device)
                    picked = {k: v.index_select(0, index) for k, v in picked.items()}
                    name_states = [s.index_select(0, index) for s in side_states]
                outputs[name] = sides[name](**picked, backbone_hidden_states=tuple(name_states))
        return SidesOutput({name: outputs[name] for name in rows}, rows)

    def _side_shape(self, name: str) -> _SideShape:
        """`_SideShape` of side network `name`, kept until the sides or their weights' places
        change (add, load, delete, `to`)."""
        shapes = self.__dict__.setdefault("_side_shapes", {})
        if name not in shapes:
            shapes[name] = _SideShape.of(self.side(name))
        return shapes[name]

    def _forget_side_shapes(self) -> None:
        self.__dict__.pop("_side_shapes", None)
        self.__dict__.pop("_row_gather_probes", None)
        self.__dict__.pop("_side_banks", None)

    def _side_bank(self, key: tuple) -> _SideBank:
        """The `_SideBank` of every side network of shape `key`, stacked once until the sides
        or their weights' places change."""
        banks = self.__dict__.setdefault("_side_banks", {})
        if key not in banks or not banks[key].current():
            names = [name for name in self.side_names if self._side_shape(name).key == key]
            banks[key] = _SideBank(names, [self._side_shape(name) for name in names])
        return banks[key]

    def _gathers_rows(self, key: tuple, template: LSTModel) -> bool:
        """`_takes_4d_masks(template)`, probed once per shape `key`."""
        probed = self.__dict__.setdefault("_row_gather_probes", {})
        if key not in probed:
            probed[key] = _takes_4d_masks(template)
        return probed[key]

    def _output_from_states(self, inputs: dict, states: tuple, pad_mask, projected=None
                            ) -> LSTOutput:
        """The task output of this side network from given backbone states, without the checks
        `forward` makes on them (`forward_sides` has made them once for the whole batch).
        `pad_mask` (b, t) pools; `inputs["attention_mask"]` may be a 4D mask for attention;
        `projected`, when given, is what the ladder's down-projections make of `states`."""
        ladder_inputs = states if projected is None else Projected(projected)
        side_hidden, _, _ = self._run_stack(0, inputs, (None, None), False,
                                            states=ladder_inputs)
        return self._task_output(side_hidden, pad_mask, None, None,
                                 self._backbone_last(None, states))

    def reads_raw_last(self) -> bool:
        """Whether this side network's ladder reads the last block's output before the final
        norm (`ladder_last_layer="raw"`)."""
        last = bb.num_layers(self.stacks[0], self.family) - 1
        return self.config.ladder_last_layer == "raw" and last in self.ladder_layers[0]

    def _shared_backbone_states(self, inputs) -> tuple[tuple, torch.Tensor | None]:
        """One backbone pass for every side network: the embeddings, every layer's output and
        the final state after them (what `head_residual` reads), (b, t, d) each; and the last
        block's raw output when a side network reads it, else None."""
        stack = self.stacks[0]
        last_block = bb.get_path(stack, self.family.layers)[bb.num_layers(stack, self.family) - 1]
        wants_raw = any(self.side(name).reads_raw_last() for name in self.side_names)
        recording = block_outputs(last_block) if wants_raw else contextlib.nullcontext()
        with frozen(self.backbone), recording as raw:
            out = stack(**inputs, output_hidden_states=True, return_dict=True)
        return (*out.hidden_states, out.last_hidden_state), (raw[-1] if wants_raw else None)

    @staticmethod
    def _batch_size(input_ids, pixel_values) -> int:
        given = input_ids if input_ids is not None else pixel_values
        if given is None:
            raise MissingInputError("forward_sides needs input_ids (or pixel_values)")
        return given.shape[0]

    # ---- parameters ---------------------------------------------------------------------------

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter LST trains, by name: side blocks, ladders, gates, up-projection, head."""
        return dict(self.named_parameters())

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: `weight_decay` for weight matrices, none for biases, norm
        weights and (unless `config.gate_weight_decay`) the gate alphas, as HF Trainer and
        nanoGPT do. Use as ``torch.optim.AdamW(model.parameter_groups(0.01), lr=3e-3)``.

        Parameters with requires_grad off are left out.
        """
        gates = {id(ladder.gate_alphas) for ladder in self.ladders}

        def decays(param: nn.Parameter) -> bool:
            if id(param) in gates:
                return self.config.gate_weight_decay
            return param.dim() >= 2             # matrices; biases and norm weights are vectors

        return decay_groups(self.parameters(), weight_decay, decays)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        side = sum(p.numel() for p in self.parameters())
        backbone = sum(p.numel() for p in {id(p): p for p in self.backbone.parameters()}.values())
        return trainable, backbone + side

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ---- save / load --------------------------------------------------------------------------

    def fingerprint(self) -> dict:
        """Of the backbone's original weights, taken before a `backbone_dtype` converted them."""
        return (quant.original_fingerprint(self.backbone)
                or backbone_fingerprint(self.backbone.config, self.stacks))

    def save_pretrained(self, save_directory: str | Path, **_) -> None:
        """Write lst_config.json and lst_model.safetensors (side network only) atomically."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone_config = self.backbone.config
        from . import __version__
        meta = {
            **self.config.to_dict(),
            "base_model_name_or_path": getattr(backbone_config, "_name_or_path", "") or "",
            "revision": getattr(backbone_config, "_commit_hash", None),
            "model_type": backbone_config.model_type,
            "backbone_fingerprint": self.fingerprint(),
            "resolved_side_layers": self.kept_layers,
            "side_blocks_built": self.side_blocks,
            "backbone_compute_dtype": self.backbone_compute_dtype,
            "laddertune_version": __version__,
        }
        meta["weights_sha256"] = save_weights(self.state_dict(), directory / WEIGHTS_NAME)
        save_json(meta, directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, backbone, model_id: str | Path, is_trainable: bool = False
                        ) -> LSTModel:
        """Rebuild a saved side network on `backbone` after checking it is the same backbone.

        Args:
            backbone: the backbone the side network was trained on.
            model_id: the folder written by `save_pretrained`.
            is_trainable: as in PEFT: False (default) returns the model in eval mode with its
                parameters frozen, for inference; True returns it ready to train further.

        Raises:
            CheckpointError: the folder is missing a file, or a file is truncated or corrupted.
            BackboneMismatchError: the folder was saved for a different backbone.
        """
        directory = Path(model_id)
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is not a folder; pass the folder written by "
                                  "save_pretrained")
        meta = load_json(directory / CONFIG_NAME)
        missing = [key for key in _SAVED_KEYS if key not in meta]
        if missing:
            raise CheckpointError(
                f"{directory / CONFIG_NAME} lacks {missing[0]!r}, so it was not written by "
                "save_pretrained or was edited; restore it or save the model again")
        _check_is_transformer(backbone)
        if meta.get("model_type") not in (None, backbone.config.model_type):
            raise BackboneMismatchError(
                f"{directory} holds a side network for a {meta['model_type']} backbone, not "
                f"{backbone.config.model_type}; pass the backbone it was trained on")
        resolved = meta.get("resolved_side_layers") or [None, None]
        stored = quant.stored_dtype(backbone)   # used as given: loading never converts it
        config = LSTConfig.from_dict({
            "ladder_last_layer": "normed",   # folders saved before the switch existed
            **meta, "side_init": "random", "side_blocks": meta.get("side_blocks_built", "auto"),
            "backbone_dtype": stored,
            "side_layers": resolved[0],
            "decoder_side_layers": resolved[1] if len(resolved) > 1 else None})
        model = cls(backbone, config)
        _warn_other_dtype(meta, model)
        check_fingerprint(meta.get("backbone_fingerprint", {}), model.fingerprint(), str(directory))
        if "weights_sha256" in meta and (directory / WEIGHTS_NAME).is_file():
            check_sha256(directory / WEIGHTS_NAME, meta["weights_sha256"])
        state = load_weights(directory / WEIGHTS_NAME)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or bad_shape:
            raise CheckpointError(
                f"{directory / WEIGHTS_NAME} does not match its config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}); save the model again")
        model.load_state_dict(state)
        # report the layers as the user chose them (None = the paper's rule), not as resolved
        model.config = dataclasses.replace(config, side_layers=meta.get("side_layers"),
                                           decoder_side_layers=meta.get("decoder_side_layers"))
        if not is_trainable:
            model.eval().requires_grad_(False)
        return model


def _warn_other_dtype(meta: dict, model: LSTModel) -> None:
    """Warn when the side network meets a backbone stored or computing in other dtypes than
    the ones it was trained with: its outputs then differ a little."""
    trained = (meta.get("backbone_dtype", "float32"),
               meta.get("backbone_compute_dtype", "float32"))
    now = (model.config.backbone_dtype, model.backbone_compute_dtype)
    if trained != now:
        warnings.warn(f"this side network was trained on a {trained[0]} backbone computing in "
                      f"{trained[1]}; this backbone is {now[0]} computing in {now[1]}, so the "
                      "outputs differ a little from training's",
                      LSTWarning, stacklevel=3)


def _init_up(up: nn.Linear, config: LSTConfig) -> None:
    """`config.up_init`: zero (a correction that starts at none), PyTorch's default (as QST and
    the reference code), or auto: zero under head_residual or the late route, else PyTorch's
    default. (Normal weights of std 0.01, the auto start before, left the classifier's
    gradient to the side network scaled by 0.01: on sentence pairs the head sat at chance for
    one to two epochs; benchmarks/results/frontier/plateau.md.)"""
    choice = config.up_init
    if choice == "auto":   # a correction to a backbone state starts at none
        choice = "zero" if config.head_residual or config.late_layers else "default"
    if choice == "default":
        return                                  # nn.Linear's own kaiming-uniform start
    nn.init.normal_(up.weight, std=0.01 if choice == "small" else 0.0)
    nn.init.zeros_(up.bias)


# LSTConfig fields that change training only, never what a trained side network computes
_TRAINING_ONLY_FIELDS = ("gate_alpha_init", "side_init", "prune_samples", "prune_seed", "dropout",
                         "side_attention_dropout", "backbone_dropout", "gate_weight_decay",
                         "backbone_dtype")


@dataclass
class _SideShape:
    """What must match for side networks to run as one stacked computation (`key`: every
    config field that changes the computation, every weight's name, shape and dtype), and the
    weights themselves, listed once: walking the module tree on every batch costs ~1 ms a side.
    """

    key: tuple
    params: list[tuple[str, torch.Tensor]]
    buffers: list[tuple[str, torch.Tensor]]

    @classmethod
    def of(cls, side: LSTModel) -> _SideShape:
        config = {k: v for k, v in dataclasses.asdict(side.config).items()
                  if k not in _TRAINING_ONLY_FIELDS}
        params, buffers = list(side.named_parameters()), list(side.named_buffers())
        weights = tuple((name, tuple(t.shape), t.dtype) for name, t in (*params, *buffers))
        return cls((type(side.side_model), side.side_blocks, repr(sorted(config.items())),
                    weights), params, buffers)


class _SideBank:
    """Every side network of one shape with its weights stacked to (n, ...) once, and each
    side's own parameters and buffers then views of its row: one copy of the weights, which
    a stacked call reads without stacking them again, and which stay current through in-place
    changes (an optimizer step, `load_state_dict`). A tensor given other storage since (its
    `.data` replaced) makes `current` false, and the bank is stacked again. (`torch.save` of
    one side's state_dict writes the whole stacked storage; laddertune's safetensors files
    hold each side's own rows only.)
    """

    def __init__(self, names: list[str], shapes: list[_SideShape]):
        self.position = {name: i for i, name in enumerate(names)}
        tensors = [[t for _, t in (*shape.params, *shape.buffers)] for shape in shapes]
        self.stacked = []
        with torch.no_grad():
            for rows in zip(*tensors):
                stacked = torch.stack(rows)                                  # (n, ...)
                for side, tensor in enumerate(rows):  # their own copies go now, one at a time
                    tensor.data = stacked[side]
                self.stacked.append(stacked)
        self.tensors = tensors
        self.addresses = [[t.data_ptr() for t in side_tensors] for side_tensors in tensors]
        self.param_names = [f"side.{name}" for name, _ in shapes[0].params]
        self.buffer_names = [f"side.{name}" for name, _ in shapes[0].buffers]

    def current(self) -> bool:
        """Whether every side's tensors still view the rows they were given."""
        return all([t.data_ptr() for t in side_tensors] == addresses
                   for side_tensors, addresses in zip(self.tensors, self.addresses))

    def take(self, names: list[str]) -> tuple[dict, dict]:
        """(params, buffers) of `names`, in bank order (`order`), stacked to (k, ...): views
        when they are one run of rows of the bank, else a copy of their rows."""
        rows = [self.position[name] for name in names]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            stacked = [t[rows[0]:rows[0] + len(rows)] for t in self.stacked]
        else:
            index = torch.tensor(rows, device=self.stacked[0].device)
            stacked = [t.index_select(0, index) for t in self.stacked]
        count = len(self.param_names)
        return (dict(zip(self.param_names, stacked[:count])),
                dict(zip(self.buffer_names, stacked[count:])))

    def order(self, names: list[str]) -> list[str]:
        """`names` in bank order, so the first k of the bank are taken as a view."""
        return sorted(names, key=self.position.__getitem__)


def _same_shape_groups(shapes: dict[str, _SideShape]) -> list[list[str]]:
    """The names in `shapes`, grouped by equal `key`, in first-seen order."""
    groups: dict[tuple, list[str]] = {}
    for name, shape in shapes.items():
        groups.setdefault(shape.key, []).append(name)
    return list(groups.values())


def _can_stack(sides: list[LSTModel]) -> bool:
    """Stacked weights carry no gradient and vmap draws no per-task dropout: inference only.
    Training, a side network in train mode, or a task without class logits (language
    modelling, features) takes the per-side loop."""
    return (not torch.is_grad_enabled() and not any(side.training for side in sides)
            and sides[0].config.task_type in ("SEQ_CLS", "TOKEN_CLS"))


def _takes_4d_masks(side: LSTModel) -> bool:
    """Whether side networks of this shape can each read their own rows in one stacked call:
    whether the side stack, given `_attention_mask_4d`'s mask, computes what it computes from
    the 2D mask. Families build masks their own way (DeBERTa's, CLIP's causal text tower,
    OPT's, sliding windows), so this is probed on a padded toy batch rather than assumed.
    Shapes that fail stack only when every side reads the same rows (k tasks on one text)."""
    config = side.side_stacks[0].config if side.side_blocks == "native" else None
    if config is None or side.family.kind not in (bb.ENCODER, bb.DECODER):
        return False
    layer_types = getattr(config, "layer_types", None) or ()
    if (getattr(config, "sliding_window", None) is not None
            or any("sliding" in str(kind) for kind in layer_types)):
        return False
    device = _device_of(side.backbone)
    dtype = next(side.parameters()).dtype
    pad_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], device=device)  # (2, 6)
    ids = torch.zeros_like(pad_mask)
    generator = torch.Generator(device=device).manual_seed(0)
    states = tuple(torch.randn(2, 6, side.width, generator=generator, device=device, dtype=dtype)
                   for _ in range(bb.num_layers(side.stacks[0], side.family) + 2))
    mask_4d = _attention_mask_4d(side, pad_mask[None], dtype)[0]
    try:
        with torch.no_grad():
            plain = side._run_stack(0, {"input_ids": ids, "attention_mask": pad_mask},
                                    (None, None), False, states=states)[0]
            given = side._run_stack(0, {"input_ids": ids, "attention_mask": mask_4d},
                                    (None, None), False, states=states)[0]
    except Exception:  # noqa: BLE001 - a family that refuses a 4D mask takes the per-side loop
        return False
    valid = pad_mask.bool()                              # padded positions may hold anything
    return torch.allclose(plain[valid], given[valid], rtol=1e-4, atol=1e-5)


class _OutputFromStates(nn.Module):
    """A side network's output from given backbone states, as a dict of its tensors (vmap
    returns tensors only): what `_stacked_outputs` vmaps."""

    def __init__(self, side: LSTModel):
        super().__init__()
        self.side = side

    def forward(self, inputs: dict, states: tuple, pad_mask: torch.Tensor | None,
                projected: tuple | None) -> dict[str, torch.Tensor]:
        out = self.side._output_from_states(inputs, states, pad_mask, projected)
        return {key: value for key, value in out.items() if isinstance(value, torch.Tensor)}


def _stacked_outputs(template: LSTModel, weights: tuple[dict, dict], names: list[str],
                     rows: list[list[int]], inputs: dict, states: tuple, batch: int
                     ) -> dict[str, LSTOutput]:
    """k side networks of one shape as ONE computation with a task dimension: their weights,
    (params, buffers) stacked to (k, ...) in `names`' order (`_SideBank.take`), and
    `template`'s forward vmapped over them, so k tasks cost about one side network's kernel
    launches and Python calls instead of k.

    Rows: when every side reads the same rows (k tasks on one text), the inputs and states are
    shared, unbatched. Otherwise each side's rows are gathered to (k, m, ...), m the most rows
    any side reads, a shorter list padded by repeating its last row (computed, then dropped).
    """
    params, buffers = weights
    device = states[0].device
    pad_mask = inputs.get("attention_mask")
    if all(r == rows[0] for r in rows):
        if len(rows[0]) < batch:
            index = torch.tensor(rows[0], device=device)
            inputs = {k: v.index_select(0, index) for k, v in inputs.items()}
            states = tuple(None if s is None else s.index_select(0, index) for s in states)
            pad_mask = inputs.get("attention_mask")
        in_dims = None
    else:
        most = max(len(r) for r in rows)
        index = torch.tensor([r + r[-1:] * (most - len(r)) for r in rows], device=device)  # (k, m)
        inputs = {k: v[index] for k, v in inputs.items()}                     # (k, m, ...)
        states = tuple(None if s is None else s[index] for s in states)      # (k, m, t, d)
        pad_mask = inputs.get("attention_mask")                               # (k, m, t)
        if pad_mask is not None:
            inputs["attention_mask"] = _attention_mask_4d(template, pad_mask, states[0].dtype)
        in_dims = 0

    projected = _projected_ladders(template, params, states, shared=in_dims is None)

    def one_side(side_params, side_buffers, side_inputs, side_states, side_pad_mask,
                 side_projected):
        return functional_call(_OutputFromStates(template), (side_params, side_buffers),
                               (side_inputs, side_states, side_pad_mask, side_projected))

    with warnings.catch_warnings():
        # CPU's fused attention has no vmap rule: torch loops over the k tasks in C++ and says
        # so on every call; that loop is still far cheaper than k Python-level forwards
        warnings.filterwarnings("ignore", message="There is a performance drop because we "
                                "have not yet implemented the batching rule")
        projected_dims = None if projected is None else 0
        outputs = torch.vmap(one_side, in_dims=(0, 0, in_dims, in_dims, in_dims, projected_dims))(
            params, buffers, inputs, states, pad_mask, projected)      # {field: (k, m, ...)}
    return {name: LSTOutput(**{key: value[i, :len(r)] for key, value in outputs.items()})
            for i, (name, r) in enumerate(zip(names, rows))}


def _projected_ladders(template: LSTModel, params: dict, states: tuple, shared: bool
                       ) -> tuple | None:
    """Every stacked side network's ladder inputs, down_i(x_i) for i = 0 .. n, computed
    outside vmap: (k, m, t, d/r) each. Over shared rows, one matmul per ladder for all k
    (their weights side by side, d -> k * d/r) reads each backbone state once; over each
    side's own rows, one batched matmul. None for QST's low-rank ladders (computed in vmap)."""
    ladder = template.ladders[0]
    if not all(isinstance(down, nn.Linear) for down in ladder.down):
        return None
    reads = [0, *(layer + 1 for layer in ladder.kept_layers)]    # the state each down_i reads
    projected = []
    for i, read in enumerate(reads):
        weight = params[f"side.ladders.0.down.{i}.weight"]              # (k, d/r, d)
        bias = params[f"side.ladders.0.down.{i}.bias"]                  # (k, d/r)
        state = states[read].to(weight.dtype)
        if shared:                   # (m, t, d) -> (m, t, k * d/r) -> (k, m, t, d/r)
            out = F.linear(state, weight.flatten(0, 1), bias.flatten())
            out = out.unflatten(-1, weight.shape[:2]).movedim(-2, 0)
        else:                        # (k, m, t, d) -> (k, m * t, d/r) -> (k, m, t, d/r)
            out = torch.baddbmm(bias[:, None], state.flatten(1, 2), weight.transpose(1, 2))
            out = out.unflatten(1, state.shape[1:3])
        projected.append(out.contiguous())
    return tuple(projected)


def _attention_mask_4d(template: LSTModel, pad_mask: torch.Tensor, dtype: torch.dtype
                       ) -> torch.Tensor:
    """(k, m, t) padding masks as the (k, m, 1, t, t) masks the side stack's attention takes,
    built here, outside vmap: the side model would build them from a 2D mask with a data-
    dependent test (can the mask be skipped?) that vmap cannot run. A 4D mask it uses as given.
    """
    k, m, t = pad_mask.shape
    config = template.side_stacks[0].config
    embeds = torch.empty(k * m, t, template.side_width, dtype=dtype, device=pad_mask.device)
    flat = pad_mask.reshape(k * m, t)
    if template.family.kind == bb.DECODER:
        positions = torch.arange(t, device=pad_mask.device).expand(k * m, t)
        mask = create_causal_mask(config, embeds, flat, None, position_ids=positions,
                                  allow_is_causal_skip=False)
    else:
        mask = create_bidirectional_mask(config, embeds, flat, allow_is_bidirectional_skip=False)
    return mask.reshape(k, m, *mask.shape[1:])


def decay_groups(parameters, weight_decay: float, decays) -> list[dict]:
    """Two AdamW groups of the trainable `parameters`: those `decays` picks, and the rest."""
    trainable = [p for p in parameters if p.requires_grad]
    return [{"params": [p for p in trainable if decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in trainable if not decays(p)], "weight_decay": 0.0}]


# What every lst_config.json written by save_pretrained holds, and loading needs.
_SAVED_KEYS = ("task_type", "reduction_factor", "model_type", "backbone_fingerprint",
               "resolved_side_layers")


def get_lst_model(backbone, config: LSTConfig, init_data=None) -> LSTModel:
    """Wrap `backbone` with a ladder side network; the backbone is left untouched unless
    `config.backbone_dtype` converts it in place (see `laddertune.quant`)."""
    return LSTModel(backbone, config, init_data=init_data)


@contextlib.contextmanager
def frozen(backbone: nn.Module, dropout: bool = False):
    """Run the backbone without autograd, in eval mode (or train mode: `dropout`), then restore
    its modes."""
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.train(dropout)
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def block_outputs(block: nn.Module):
    """Collect the hidden-state output of `block` on every call inside the `with` block.

    A forward hook on the user's backbone, removed on the way out: the only touch laddertune
    makes to it, and it changes no value.
    """
    outputs = []

    def record(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handle = block.register_forward_hook(record)
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def _quiet_transformers():
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_is_transformer(model) -> None:
    from transformers import PreTrainedModel
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Hugging Face PreTrainedModel; load the backbone "
            "with transformers (AutoModel / AutoModelFor...) and pass that")


def _side_dtype(backbone) -> torch.dtype:
    dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), torch.float32)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _device_of(backbone) -> torch.device:
    return next(backbone.parameters()).device
