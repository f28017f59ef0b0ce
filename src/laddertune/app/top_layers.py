"""--top-layers K: a baseline trains only the backbone's top K layers and what sits above them
(the final norm, a pooler, the task head), the paper's low-memory comparison (its README's
Figure 6; `adapters_freezing.sh`, `lora_freezing.sh` in the authors' code).

Everything below the top K (the embeddings and the lower layers) keeps no trainable parameter:
the hidden state entering layer L - K needs no gradient, so autograd saves nothing for the
layers under it, and training memory falls with K. Full fine-tuning freezes those parameters;
LoRA and IA3 transform only the top K layers (PEFT's `layers_to_transform`); bottleneck
adapters go into the top K layers only. K = L is the method at full depth (`restricts`).

"Below" is read off the order the stack registers its parameters: those registered up to the
last layer's, less the top K layers' own, and everything else inside the module that holds the
layer list (when that is not the stack itself), which serves every layer (MPNet's relative
position bias, DeBERTa's relative embeddings). What the stack registers after the layers
(Llama's and GPT-2's final norm, BERT's pooler) and the task head stay trainable; an LM head
tied to the embeddings is the embeddings' parameter, so it stays frozen.

With `--cache-backbone`, the layers below run once per example and their output, the hidden
state entering layer L - K, is cached (`BelowTopLayers`, the same `StateCache` LST uses). A
batch with those states (`backbone_hidden_states`) then runs the model with its layer list cut
to the top K layers and layer L - K's input replaced (`replay_cached_states`): the model's own
code still computes the embeddings, the attention mask and the rotary positions, so no family's
mask format or position code is rewritten here. The cached states are the frozen layers' output
in eval mode (no dropout), as LST's are; uncached, those layers run in the model's mode.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from torch import nn

from .. import backbones as bb
from ..checkpoint import backbone_fingerprint
from ..errors import LSTConfigError


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(the stack, its layer list's path in it, the layer list) of a one-stack model.

    Raises:
        LSTConfigError: an encoder-decoder, which has two stacks to take the top of.
    """
    family = bb.detect_family(model)
    if family.kind == bb.ENCODER_DECODER:
        raise LSTConfigError(f"--top-layers takes the top layers of one stack, and "
                             f"{model.config.model_type} has an encoder and a decoder; drop "
                             "--top-layers for this model")
    stack = bb.backbone_stacks(model, family)[0]
    return stack, family.layers, bb.get_path(stack, family.layers)


def check_top_layers(model: nn.Module, k: int) -> int:
    """The number of layers L, once `k` is checked to be in 1..L.

    Raises:
        LSTConfigError: `k` is outside 1..L, or the model has two stacks.
    """
    depth = len(layer_list(model)[2])
    if not 1 <= k <= depth:
        raise LSTConfigError(f"--top-layers {k} is outside 1..{depth}: this "
                             f"{model.config.model_type} has {depth} layers; pass 1 to {depth}")
    return depth


def restricts(model: nn.Module, k: int | None) -> bool:
    """Whether --top-layers `k` leaves layers below (checked against the model): K = L is the
    method at full depth, the embeddings trained too where the method trains them."""
    return k is not None and k < check_top_layers(model, k)


def top_layer_indices(model: nn.Module, k: int) -> list[int]:
    """Indices of the top `k` layers in the layer list."""
    depth = check_top_layers(model, k)
    return list(range(depth - k, depth))


def below_parameters(model: nn.Module, k: int) -> set[int]:
    """ids of the parameters below the top `k` layers: the embeddings and the lower layers."""
    stack, path, layers = layer_list(model)
    indices = top_layer_indices(model, k)
    top = {id(p) for i in indices for p in layers[i].parameters()}
    named = list(stack.named_parameters())
    last = max(i for i, (name, _) in enumerate(named) if name.startswith(path + "."))
    below = {id(p) for name, p in named[: last + 1] if id(p) not in top}
    # what shares the layers' own parent serves every layer (MPNet's relative position bias,
    # DeBERTa's relative embeddings and their norm): below too
    parent = path.rpartition(".")[0]
    if parent:
        below |= {id(p) for name, p in named if name.startswith(parent + ".") and id(p) not in top}
    return below


def freeze_below(model: nn.Module, k: int) -> nn.Module:
    """`model` with every parameter below its top `k` layers frozen."""
    below = below_parameters(model, k)
    for param in model.parameters():
        if id(param) in below:
            param.requires_grad_(False)
    return model


