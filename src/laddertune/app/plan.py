"""`laddertune plan`: will a training run fit, before anything is loaded?

It predicts the four terms `memory.training_memory_account` measures, from the model's shapes:

    weights      every parameter, at the bytes its storage takes (the frozen LST backbone at
                 --backbone-dtype: bf16 2 bytes; int8 1 byte plus a 4-byte scale per row for
                 Linear and embedding weights; nf4 half a byte plus a 4-byte scale per 64)
    gradients    4 bytes per trainable parameter
    optimizer    8 bytes per trainable parameter (AdamW's two moments)
    activations  what autograd keeps for backward, written out below

The parameters are counted exactly, on a model built on PyTorch's meta device (shapes, no
weights, no memory). The activations are formulas in the batch b, the length t, n = b*t tokens,
the width d, the feed-forward width f and the heads a, counted from the operations a BERT-style
block saves in fp32 (4 bytes each), not fitted to measurements:

    a block trained through   4 * (10 n d + 2 n f + 4 n + 3 b a t^2)   attention matrix kept
                              4 * (11 n d + 2 n f + 4 n + b a t)       fused attention
        10 n d: the inputs of q/k/v, the output projection, both norms and the feed-forward,
        and q, k, v for attention; 2 n f: the activation's input and output; 4 n: the norms'
        means and inverse deviations; the attention term: probabilities, dropout mask and the
        dropped probabilities (b a t^2 each), kept where attention dropout is on and the
        kernel is PyTorch's math one (CPU), else the fused kernel's log-sum-exp (b a t).
    LoRA adds                 4 * n * rank per Linear layer of the block (the low-rank input)
    an LST side block         the same at width d/r and feed-forward f/r, plus n d/r for its
                              ladder gate; its attention dropout is off by default (fused)
    LST's ladders             4 * n * d for each state they read (embeddings + kept layers)
    outside the blocks        4 * (3 b d + n), and 4 * 2 n d more where the embeddings train

The backbone of a frozen-backbone method keeps nothing (it runs without autograd). Prompt tuning
counts its virtual tokens in t. The formulas were checked against the account for lst, lora and
full on BERT-style models (tests/app/test_plan.py); decoder blocks (gated feed-forwards, RMS
norms, rotary embeddings) keep somewhat different tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .. import backbones as bb
from ..config import LSTConfig
from .methods import build_method, get_method

FLOAT = 4               # bytes of an fp32 activation, gradient or optimizer moment
ADAM_MOMENTS = 2
NF4_BLOCK = 64          # bitsandbytes' default block of weights sharing one scale
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes of one training step of `method` at `batch_size` x `max_length`."""

    method: str
    batch_size: int
    max_length: int
    backbone_dtype: str
    weight_bytes: int
    activation_bytes: int
    gradient_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.gradient_bytes + \
            self.optimizer_bytes


@dataclass(frozen=True)
class _Shape:
    """What the activation formulas read off a built (meta) model."""

    width: int
    ffn: int
    heads: int
    blocks: int
    linears_per_block: int
    attention_dropout: bool


def parse_bytes(text: str) -> int:
    """'8GiB', '512 MB', '2e9' -> bytes.

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 8GiB, 512MiB or 2GB")
    return int(float(match.group(1)) * _UNITS[unit])


def meta_model(hf_config, method: str, num_labels: int = 2, reduction_factor: int = 8,
               lora_rank: int = 32):
    """The model `method` trains, built on the meta device from `hf_config`: every parameter
    has its shape and dtype, none has memory. LST's side network starts random here (pruning
    reads weights, and chooses no shape)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    head = get_method(method).head
    auto = AutoModel if head == "bare" else AutoModelForSequenceClassification
    extra = {} if head == "bare" else {"num_labels": num_labels}
    config = type(hf_config).from_dict({**hf_config.to_dict(), **extra})
    if head != "bare":
        config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    with torch.device("meta"):
        task_model = auto.from_config(config)
        lst = LSTConfig(num_labels=num_labels, reduction_factor=reduction_factor,
                        side_init="random")
        return build_method(method, task_model, num_labels=num_labels, lst_config=lst,
                            lora_rank=lora_rank)


