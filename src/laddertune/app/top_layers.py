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

The layers below could be run once and their output cached, but feeding a hidden state into
the middle of a Hugging Face model is family-specific (rotary position embeddings computed at
the stack's top, each family's attention-mask format, its cache objects): laddertune does not,
and `--cache-backbone` refuses `--top-layers`.
"""

from __future__ import annotations

import re

from torch import nn

from .. import backbones as bb
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
