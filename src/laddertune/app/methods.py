"""Fine-tuning methods side by side: LST and the baselines a user would pick instead.

Each method is one `Method` entry of `REGISTRY`: how it builds, saves and loads, its default
learning rate, the head it trains on, whether it reads the backbone's states as given (so they
can be cached or shared), and the settings only it reads. A new method is one entry; no other
module tests a method's name.

`build_method` turns one freshly loaded task model (``...ForSequenceClassification``,
``...ForCausalLM``, ``...ForSeq2SeqLM``) into a trainable model for one method. Every result takes
the same inputs (input_ids, attention_mask, labels) and returns ``.loss`` and ``.logits``, so the
CLI and the benchmarks train them all in one loop on the same batches.

Baselines go through the real `peft` library (LoRA, prompt tuning, IA3); BitFit trains biases and
the task head only; bottleneck adapters (Houlsby, Pfeiffer) are our own (`adapters.py`: PEFT has
none). Full fine-tuning, BitFit and adapters change the model they are given (`requires_grad`,
adapter modules), so pass a fresh model to each method.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import LSTConfig
from ..errors import CheckpointError, LSTConfigError

# torch, the model and the adapters are imported where they are used: the CLI reads this
# registry (names, learning rates) at start-up, before any of them is needed.
if TYPE_CHECKING:
    from torch import nn

# Full fine-tuning and BitFit ship the tensors they trained, as safetensors.
TRAINED_WEIGHTS = "trained_weights.safetensors"

# peft's name for each peft method, as its adapter_config.json records it.
_PEFT_TYPES = {"lora": "LORA", "prompt": "PROMPT_TUNING", "ia3": "IA3"}
_PEFT_CONFIG = "adapter_config.json"

# What a LoRA run on a reduced backbone (--backbone-dtype) records of it beside its adapter.
BACKBONE_DTYPES_FILE = "backbone_dtype.json"

# Task types whose head is the pretrained LM head (often tied to the embeddings): kept frozen.
_LM_TASKS = ("CAUSAL_LM", "SEQ_2_SEQ_LM")


@dataclass(frozen=True)
class BuildSettings:
    """What building a method may read besides the task model (each method reads its own).

    Args:
        task_type: PEFT's task name (``SEQ_CLS``, ``CAUSAL_LM``, ``SEQ_2_SEQ_LM``, ...).
        num_labels: classes for classification tasks.
        lst_config: LST settings; defaults to ``LSTConfig(task_type, num_labels)``.
        lora_rank: LoRA rank (the paper's baseline uses 32).
        prompt_tokens: virtual tokens for prompt tuning.
        adapter_kind: ``houlsby`` (after attention and feed-forward) or ``pfeiffer``
            (feed-forward only).
        adapter_reduction_factor: adapter bottleneck = hidden size / this (the paper uses 16).
        init_data: examples for LST's Fisher initialisation.
        top_layers: train only the top K backbone layers (`top_layers.py`); None: every layer.
    """

    task_type: str = "SEQ_CLS"
    num_labels: int = 2
    lst_config: LSTConfig | None = None
    lora_rank: int = 32
    prompt_tokens: int = 20
    adapter_kind: str = "houlsby"
    adapter_reduction_factor: int = 16
    init_data: object = None
    top_layers: int | None = None


@dataclass(frozen=True)
class Method:
    """One fine-tuning method, everything the application needs to know about it.

    Args:
        name: the --method value.
        default_lr: its learning rate when --lr is not given.
        build: (fresh task model, BuildSettings) -> the model to train.
        save: (trained model, folder) -> writes what it trained, never the frozen backbone.
        load: (fresh task model, folder) -> the trained model, in eval mode.
        head: the head of the task model it trains on: ``bare`` (LST brings its own head) or
            ``classifier`` (a new classification head).
        reads_backbone_states: the model takes the frozen backbone's states as an input, so a
            cache or a sweep can compute them once (only LST: the others train through the
            backbone, whose states then change every step).
        fields: the TrainConfig fields only this method reads (set for another method, they
            draw a warning).
        tasks: the --task values it can train.
        fit: a full-batch method's fit, which the training loop calls once instead of its
            epochs of optimizer steps: (built TrainingRun) -> the record metrics.json keeps
            as "fit". None: the method trains by steps.
        top_layers: it can train only the top K backbone layers (--top-layers).
        reduced_backbone: its frozen backbone can be stored in bfloat16, int8 or nf4
            (--backbone-dtype): LST's, which needs no gradient, and LoRA's (QLoRA at nf4).
        activations: what one training step keeps for backward, as `laddertune plan` predicts
            it: (meta-device model, plan.Batch) -> bytes. None: the model is trained through
            its transformer (`plan.trained_through_activations`).
        eval_holds_states: its eval forward holds every backbone layer's state of the whole
            batch at once (LST's side network reads them all), so it evaluates no more examples
            at a time than it trains on unless told (`default_eval_batch`).
    """

    name: str
    default_lr: float
    build: Callable[[nn.Module, BuildSettings], nn.Module]
    save: Callable[[nn.Module, Path], None]
    load: Callable[[nn.Module, Path], nn.Module]
    head: str = "classifier"
    reads_backbone_states: bool = False
    fields: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("classify", "generate")
    fit: Callable | None = None
    top_layers: bool = False
    reduced_backbone: bool = False
    activations: Callable | None = None
    eval_holds_states: bool = False

    @property
    def reads_lst_settings(self) -> bool:
        """It trains an LST side network, configured by the --lst-* settings."""
        return "lst" in self.fields

    def settings(self, cfg, task_type: str, num_labels: int, init_data=None) -> BuildSettings:
        """The BuildSettings of a training run's `cfg` (a TrainConfig); `init_data`, the
        training examples one by one, is read only by a Fisher initialisation."""
        lst_config = cfg.lst_config(num_labels, task_type) if self.reads_lst_settings else None
        fisher = lst_config is not None and lst_config.side_init == "fisher"
        return BuildSettings(task_type, num_labels, lst_config, adapter_kind=cfg.adapter_kind,
                             adapter_reduction_factor=cfg.adapter_reduction_factor,
                             init_data=init_data if fisher else None,
                             top_layers=cfg.top_layers)


# ---- build ---------------------------------------------------------------------------------------

def _build_lst(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from ..model import get_lst_model
    config = s.lst_config or LSTConfig(task_type=s.task_type, num_labels=s.num_labels)
    return get_lst_model(task_model, config, init_data=s.init_data)


def _build_full(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    for param in task_model.parameters():
        param.requires_grad_(True)
    if _top_layers().restricts(task_model, s.top_layers):
        _top_layers().freeze_below(task_model, s.top_layers)
    return task_model


def _build_bitfit(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    if not any(name.endswith("bias") for name, _ in task_model.named_parameters()):
        raise LSTConfigError(f"bitfit trains bias terms and {task_model.config.model_type} has "
                             "none; use lora or lst")
    from .adapters import task_head_params
    head = set(task_head_params(task_model)) if s.task_type not in _LM_TASKS else set()
    for name, param in task_model.named_parameters():
        param.requires_grad_(name.endswith("bias") or name in head)
    return task_model


# peft is imported where it is used: it takes seconds to import, and most commands never do.
def _build_lora(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    targets = {"target_modules": "all-linear"}
    if _top_layers().restricts(task_model, s.top_layers):
        targets = {"target_modules": _top_layers().layer_linear_names(task_model),
                   **_top_layers().peft_layers(task_model, s.top_layers)}
    lora = LoraConfig(task_type=s.task_type, r=s.lora_rank, lora_alpha=s.lora_rank,
                      lora_dropout=0.0, **targets)
    with _torchao_quiet():
        return get_peft_model(task_model, lora)   # LoRA's A and B in fp32 on any backbone


def _build_prompt(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from peft import PromptTuningConfig, get_peft_model
    prompt = PromptTuningConfig(task_type=s.task_type, num_virtual_tokens=s.prompt_tokens)
    return get_peft_model(task_model, prompt)


def _build_ia3(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from peft import get_peft_model
    return get_peft_model(task_model, ia3_config(task_model, s.task_type, s.top_layers))


def _build_adapter(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from .adapters import AdapterConfig, add_adapters
    top = s.top_layers if _top_layers().restricts(task_model, s.top_layers) else None
    config = AdapterConfig(kind=s.adapter_kind, reduction_factor=s.adapter_reduction_factor,
                           train_task_head=s.task_type not in _LM_TASKS, top_layers=top)
    return add_adapters(task_model, config)


# ---- save and load -------------------------------------------------------------------------------

def _save_pretrained(model: nn.Module, directory: Path) -> None:
    model.save_pretrained(str(directory))


def _save_lora(model: nn.Module, directory: Path) -> None:
    """The adapter, and, on a reduced backbone, how that backbone was stored and computed (as
    an LST side network's config records it); never the backbone's weights."""
    from .. import quant
    from ..checkpoint import save_json
    model.save_pretrained(str(directory))
    stored = quant.stored_dtype(model.base_model)
    if stored != "float32":
        device = next(model.parameters()).device
        save_json({"backbone_dtype": stored,
                   "backbone_compute_dtype": quant.compute_dtype(stored, device)},
                  directory / BACKBONE_DTYPES_FILE)


def _save_tensors(model: nn.Module, directory: Path) -> None:
    from ..checkpoint import save_weights
    save_weights({n: p for n, p in model.named_parameters() if p.requires_grad},
                 directory / TRAINED_WEIGHTS)


def _load_lst(task_model: nn.Module, directory: Path) -> nn.Module:
    from ..model import LSTModel
    return LSTModel.from_pretrained(task_model, directory)


def _peft_loader(method: str) -> Callable[[nn.Module, Path], nn.Module]:
    def load(task_model: nn.Module, directory: Path) -> nn.Module:
        from peft import PeftModel

        from ..checkpoint import load_json
        saved = load_json(directory / _PEFT_CONFIG).get("peft_type")
        if saved != _PEFT_TYPES[method]:
            raise CheckpointError(f"{directory} holds a peft {saved} adapter, not {method}; "
                                  "load it with the method it was trained with")
        _warn_other_backbone_dtype(task_model, directory)
        with _torchao_quiet():
            return PeftModel.from_pretrained(task_model, str(directory)).eval()
    return load


def _warn_other_backbone_dtype(task_model: nn.Module, directory: Path) -> None:
    """Warn when an adapter meets a backbone stored in another dtype than it trained on (the
    outputs then differ a little); `inference.load_run` stores it as the run did."""
    from .. import quant
    from ..checkpoint import load_json
    from ..errors import LSTWarning
    record = directory / BACKBONE_DTYPES_FILE
    trained = load_json(record)["backbone_dtype"] if record.is_file() else "float32"
    now = quant.stored_dtype(task_model)
    if trained != now:
        warnings.warn(f"this adapter was trained on a backbone stored in {trained}; this one "
                      f"is stored in {now}, so the outputs differ a little from training's",
                      LSTWarning, stacklevel=4)


@contextlib.contextmanager
def _torchao_quiet():
    """peft warns, once per layer, that a torchao int8 layer cannot merge LoRA into it: merging
    is never asked for here, so that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without `get_apply_tensor_subclass`")
        yield


def _load_tensors(task_model: nn.Module, directory: Path) -> nn.Module:
    from ..checkpoint import load_weights
    state = load_weights(directory / TRAINED_WEIGHTS)
    unknown = set(state) - set(dict(task_model.named_parameters()))
    if unknown:
        raise CheckpointError(f"{directory / TRAINED_WEIGHTS} does not fit this model (e.g. "
                              f"{sorted(unknown)[0]}); train the run again")
    task_model.load_state_dict(state, strict=False)
    return task_model.eval()


def _save_adapters(model: nn.Module, directory: Path) -> None:
    from .adapters import save_adapters
    save_adapters(model, directory)


def _load_adapters(task_model: nn.Module, directory: Path) -> nn.Module:
    from .adapters import load_adapters
    return load_adapters(task_model, directory)


def _top_layers():
    """`top_layers`, imported when a model is built (it needs torch; the CLI starts without)."""
    from . import top_layers
    return top_layers


# The probe (`probe.py`), imported when it is used, as above
def _build_probe(task_model: nn.Module, s: BuildSettings) -> nn.Module:
    from .probe import build_probe
    return build_probe(task_model, s)


def _save_probe(model: nn.Module, directory: Path) -> None:
    from .probe import save_probe
    save_probe(model, directory)


def _load_probe(task_model: nn.Module, directory: Path) -> nn.Module:
    from .probe import load_probe
    return load_probe(task_model, directory)


def _fit_probe(run) -> dict:
    from .probe import fit_probe
    return fit_probe(run)


# What a step keeps, for `laddertune plan` (`plan.py`, which imports this module)
def _lst_activations(model: nn.Module, batch) -> int:
    from .plan import lst_activations
    return lst_activations(model, batch)


def _fitted_activations(model: nn.Module, batch) -> int:
    from .plan import fitted_activations
    return fitted_activations(model, batch)


# ---- the registry --------------------------------------------------------------------------------

# Learning rates from the paper's T5-base GLUE setting (../shared/LST.md): LST 3e-3, full FT,
# LoRA, BitFit and Adapters 3e-4, prompt tuning 0.3. IA3 is not in the LST paper: 3e-3 is what
# its authors trained (IA)3 with (T-Few, Liu et al. 2022, arXiv 2205.05638: Adafactor, lr 3e-3
# in configs/ia3.json of their code, r-three/t-few).
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("lst", 3e-3, _build_lst, _save_pretrained, _load_lst, head="bare",
           reads_backbone_states=True, fields=("reduction_factor", "lst_preset", "lst"),
           reduced_backbone=True, activations=_lst_activations, eval_holds_states=True),
    Method("full", 3e-4, _build_full, _save_tensors, _load_tensors, top_layers=True),
    Method("lora", 3e-4, _build_lora, _save_lora, _peft_loader("lora"), top_layers=True,
           reduced_backbone=True),
    Method("bitfit", 3e-4, _build_bitfit, _save_tensors, _load_tensors),
    Method("prompt", 0.3, _build_prompt, _save_pretrained, _peft_loader("prompt")),
    Method("adapter", 3e-4, _build_adapter, _save_adapters, _load_adapters,
           fields=("adapter_kind", "adapter_reduction_factor"), top_layers=True),
    Method("ia3", 3e-3, _build_ia3, _save_pretrained, _peft_loader("ia3"), top_layers=True),
    # fitted to convergence (`probe.fit_probe`), not stepped: the learning rate goes unused
    Method("probe", 1.0, _build_probe, _save_probe, _load_probe, head="bare",
           reads_backbone_states=True, tasks=("classify",), fit=_fit_probe,
           activations=_fitted_activations),
)}

# Views of the registry, by name
METHODS = tuple(REGISTRY)
DEFAULT_LR = {name: method.default_lr for name, method in REGISTRY.items()}
EVAL_BATCH = 64         # examples per eval forward pass unless --eval-batch-size says otherwise


def default_eval_batch(method: str, batch_size: int) -> int:
    """Examples per eval forward pass when --eval-batch-size is not given: 64, and no more than
    the training batch for a method whose eval holds every layer's state of the whole batch at
    once (LST): at 64 that was LST's whole-process peak (MPNet-base, batch 16 x 128 tokens:
    1,935 MiB against 1,294 at an eval batch of 16)."""
    holds = method in REGISTRY and REGISTRY[method].eval_holds_states
    return min(EVAL_BATCH, batch_size) if holds else EVAL_BATCH


def get_method(name: str) -> Method:
    """The registry entry of `name`.

    Raises:
        LSTConfigError: no method has that name.
    """
    if name not in REGISTRY:
        raise LSTConfigError(f"method {name!r} is unknown; use one of {', '.join(METHODS)}")
    return REGISTRY[name]


def build_method(method: str, task_model: nn.Module, task_type: str = "SEQ_CLS",
                 num_labels: int = 2, lst_config: LSTConfig | None = None, lora_rank: int = 32,
                 prompt_tokens: int = 20, adapter_kind: str = "houlsby",
                 adapter_reduction_factor: int = 16, init_data=None,
                 top_layers: int | None = None) -> nn.Module:
    """A model that trains `task_model` by `method`.

    Args:
        method: one of ``lst``, ``full``, ``lora``, ``bitfit``, ``prompt``, ``adapter``, ``ia3``.
        task_model: a freshly loaded Hugging Face task model.
        task_type, num_labels, lst_config, lora_rank, prompt_tokens, adapter_kind,
            adapter_reduction_factor, init_data, top_layers: see `BuildSettings`.

    Raises:
        LSTConfigError: unknown method or adapter settings out of range.
        UnsupportedModelError: adapters or IA3 cannot find this model's transformer blocks.
    """
    return get_method(method).build(task_model, BuildSettings(
        task_type, num_labels, lst_config, lora_rank, prompt_tokens, adapter_kind,
        adapter_reduction_factor, init_data, top_layers))


def ia3_config(task_model: nn.Module, task_type: str = "SEQ_CLS", top_layers: int | None = None):
    """peft's IA3Config for `task_model`.

    (IA)3 learns a vector that rescales the keys, the values and the feed-forward's inner
    activation. Where peft lists the family, its own choice of modules is used. Elsewhere
    (MPNet, DistilBERT, Electra, ...) the modules are read off the structure, the ones
    bottleneck adapters follow: scaling the input of an attention output projection is scaling
    the values channel by channel (attention only mixes positions), and scaling the input of the
    feed-forward's output projection is the paper's feed-forward vector; keys get no vector.
    A new task head is trained whole (peft's modules_to_save). With `top_layers`, only the
    modules of the top K layers get vectors: peft's IA3Config has no layers_to_transform, so
    they are listed by their full names.
    """
    from peft import IA3Config  # imported here: see `_build_lora`
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    from .adapters import find_adapter_sites, task_head_params
    heads = sorted({name.split(".")[0] for name in task_head_params(task_model)})
    modules_to_save = heads if task_type not in _LM_TASKS and heads else None
    model_type = task_model.config.model_type
    if model_type in TARGETS:
        targets, feedforward = TARGETS[model_type], FEEDFORWARD[model_type]
    else:
        targets = feedforward = [site.path for site in find_adapter_sites(task_model, "houlsby")]
    if _top_layers().restricts(task_model, top_layers):   # IA3Config has no layers_to_transform
        targets = _top_layers().top_layer_modules(task_model, top_layers, targets)
        feedforward = [name for name in targets if any(name.endswith(f) for f in feedforward)]
    elif model_type in TARGETS:
        return IA3Config(task_type=task_type, modules_to_save=modules_to_save)
    return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward,
                     modules_to_save=modules_to_save)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get for this method."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters, counting an LST model's frozen backbone in `all`."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    unique = {id(p): p for p in model.parameters()}.values()
    return (sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique))