def plan(hf_config, method: str, batch_size: int, max_length: int,
         backbone_dtype: str = "float32", num_labels: int = 2, reduction_factor: int = 8,
         device: str = "cpu", lora_rank: int = 32, prompt_tokens: int = 20) -> MemoryPlan:
    """The predicted training memory of one run (see the module doc for the formulas)."""
    model = meta_model(hf_config, method, num_labels, reduction_factor, lora_rank)
    held = [m for name in getattr(model, "held_names", ()) for m in [getattr(model, name)]]
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    frozen_backbone = {id(p): p for m in held for p in m.parameters()}
    weights = sum(_stored_bytes(m, backbone_dtype) for m in held) + sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
        if id(p) not in frozen_backbone)
    params = sum(p.numel() for p in trainable.values())
    length = max_length + (prompt_tokens if method == "prompt" else 0)
    if get_method(method).fit is not None:   # fitted on pooled features: a vector per example
        activations = FLOAT * batch_size * bb.model_width(hf_config)
    else:
        activations = _activation_bytes(model, method, batch_size, length, device, lora_rank)
    return MemoryPlan(method, batch_size, max_length, backbone_dtype, weights, activations,
                      FLOAT * params, FLOAT * ADAM_MOMENTS * params)


def largest_batch(one: MemoryPlan, two: MemoryPlan, budget: int) -> int:
    """The largest batch whose plan fits `budget` (0 if none), from the plans at batches 1 and
    2: everything but the activations is fixed, and the activations grow with the batch."""
    per_example = two.activation_bytes - one.activation_bytes
    fixed = one.total_bytes - per_example
    if fixed + per_example > budget:
        return 0
    return int((budget - fixed) // per_example) if per_example > 0 else 2**31


def _activation_bytes(model, method: str, b: int, t: int, device: str, lora_rank: int) -> int:
    n = b * t
    if method == "lst":
        side = _shape(model.side_model, model.family, model.config.side_attention_dropout > 0)
        backbone_width = model.width
        ladder_reads = sum(len(k) + 1 for k in model.kept_layers)
        blocks = side.blocks * (_block(side, b, t, device) + FLOAT * n * side.width)
        return blocks + FLOAT * (ladder_reads * n * backbone_width + 3 * b * backbone_width + n)
    base = _base_model(model)
    family = bb.detect_family(base)
    shape = _shape(base, family, _attention_dropout(base.config))
    per_block = _block(shape, b, t, device)
    if method == "lora":
        per_block += FLOAT * n * lora_rank * shape.linears_per_block
    embeddings = base.get_input_embeddings().weight.requires_grad
    outside = FLOAT * (3 * b * shape.width + n + (2 * n * shape.width if embeddings else 0))
    return shape.blocks * per_block + outside


def _block(shape: _Shape, b: int, t: int, device: str) -> int:
    """Bytes one block trained through keeps (module doc)."""
    n = b * t
    matrix = shape.attention_dropout and device == "cpu"
    attention = 3 * b * shape.heads * t * t if matrix else b * shape.heads * t
    hidden = (10 if matrix else 11) * n * shape.width
    return FLOAT * (hidden + 2 * n * shape.ffn + 4 * n + attention)


def _shape(stack_owner: nn.Module, family, attention_dropout: bool) -> _Shape:
    stacks = bb.backbone_stacks(stack_owner, family) if hasattr(stack_owner, "config") else [
        stack_owner]
    blocks = [block for stack in stacks for block in _blocks(stack, family)]
    modules = list(blocks[0].modules()) if blocks else []
    adapted = [m for m in modules if hasattr(m, "lora_A")]   # peft's LoRA layer wraps a Linear
    linears = adapted or [m for m in modules if isinstance(m, nn.Linear)]
    widths = [getattr(m, "out_features", 0) for m in linears]
    width = bb.model_width(stack_owner.config) if hasattr(stack_owner, "config") else \
        blocks[0].width
    return _Shape(width=width, ffn=max(widths, default=width),
                  heads=bb._heads(stack_owner.config) or 1, blocks=len(blocks),
                  linears_per_block=len(linears), attention_dropout=attention_dropout)


def _blocks(stack: nn.Module, family) -> list[nn.Module]:
    try:
        return list(bb.get_path(stack, family.layers))
    except AttributeError:
        return [m for m in stack.modules() if type(m).__name__.endswith(("Layer", "Block"))]


def _base_model(model: nn.Module) -> nn.Module:
    """The transformer under a peft wrapper or a task head."""
    while hasattr(model, "get_base_model") or hasattr(model, "base_model") and \
            model.base_model is not model:
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.base_model
    return model


def _attention_dropout(config) -> bool:
    names = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", "dropout_rate")
    return any((getattr(config, name, 0) or 0) > 0 for name in names)


def _stored_bytes(backbone: nn.Module, storage: str) -> int:
    """Bytes of a frozen backbone's weights stored as `storage` (laddertune.quant)."""
    total = 0
    quantised = {}
    for module in backbone.modules():
        if storage == "int8" and isinstance(module, (nn.Linear, nn.Embedding)) or \
                storage == "nf4" and isinstance(module, nn.Linear):
            quantised[id(module.weight)] = module.weight
    for param in {id(p): p for p in backbone.parameters()}.values():
        if id(param) in quantised and storage == "int8":
            total += param.numel() + FLOAT * param.shape[0]
        elif id(param) in quantised:
            total += param.numel() // 2 + FLOAT * math.ceil(param.numel() / NF4_BLOCK)
        elif storage == "bfloat16":
            total += 2 * param.numel()
        else:
            total += param.numel() * param.element_size()
    return total


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


# ---- the command ---------------------------------------------------------------------------

def plan_table(cfg) -> str:
    """`laddertune plan`'s answer to a PlanConfig: one row per method.

    Raises:
        UsageError: --max-length beyond the model's positions, or --backbone-dtype for a method
            that trains the backbone.
    """
    from .aliases import load_config, resolve_model
    from .methods import METHODS
    from .options import UsageError
    methods = list(METHODS) if cfg.method == "all" else [cfg.method]
    if cfg.method not in ("all", "lst") and cfg.backbone_dtype != "float32":
        raise UsageError(f"--backbone-dtype {cfg.backbone_dtype} stores LST's frozen backbone; "
                         f"--method {cfg.method} trains it in float32: drop --backbone-dtype")
    hf_config = load_config(resolve_model(cfg.model))
    limit = getattr(hf_config, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.max_length > limit:
        raise UsageError(f"--max-length {cfg.max_length} exceeds the {limit} positions "
                         f"{cfg.model} was trained with; pass --max-length {limit} or less")
    device = cfg.device if cfg.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    budget = parse_bytes(cfg.budget) if cfg.budget else None
    lines = [f"{cfg.model}, batch {cfg.batch_size} x {cfg.max_length} tokens, on {device}"
             + (f", budget {mib(budget)}" if budget else "") + " (memory above the runtime)",
             f"{'method':<8} {'backbone':<9} {'weights':>12} {'activations':>13} "
             f"{'gradients':>12} {'optimizer':>12} {'total':>12}"
             + ("  fits  largest batch" if budget else "")]
    for method in methods:
        storage = cfg.backbone_dtype if method == "lst" else "float32"
        kwargs = dict(backbone_dtype=storage, num_labels=cfg.num_labels,
                      reduction_factor=cfg.reduction_factor, device=device)
        try:
            one = plan(hf_config, method, cfg.batch_size, cfg.max_length, **kwargs)
        except Exception as err:  # noqa: BLE001 - the method cannot build on this model
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:100]
            lines.append(f"{method:<8} cannot be planned: {reason}")
            continue
        row = (f"{method:<8} {storage:<9} {mib(one.weight_bytes):>12} "
               f"{mib(one.activation_bytes):>13} {mib(one.gradient_bytes):>12} "
               f"{mib(one.optimizer_bytes):>12} {mib(one.total_bytes):>12}")
        if budget:
            largest = largest_batch(plan(hf_config, method, 1, cfg.max_length, **kwargs),
                                    plan(hf_config, method, 2, cfg.max_length, **kwargs), budget)
            fits = one.total_bytes <= budget
            row += f"  {'yes' if fits else 'no':<4}  {largest if largest else 'none fits'}"
        lines.append(row)
    return "\n".join(lines)


def plan_line(cfg, hf_config, max_length: int, num_labels: int, task_type: str,
              device: torch.device) -> str | None:
    """What `laddertune train` prints of its own run's plan before training (classifiers: the
    plan's formulas are for classification heads), or None."""
    if task_type != "SEQ_CLS":
        return None
    try:
        one = plan(hf_config, cfg.method, cfg.batch_size, max_length, cfg.backbone_dtype,
                   num_labels, cfg.reduction_factor, device.type)
    except Exception:  # noqa: BLE001 - a plan is advice: one that cannot be made stops nothing
        return None
    return (f"plan: {cfg.method} at batch {cfg.batch_size} x {max_length} tokens should take "
            f"{mib(one.total_bytes)} above the runtime (weights {mib(one.weight_bytes)}, "
            f"activations {mib(one.activation_bytes)}, gradients and AdamW "
            f"{mib(one.gradient_bytes + one.optimizer_bytes)}; `laddertune plan` explains)")