def peft_layers(model: nn.Module, k: int) -> dict:
    """PEFT config arguments that transform only the top `k` layers (`layers_pattern` is the
    layer list's path: PEFT reads the number after it in a module's name)."""
    return {"layers_to_transform": top_layer_indices(model, k),
            "layers_pattern": layer_list(model)[1]}


def layer_linear_names(model: nn.Module) -> list[str]:
    """The names, last part only, of the linear layers (GPT-2's Conv1D too) in a layer: PEFT's
    "all-linear" within the layers, as a list, which `layers_to_transform` needs (PEFT refuses
    it beside a target_modules string)."""
    from transformers.pytorch_utils import Conv1D  # here: the CLI imports this file at start-up
    block = layer_list(model)[2][0]
    return sorted({name.rsplit(".", 1)[-1] for name, module in block.named_modules()
                   if isinstance(module, (nn.Linear, Conv1D))})


def in_top_layers(model: nn.Module, k: int, name: str) -> bool:
    """Whether module `name` (a path in `model`) lies in one of the top `k` layers, by the
    layer number after the layer list's path, as PEFT reads it."""
    match = re.match(rf"(?:^|.*?\.){re.escape(layer_list(model)[1])}\.(\d+)\.", name)
    return match is not None and int(match.group(1)) in top_layer_indices(model, k)


def top_layer_modules(model: nn.Module, k: int, targets) -> list[str]:
    """Full names of the modules in the top `k` layers that PEFT's list `targets` would match
    (the name, or its ending after a dot): the same modules, in those layers only."""
    return [name for name, _ in model.named_modules()
            if any(name == t or name.endswith("." + t) for t in targets)
            and in_top_layers(model, k, name + ".")]


# ---- the layers below, cached ------------------------------------------------------------------

