"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2021), the paper's Adapters baseline.

An adapter is a small residual MLP on a sublayer's output, placed after the sublayer's output
projection and so before its residual add (and, in post-LN models like BERT, its layer norm):

    h = W_out(x)                        # the sublayer's output projection, (b, t, d)
    h = h + up(act(down(h)))            # d -> d/r -> d; `up` starts at zero

- Houlsby: one adapter after every attention sublayer (self- and cross-attention) and one after
  the feed-forward, so an encoder layer gets two.
- Pfeiffer: one after the feed-forward only.

In BERT-like blocks the adapter runs before the sublayer's dropout (AdapterHub's runs after it),
so in training dropout also falls on the adapter's output; in eval the two are the same.

Trained: the adapters, every layer norm (as Houlsby does) and a new task head; everything else
is frozen. `trainable_parameter_names` says which, `set_trainable_params` applies it.

Where the adapters go is read off the module structure, not a list of names. A transformer's
blocks are the items of its ModuleLists of same-class modules (encoder and decoder stacks). In
a block, each child module (T5's `layer` list counts as its children) is a sublayer or a piece
of one; the last projection in it that writes the residual width d is that sublayer's output.
The block's last projection is the feed-forward's output, and its width defines d. This finds
BERT's ``attention.output.dense``/``output.dense``, Llama's ``o_proj``/``down_proj``, GPT-2's
``c_proj`` (Conv1D), T5's ``o``/``EncDecAttention.o``/``wo``, BART's ``out_proj``/``fc2``, ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..checkpoint import load_json, load_weights, save_json, save_weights
from ..errors import CheckpointError, LSTConfigError, UnsupportedModelError
from .top_layers import below_parameters, in_top_layers

ADAPTER_KINDS = ("houlsby", "pfeiffer")
ADAPTER_WEIGHTS = "bottleneck_adapters.safetensors"
ADAPTER_CONFIG = "bottleneck_adapters.json"

# The adapter's module name under each output projection it follows.
_ADAPTER_NAME = "bottleneck_adapter"


@dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck adapter settings.

    Args:
        kind: ``houlsby`` (after attention and feed-forward) or ``pfeiffer`` (feed-forward only).
        reduction_factor: the bottleneck is d / reduction_factor wide.
        train_task_head: train the task model's head (a new classifier); off for LM heads,
            which are pretrained (and often tied to the embeddings).
    """

    kind: str = field(default="houlsby", metadata={
        "help": "houlsby: adapters after each attention and feed-forward sublayer (2 per encoder "
                "layer); pfeiffer: after the feed-forward only (half the adapters)"})
    reduction_factor: int = field(default=16, metadata={
        "help": "bottleneck width is hidden size / reduction_factor; smaller trains more "
                "parameters (the paper's baseline uses 16)"})
    train_task_head: bool = field(default=True, metadata={
        "help": "also train the task head (a new classifier); keep off for a pretrained LM head"})
    top_layers: int | None = field(default=None, metadata={
        "help": "adapters (and trained layer norms) in the top K layers only, none below; "
                "None: every layer"})

    def __post_init__(self):
        if self.kind not in ADAPTER_KINDS:
            raise LSTConfigError(f"adapter kind {self.kind!r} is unknown; use one of "
                                 f"{', '.join(ADAPTER_KINDS)}")
        if self.reduction_factor < 1:
            raise LSTConfigError(f"adapter reduction_factor {self.reduction_factor} must be at "
                                 "least 1; pass e.g. 16")
        if self.top_layers is not None and self.top_layers < 1:
            raise LSTConfigError(f"adapter top_layers {self.top_layers} must be at least 1")


class BottleneckAdapter(nn.Module):
    """x + up(relu(down(x))) on a sublayer's output; `up` starts at zero, so at initialisation
    the model computes exactly what the pretrained one does."""

    def __init__(self, width: int, bottleneck: int, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(width, bottleneck, device=device, dtype=dtype)  # d -> d/r
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, width, device=device, dtype=dtype)    # d/r -> d
        # Zero `up` (as LoRA zeroes B): `down` keeps nn.Linear's default init, so `up` gets a
        # gradient at the first step and `down` from the second.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))  # (b, t, d)

    def follow(self, module: nn.Module, args, output):
        """Forward hook for the projection this adapter follows: its output goes through us."""
        return self(output)


@dataclass(frozen=True)
class AdapterSite:
    """An output projection an adapter can follow."""

    path: str       # the projection's name in the task model: "bert.encoder.layer.0.output.dense"
    sublayer: str   # "attention" or "feed_forward"
    width: int      # d, the residual stream's width


def _projections(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear and Conv1D (GPT-2) layers in `module`, not adapters' own."""
    from transformers.pytorch_utils import Conv1D  # here: the CLI imports this file at start-up
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Linear, Conv1D))
            and _ADAPTER_NAME not in n.split(".")]