def save_trained(model: nn.Module, method: str, directory: Path) -> list[Path]:
    """Write what `method` trained to `directory`: the LST side network, the peft adapter (with
    `BACKBONE_DTYPES_FILE` for LoRA on a reduced backbone), the
    bottleneck adapters (`adapters.ADAPTER_WEIGHTS` + `ADAPTER_CONFIG`), or the trained tensors
    (full fine-tuning, BitFit). Never the frozen backbone. Returns the files written, each
    readable by others (peft writes 0600 files)."""
    from ..checkpoint import shared_file_mode
    directory = Path(directory)
    before = {p: p.stat().st_mtime_ns for p in directory.iterdir() if p.is_file()}
    get_method(method).save(model, directory)
    written = sorted(p for p in directory.iterdir()
                     if p.is_file() and before.get(p) != p.stat().st_mtime_ns)
    for path in written:
        path.chmod(shared_file_mode())
    return written


def load_trained(task_model: nn.Module, method: str, directory: Path) -> nn.Module:
    """The inverse of `save_trained`: `task_model` (freshly loaded, as `build_method` got it)
    with what `method` trained loaded from `directory`, in eval mode.

    Raises:
        CheckpointError: the folder's files are missing, damaged or do not fit `task_model`.
    """
    return get_method(method).load(task_model, Path(directory))