def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face task model inside a PEFT wrapper (or `model` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class _Parameters:
    """Named parameters standing in for a stack in `backbone_fingerprint`."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        self.named = named

    def named_parameters(self):
        return iter(self.named)

    def parameters(self):
        return (param for _, param in self.named)


class BelowTopLayers:
    """The frozen part below a top-K model's top K layers as a source of backbone states: what
    `StateCache` and `trainer.BackboneStates` ask of a model (LST's and the probe's own methods).

    Its one state is the hidden state entering layer L - K: index L - K of the (L + 1) states,
    as `output_hidden_states` numbers them. The fingerprint reads only the parameters below,
    named from the stack down, so full, LoRA, adapters and IA3 at the same K share one cache,
    whatever each puts into the top layers.
    """

    def __init__(self, model: nn.Module, k: int):
        self.model = model
        base = base_model(model)
        self.hf_config = base.config
        stack, _, layers = layer_list(base)
        self.depth, self.index = len(layers), len(layers) - k
        self.stacks, self.first_top = [stack], layers[self.index]
        self.width = bb.model_width(base.config)
        below = below_parameters(base, k)
        self.below = [(name, p) for name, p in stack.named_parameters() if id(p) in below]
        self.config = SimpleNamespace(backbone_dropout=False, ladder_last_layer="final",
                                      task_type="SEQ_CLS")
        self.checked = False

    def ladder_inputs(self, index: int = 0) -> list[int]:
        return [self.index]

    def check_replay(self, inputs: dict, states: tuple) -> None:
        """Refuse, in one line, a model whose top layers do not compute from the replayed state
        what they compute live: compared once, on the first batch, in eval mode. A family whose
        layers read something by their place in the list that `cut_layers` does not follow
        would otherwise train on wrong states without a word."""
        from ..model import frozen  # here: the CLI imports this file at start-up
        with frozen(self.model):
            live = self.model(**inputs).logits.float()
            replayed = self.model(**inputs, backbone_hidden_states=states).logits.float()
        mask = inputs.get("attention_mask")
        if live.dim() == 3 and mask is not None:         # per-token logits: real tokens only
            live, replayed = live[mask.bool()], replayed[mask.bool()]
        gap = (replayed - live).abs().max().item() if live.numel() else 0.0
        if not gap <= 1e-3 * live.abs().max().item() + 1e-4:
            raise LSTConfigError(
                f"--cache-backbone cannot replay cached states into this "
                f"{self.hf_config.model_type}'s top {self.depth - self.index} layers (they "
                f"compute other logits from them, off by {gap:.2g}); drop --cache-backbone")
        self.checked = True

    def parameters(self):
        return self.stacks[0].parameters()

    def fingerprint(self) -> dict:
        return backbone_fingerprint(self.hf_config, [_Parameters(self.below)])

    @torch.no_grad()
    def backbone_states(self, input_ids=None, attention_mask=None, token_type_ids=None,
                        **_) -> tuple[tuple, ...]:
        """The hidden state entering layer L - K, (b, t, d), at index L - K of one stack's
        (L + 1)-tuple (None elsewhere): the layout LST's cache keeps. The stack runs in eval
        mode up to that layer's input, and stops there."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        stack = self.stacks[0]
        caught: list[torch.Tensor] = []

        def catch(module, args, kwargs):
            caught.append(args[0] if args else kwargs["hidden_states"])
            raise _Reached

        from ..model import frozen  # here: the CLI imports this file at start-up
        handle = self.first_top.register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with frozen(stack):
                stack(**inputs, return_dict=True)
        except _Reached:
            pass
        finally:
            handle.remove()
        states = ((None,) * self.index + (caught[0],) + (None,) * (self.depth - self.index),)
        if not self.checked:
            self.check_replay({k: v for k, v in inputs.items() if v is not None}, states)
        return states


class _Reached(Exception):
    """Raised at the first top layer's input: nothing above it needs to run."""


class cut_layers:
    """Within it, the stack's layer list (at `path` in it) holds layers[start:] only, the same
    modules, and what the stack's loop reads by a layer's place in the list follows the cut:
    the config's per-layer `layer_types` (sliding-window or full attention, Gemma's local or
    global rotary base) is cut the same way, no key/value cache is made (its layer count is
    the config's), and DeBERTa-v2's convolution, which follows layer 0, is dropped once layer 0
    is below."""

    def __init__(self, stack: nn.Module, path: str, start: int):
        self.stack, self.path = stack, path
        self.layers = bb.get_path(stack, path)
        self.start = start
        self.saved: list[tuple[object, str, object]] = []

    def _swap(self, owner, name: str, value) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self):
        cut = nn.ModuleList(list(self.layers)[self.start:])
        bb.set_path(self.stack, self.path, cut)
        config = getattr(self.stack, "config", None)
        types = getattr(config, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == len(self.layers):
            self._swap(config, "layer_types", list(types)[self.start:])
        if getattr(config, "use_cache", False):
            self._swap(config, "use_cache", False)
        parent = self.path.rpartition(".")[0]
        holder = bb.get_path(self.stack, parent) if parent else self.stack
        if self.start > 0 and isinstance(getattr(holder, "conv", None), nn.Module):
            self._swap(holder, "conv", None)
        return cut

    def __exit__(self, *exc):
        bb.set_path(self.stack, self.path, self.layers)
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()
        return False


def replay_cached_states(model: nn.Module, k: int) -> None:
    """Let `model` take `backbone_hidden_states` (`BelowTopLayers`' layout, or a cache's): it
    then runs only its top `k` layers, from the given state. Without them it runs as before.

    Hooks on `model` (ours, built by the CLI, never a user's backbone): the outer one takes the
    states out of the call and cuts the layer list to the top k; the first of those layers
    takes the cached state as its input; the outer forward hook restores the list.
    """
    base = base_model(model)
    stack, path, layers = layer_list(base)
    index = len(layers) - k
    given: dict = {}

    def take_states(module, args, kwargs):
        states = kwargs.pop("backbone_hidden_states", None)
        if states is None:
            return None
        if isinstance(states[0], torch.Tensor) or states[0] is None:   # one stack's tuple
            states = (states,)
        given["hidden"] = states[0][index]
        given["cut"] = cut_layers(stack, path, index)
        given["cut"].__enter__()
        return args, kwargs

    def restore(module, args, kwargs, output):
        cut = given.pop("cut", None)
        given.pop("hidden", None)
        if cut is not None:
            cut.__exit__()
        return output

    def feed_state(module, args, kwargs):
        hidden = given.pop("hidden", None)
        if hidden is None:
            return None
        live = args[0] if args else kwargs["hidden_states"]
        hidden = hidden.to(device=live.device, dtype=live.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    model.register_forward_pre_hook(take_states, with_kwargs=True)
    model.register_forward_hook(restore, with_kwargs=True, always_call=True)
    layers[index].register_forward_pre_hook(feed_state, with_kwargs=True)