def _out_width(projection: nn.Module) -> int:
    return projection.out_features if isinstance(projection, nn.Linear) else projection.nf


def _transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) for each item of the outermost ModuleLists of same-class modules that hold
    projections: the layers of each stack (encoder, decoder)."""
    blocks, stacks = [], []
    for name, module in model.named_modules():
        if any(name.startswith(stack + ".") for stack in stacks):
            continue  # a list inside a block (T5's sublayers, experts) is part of that block
        if (isinstance(module, nn.ModuleList) and len(module) > 0
                and len({type(item) for item in module}) == 1
                and _projections(module[0])):
            stacks.append(name)
            blocks.extend((f"{name}.{i}", block) for i, block in enumerate(module))
    return blocks


def _block_parts(block: nn.Module):
    """(name, module) of a block's children, with a ModuleList's items standing for the list."""
    for name, child in block.named_children():
        if isinstance(child, nn.ModuleList):
            yield from ((f"{name}.{i}", item) for i, item in enumerate(child))
        else:
            yield name, child


def _block_sites(block_name: str, block: nn.Module) -> list[AdapterSite]:
    # The block's last projection is the feed-forward's output: it writes the residual width.
    width = _out_width(_projections(block)[-1][1])
    outputs = []
    for part_name, part in _block_parts(block):
        writers = [n for n, m in _projections(part) if _out_width(m) == width]
        if writers:
            outputs.append(".".join(p for p in (block_name, part_name, writers[-1]) if p))
    if len(outputs) < 2:
        raise UnsupportedModelError(
            f"{block_name} has no separate attention and feed-forward output projections "
            "(a mixture-of-experts or unusual block); use lora or lst for this model")
    return [AdapterSite(path, "attention", width) for path in outputs[:-1]] + [
        AdapterSite(outputs[-1], "feed_forward", width)]


def find_adapter_sites(model: nn.Module, kind: str = "houlsby") -> list[AdapterSite]:
    """The output projections adapters of `kind` follow, in model order.

    Raises:
        UnsupportedModelError: the model has no transformer blocks this can read.
    """
    blocks = _transformer_blocks(model)
    if not blocks:
        raise UnsupportedModelError(f"{type(model).__name__} has no list of transformer blocks; "
                                    "use lora or lst for this model")
    sites = [site for name, block in blocks for site in _block_sites(name, block)]
    return [s for s in sites if kind == "houlsby" or s.sublayer == "feed_forward"]


def add_adapters(task_model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Add bottleneck adapters to `task_model` (in place: pass a freshly loaded model) and make
    only the adapters, layer norms and (with `config.train_task_head`) the task head trainable.

    Raises:
        LSTConfigError: the model has adapters already, or the bottleneck would be empty.
        UnsupportedModelError: no adapter sites could be found.
    """
    if getattr(task_model, "bottleneck_adapter_config", None) is not None:
        raise LSTConfigError("this model has bottleneck adapters already; load a fresh model")
    for site in adapter_sites(task_model, config):
        bottleneck = site.width // config.reduction_factor
        if bottleneck == 0:
            raise LSTConfigError(f"adapter reduction_factor {config.reduction_factor} leaves no "
                                 f"bottleneck at width {site.width}; use at most {site.width}")
        projection = task_model.get_submodule(site.path)
        weight = projection.weight
        adapter = BottleneckAdapter(site.width, bottleneck, weight.device, weight.dtype)
        projection.add_module(_ADAPTER_NAME, adapter)
        projection.register_forward_hook(adapter.follow)
    task_model.bottleneck_adapter_config = config
    set_trainable_params(task_model, trainable_parameter_names(task_model))
    return task_model


def adapter_sites(model: nn.Module, config: AdapterConfig) -> list[AdapterSite]:
    """The sites `config` puts adapters on: all of its kind, or those in the top K layers."""
    sites = find_adapter_sites(model, config.kind)
    if config.top_layers is None:
        return sites
    return [s for s in sites if in_top_layers(model, config.top_layers, s.path)]


def trainable_parameter_names(model: nn.Module) -> set[str]:
    """Names of what an adapter model trains: adapters, layer norms, and the task head when
    its config says so; with `top_layers`, nothing below the top K layers."""
    config = model.bottleneck_adapter_config
    names = (set(adapter_params(model)) | set(layer_norm_params(model))
             | (set(task_head_params(model)) if config.train_task_head else set()))
    if config.top_layers is None:
        return names
    below = below_parameters(model, config.top_layers)
    return {n for n, p in model.named_parameters() if n in names and id(p) not in below}


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if f".{_ADAPTER_NAME}." in n}


def layer_norm_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of every normalisation module (LayerNorm, RMSNorm, T5LayerNorm, ...)."""
    return {f"{name}.{p_name}" if name else p_name: p
            for name, module in model.named_modules() if "norm" in type(module).__name__.lower()
            for p_name, p in module.named_parameters(recurse=False)}


def task_head_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside the model's backbone (`base_model`): the task head."""
    backbone = {id(p) for p in model.base_model.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) not in backbone}


def set_trainable_params(model: nn.Module, names: set[str]) -> None:
    """Train exactly the parameters in `names`; freeze the rest."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


# ---- saving and loading -------------------------------------------------------------------------

def save_adapters(model: nn.Module, directory: Path) -> None:
    """Write the trained tensors (adapters, layer norms, head) and the adapter config to
    `directory`; never the frozen backbone."""
    directory = Path(directory)
    names = trainable_parameter_names(model)
    save_weights({n: p for n, p in model.named_parameters() if n in names},
                 directory / ADAPTER_WEIGHTS)
    config = model.bottleneck_adapter_config
    save_json({**asdict(config), "model_type": model.config.model_type,
               "base_model_name_or_path": model.config.name_or_path,
               "sites": [s.path for s in adapter_sites(model, config)]},
              directory / ADAPTER_CONFIG)


def load_adapters(task_model: nn.Module, directory: Path) -> nn.Module:
    """`task_model` (freshly loaded) with the adapters saved in `directory`, in eval mode.

    Raises:
        CheckpointError: files missing or damaged, or saved for a different model.
    """
    directory = Path(directory)
    saved = load_json(directory / ADAPTER_CONFIG)
    try:
        config = AdapterConfig(saved["kind"], saved["reduction_factor"], saved["train_task_head"],
                               saved.get("top_layers"))
    except (KeyError, TypeError, LSTConfigError) as err:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG} is not a valid adapter config "
                              f"({err}); save the model again") from None
    sites = [s.path for s in adapter_sites(task_model, config)]
    if saved.get("model_type") != task_model.config.model_type or saved.get("sites") != sites:
        raise CheckpointError(
            f"{directory} holds adapters for a {saved.get('model_type')} with "
            f"{len(saved.get('sites', []))} adapter sites, not this {task_model.config.model_type} "
            f"with {len(sites)}; load it with the model it was trained on "
            f"({saved.get('base_model_name_or_path') or 'see ' + ADAPTER_CONFIG})")
    state = load_weights(directory / ADAPTER_WEIGHTS)
    add_adapters(task_model, config)
    expected = {n: p for n, p in task_model.named_parameters()
                if n in trainable_parameter_names(task_model)}
    if set(state) != set(expected) or any(state[n].shape != p.shape for n, p in expected.items()):
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS} does not fit this model's adapters; "
                              "load it with the model and settings it was trained with")
    task_model.load_state_dict(state, strict=False)
    return task_model.eval()
