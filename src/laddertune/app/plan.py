"""`laddertune plan`: will a training run fit, before anything is loaded?

It predicts the process's peak memory above the runtime (what `laddertune train` records as
metrics.json's `peak_above_runtime_mb`: the peak less the RSS before the model loaded, the
libraries' code it paged in since excluded), as the sum of

    weights      every parameter, at the bytes its storage takes (the frozen LST backbone at
                 --backbone-dtype: bf16 2 bytes; int8 1 byte plus a 4-byte scale per row for
                 Linear and embedding weights; nf4 half a byte plus a 4-byte scale per 64)
    cache        --cache-backbone: the cached states of the training and eval examples, which the
                 cache holds in memory (its dtype's bytes per value)
    and the largest of
      a step     activations (what autograd keeps for backward, below) + gradients (4 bytes per
                 trainable parameter) + optimizer (8: AdamW's two moments) + the step's working
                 set: the larger of one layer's forward (below) and AdamW's update, whose
                 sqrt and division make two temporaries the size of the largest trained tensor.
                 A frozen-backbone method's step peaks either there or in the frozen pass
                 before its side network runs: every layer's state alive, and one frozen
                 layer's working set
      an eval    AdamW's moments + one eval batch through the model without autograd: the
                 hidden states alive (every layer's, for a method that reads them) and one
                 layer's working set at --eval-batch-size
      a checkpoint   AdamW's moments + the trained weights and moments serialised twice (as
                 tensor bytes, then as the file's bytes) before the file is written

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
        kernel is PyTorch's math one (CPU, training), else the fused kernel's log-sum-exp (b a t).
    LoRA adds                 4 * n * rank per adapted Linear layer (the low-rank input)
    one layer's working set   4 * (4 n d + 2 n f + 2 b a t^2 where the matrix is kept): its
                              input and output, q/k/v, the feed-forward's inner activation and
                              the attention scores before and after the softmax
    an LST side block         a block at width d/r and feed-forward f/r, plus n d/r for its
                              ladder gate; its attention dropout is off by default (fused)
    LST's ladders             4 * n * d for each backbone state they read (embeddings + kept
                              layers + xLadder's); a low-rank ladder of rank k adds
                              4 * (2 n k + n d/r + 2 n) (its swish's input and output, its norm)
    LST's late route          its K trained top layers, each a block trained through
    outside the blocks        4 * (3 b d + n), and 4 * 2 n d more where the embeddings train
    a padded batch's mask     4 * b t^2 per block whose attention runs fused: the kernel keeps
                              the float mask it was given (every block gets its own)
    a Llama-style block       4 * (2 * ((2 or 3) n d + n) + 3 n d + 4 n f) + the attention term
    (two RMS norms, a gated   (fused: + n d): each RMS norm keeps its input, its output and a
    feed-forward)             deviation per token, and its normalised input where its weight
                              trains (not under LoRA); attention its rotated queries and the
                              keys and values at full width (a padded batch's mask makes
                              transformers repeat grouped keys), and, fused, its output; the
                              gated feed-forward its gate, activation, up and their product.
                              Its working set counts 3 n f. A Llama-style side stack adds its
                              final norm, 4 * (2 n d/r + n)

Only the blocks from the lowest one with a trained parameter up are trained through (top-layer
LoRA and full fine-tuning keep nothing below); a frozen-backbone method's backbone keeps nothing
(it runs without autograd, all its layers' states alive until the side network has read them).
Prompt tuning counts its virtual tokens in t. What differs per method is the registry's
`Method.activations` (`methods.py`); the formulas were checked against the measured account on
BERT-style models (tests/app/test_plan.py) and against `laddertune train`'s measured peaks
(benchmarks/plan_check.py). The formulas assume a padded batch, as training sees: on a batch
with no padding the fused kernel gets no mask, and the plan is high by that mask (tiny models:
up to 1.29x for LST's side blocks, 1.10x for Llama-style LoRA and full fine-tuning).
Llama-style blocks (Llama, Qwen2, Mistral, Gemma; two RMS norms and a gated feed-forward)
were checked the same way: 0.96-0.99 on padded batches, with and without attention dropout.
Other decoder blocks take the BERT terms and have not been checked: on tiny models the plan's
kept activations were 0.71-0.76 of the measured for GPT-2, 1.00-1.14 for OPT, 0.98-1.37 for
GPT-NeoX, 0.36-0.78 for Gemma 2 (four norms a block) and 0.72-0.89 for Qwen 3 (q/k norms),
and the encoder-decoder LST of T5 is not planned right (0.26).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import backbones as bb
from ..config import LSTConfig
from .methods import build_method, default_eval_batch, get_method

FLOAT = 4               # bytes of an fp32 activation, gradient or optimizer moment
ADAM_MOMENTS = 2
ADAM_TEMPORARIES = 2    # AdamW's update: sqrt(v) and its quotient, each the size of the tensor
NF4_BLOCK = 64          # bitsandbytes' default block of weights sharing one scale
SERIALISED_COPIES = 2   # a checkpoint's tensors as bytes, then the safetensors file's bytes
CACHE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes of a training run of `method` at `batch_size` x `max_length` (module
    doc): the four terms the memory account measures, and what the process's peak adds."""

    method: str
    batch_size: int
    max_length: int
    backbone_dtype: str
    weight_bytes: int
    activation_bytes: int      # kept for backward by one step
    gradient_bytes: int
    optimizer_bytes: int
    working_bytes: int = 0     # a step's largest transient: one layer's forward or AdamW's update
    eval_bytes: int = 0        # one eval batch without autograd
    cache_bytes: int = 0       # --cache-backbone's states held in memory
    checkpoint_bytes: int = 0  # an epoch's checkpoint, serialised in memory before it is written

    @property
    def account_bytes(self) -> int:
        """What `memory.training_memory_account` measures of one step."""
        return self.weight_bytes + self.activation_bytes + self.gradient_bytes + \
            self.optimizer_bytes

    @property
    def step_bytes(self) -> int:
        return self.activation_bytes + self.gradient_bytes + self.optimizer_bytes + \
            self.working_bytes

    @property
    def total_bytes(self) -> int:
        """The predicted peak above the runtime."""
        return self.weight_bytes + self.cache_bytes + max(
            self.step_bytes, self.optimizer_bytes + max(self.eval_bytes, self.checkpoint_bytes))


@dataclass(frozen=True)
class Batch:
    """Where a formula is evaluated: b examples of t tokens, training on `device`."""

    size: int
    length: int
    device: str

    @property
    def tokens(self) -> int:
        return self.size * self.length


@dataclass(frozen=True)
class _Shape:
    """What the activation formulas read off a built (meta) model."""

    width: int
    ffn: int
    heads: int
    blocks: int
    linears_per_block: int
    attention_dropout: bool
    gated: bool = False        # a Llama-style block: two RMS norms and a gated feed-forward


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
               lora_rank: int = 32, lst_config: LSTConfig | None = None,
               top_layers: int | None = None):
    """The model `method` trains, built on the meta device from `hf_config`: every parameter
    has its shape and dtype, none has memory. LST's side network starts random here (pruning
    reads weights, and chooses no shape)."""
    from dataclasses import replace

    from transformers import AutoModel, AutoModelForSequenceClassification

    head = get_method(method).head
    auto = AutoModel if head == "bare" else AutoModelForSequenceClassification
    extra = {} if head == "bare" else {"num_labels": num_labels}
    config = type(hf_config).from_dict({**hf_config.to_dict(), **extra})
    if head != "bare":
        config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    lst = replace(lst_config or LSTConfig(num_labels=num_labels,
                                          reduction_factor=reduction_factor),
                  side_init="random", backbone_dtype="float32")
    with torch.device("meta"):
        task_model = auto.from_config(config)
        return build_method(method, task_model, num_labels=num_labels, lst_config=lst,
                            lora_rank=lora_rank, top_layers=top_layers)


def plan(hf_config, method: str, batch_size: int, max_length: int,
         backbone_dtype: str = "float32", num_labels: int = 2, reduction_factor: int = 8,
         device: str = "cpu", lora_rank: int = 32, lst_config: LSTConfig | None = None,
         top_layers: int | None = None, eval_batch_size: int | None = None,
         cached_tokens: int = 0, cache_dtype: str = "float16") -> MemoryPlan:
    """The predicted memory of one training run (see the module doc for the formulas).

    Args:
        lst_config: LST's settings (layers kept, late route, xLadder, ladder rank); by default
            LSTConfig's at `reduction_factor`.
        top_layers: --top-layers: only the top K backbone layers train.
        eval_batch_size: examples per eval forward pass (by default `train`'s for the method).
        cached_tokens: --cache-backbone: the tokens of every example whose states it caches.
        cache_dtype: the cached states' dtype.
    """
    entry = get_method(method)
    model = meta_model(hf_config, method, num_labels, reduction_factor, lora_rank, lst_config,
                       top_layers)
    held = [m for name in getattr(model, "held_names", ()) for m in [getattr(model, name)]]
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    frozen_backbone = {id(p): p for m in held for p in m.parameters()}
    if not held and backbone_dtype != "float32":   # LoRA on a reduced backbone: all but the
        frozen_backbone = {i: p for i, p in _unique_parameters(model).items()   # trained
                           if i not in trainable}
        held = [model]
    weights = sum(_stored_bytes(m, backbone_dtype, skip=trainable) for m in held) + sum(
        p.numel() * p.element_size() for i, p in _unique_parameters(model).items()
        if i not in frozen_backbone)
    params = sum(p.numel() for p in trainable.values())
    largest = max((p.numel() for p in trainable.values()), default=0)
    length = max_length + _virtual_tokens(model)
    eval_batch_size = eval_batch_size or default_eval_batch(method, batch_size)
    step, evaluation = Batch(batch_size, length, device), Batch(eval_batch_size, length, device)
    activations = (entry.activations or trained_through_activations)(model, step)
    states = len(_all_states(hf_config)) if entry.reads_backbone_states else 2
    backbone = backbone_shape(model)
    if entry.reads_backbone_states:
        # the frozen pass, before the side network runs: every layer's state alive at once, and
        # one frozen layer's working set (eval mode: the fused attention kernel)
        frozen_pass = FLOAT * states * step.tokens * backbone.width + layer_working_bytes(
            backbone, step, False)
        working = max(frozen_pass - activations, FLOAT * ADAM_TEMPORARIES * largest)
    else:
        working = max(layer_working_bytes(backbone, step, _keeps_matrix(backbone, step)),
                      FLOAT * ADAM_TEMPORARIES * largest)
    eval_pass = (FLOAT * states * evaluation.tokens * backbone.width
                 + layer_working_bytes(backbone, evaluation, False))
    cache = cached_tokens * backbone.width * cached_states(model) * CACHE_BYTES[cache_dtype]
    checkpoint = SERIALISED_COPIES * FLOAT * (1 + ADAM_MOMENTS) * params
    return MemoryPlan(method, batch_size, max_length, backbone_dtype, weights, activations,
                      FLOAT * params, FLOAT * ADAM_MOMENTS * params, working, eval_pass, cache,
                      checkpoint)


def largest_batch(plan_at: Callable[[int], MemoryPlan], budget: int) -> int:
    """The largest batch whose plan fits `budget` (0 if none): the plan grows with the batch,
    so doubling, then halving the gap, finds it."""
    if plan_at(1).total_bytes > budget:
        return 0
    low, high = 1, 2
    while plan_at(high).total_bytes <= budget:
        if high >= 2**31:
            return high
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if plan_at(middle).total_bytes <= budget else (low, middle)
    return low


# ---- activations, per method (the registry's `Method.activations`) --------------------------

def trained_through_activations(model: nn.Module, batch: Batch) -> int:
    """What a model trained through its transformer keeps: its blocks from the lowest with a
    trained parameter up (all of them where the embeddings or a prompt train), LoRA's
    low-rank inputs in those, and the head."""
    base = _base_model(model)
    family = bb.detect_family(base)
    shape = _shape(base, family, _attention_dropout(base.config))
    blocks = [block for stack in bb.backbone_stacks(base, family) for block in _blocks(stack,
                                                                                       family)]
    inputs_train = base.get_input_embeddings().weight.requires_grad or _virtual_tokens(model)
    first = 0 if inputs_train else next(
        (i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())),
        len(blocks))
    trained = blocks[first:]
    n = batch.tokens
    low_rank = sum(_lora_rank(m) for block in trained for m in block.modules())
    outside = FLOAT * (3 * batch.size * shape.width + n + (2 * n * shape.width if inputs_train
                                                           else 0))
    return (len(trained) * _block(shape, batch, _norms_train(*trained)) + FLOAT * n * low_rank
            + outside)


def lst_activations(model: nn.Module, batch: Batch) -> int:
    """What an LST step keeps: the side blocks, the backbone states its ladders read, low-rank
    ladders' insides, the late route's trained top layers and the head (module doc)."""
    n, b = batch.tokens, batch.size
    side = _shape(model.side_model, model.family, model.config.side_attention_dropout > 0)
    blocks = side.blocks * (_block(side, batch) + FLOAT * n * side.width)
    states_read = sum(len(set(layers)) + 1 for layers in model.ladder_layers)
    ladders = sum(FLOAT * (2 * n * down.inner.out_features + n * side.width + 2 * n)
                  for ladder in model.ladders for down in ladder.down if hasattr(down, "inner"))
    late = 0
    if model.late is not None:
        backbone = backbone_shape(model)
        low_rank = sum(m.lora_a.out_features for m in model.late.modules() if hasattr(m, "lora_a"))
        late = (len(model.late.blocks) * _block(backbone, batch, _norms_train(model.late))
                + FLOAT * n * low_rank)
    # a Llama-style side stack ends in an RMS norm: its input, its normalised input and a
    # deviation per token
    final_norm = FLOAT * (2 * n * side.width + n) if side.gated else 0
    return blocks + ladders + late + final_norm + FLOAT * (states_read * n * model.width
                                                           + 3 * b * model.width + n)


def fitted_activations(model: nn.Module, batch: Batch) -> int:
    """A method fitted on pooled features (the probe): a vector per example."""
    return FLOAT * batch.size * backbone_shape(model).width


# ---- shapes ---------------------------------------------------------------------------------

def _block(shape: _Shape, batch: Batch, norms_train: bool = True) -> int:
    """Bytes one block trained through keeps (module doc)."""
    b, t, n = batch.size, batch.length, batch.tokens
    matrix = _keeps_matrix(shape, batch)
    # fused: its log-sum-exp, and the float mask of a padded batch, which it keeps
    attention = 3 * b * shape.heads * t * t if matrix else b * shape.heads * t + b * t * t
    if shape.gated:
        return FLOAT * _gated_block(shape, batch, matrix, norms_train) + FLOAT * attention
    hidden = (10 if matrix else 11) * n * shape.width
    return FLOAT * (hidden + 2 * n * shape.ffn + 4 * n + attention)


def _norms_train(*modules: nn.Module) -> bool:
    """Whether a norm's weight trains in `modules` (an RMS norm then keeps more)."""
    return any(p.requires_grad for module in modules for name, p in module.named_parameters()
               if "norm" in name)


def _gated_block(shape: _Shape, batch: Batch, matrix: bool, norms_train: bool) -> int:
    """Values a Llama-style block keeps beside its attention term, counted off its operations:
    each RMS norm its input, its output and an inverse deviation per token, and its normalised
    input where its weight trains (2 or 3 n d + n; a LayerNorm is one operation that keeps the
    same whether or not it trains, an RMS norm is several); rotary embeddings keep only their
    cos and sin (shared by every layer); attention its rotated queries and its keys and values
    at full width (3 n d: with grouped queries transformers repeats the keys whenever a padded
    batch's mask is passed or dropout is on) and, in the fused kernel, its output (n d); the
    gated feed-forward the gate's output, its activation, the up projection and their product
    (4 n f)."""
    n = batch.tokens
    norms = 2 * ((3 if norms_train else 2) * n * shape.width + n)
    return norms + 3 * n * shape.width + (0 if matrix else n * shape.width) + 4 * n * shape.ffn


def layer_working_bytes(shape: _Shape, batch: Batch, matrix: bool) -> int:
    """One layer's forward working set (module doc): what a step or an eval holds beyond what
    it keeps, at the widest layer."""
    b, t, n = batch.size, batch.length, batch.tokens
    scores = 2 * b * shape.heads * t * t if matrix else 0
    inner = 3 if shape.gated else 2      # a gated feed-forward's gate, activation and up
    return FLOAT * (4 * n * shape.width + inner * n * shape.ffn + scores)


def _keeps_matrix(shape: _Shape, batch: Batch) -> bool:
    """Attention with dropout on a CPU runs PyTorch's math kernel, which keeps its matrix."""
    return shape.attention_dropout and batch.device == "cpu"


def backbone_shape(model: nn.Module) -> _Shape:
    """The shape of the transformer `model` trains, or holds frozen."""
    held = [getattr(model, name) for name in getattr(model, "held_names", ())]
    base = _base_model(held[0] if held else model)
    return _shape(base, bb.detect_family(base), _attention_dropout(base.config))


def _all_states(hf_config) -> range:
    """The states a backbone run for its hidden states returns: embeddings + every layer."""
    layers = getattr(hf_config, "num_hidden_layers", None) or getattr(hf_config, "n_layer", 0)
    return range(layers + 1)


def cached_states(model: nn.Module) -> int:
    """States per token the backbone cache stores: those the ladders (or the probe) read."""
    layers = getattr(model, "ladder_layers", None)
    return sum(len(set(kept)) + 1 for kept in layers) if layers else 1


def _virtual_tokens(model: nn.Module) -> int:
    """Prompt tuning's virtual tokens, which every sequence carries before its text."""
    config = getattr(model, "active_peft_config", None)
    return getattr(config, "num_virtual_tokens", 0) or 0


def _lora_rank(module: nn.Module) -> int:
    """The summed rank of peft's LoRA adapters on `module` (0 if none)."""
    adapters = getattr(module, "lora_A", None)
    return sum(a.out_features for a in adapters.values()) if isinstance(adapters,
                                                                        nn.ModuleDict) else 0


def _shape(stack_owner: nn.Module, family, attention_dropout: bool) -> _Shape:
    stacks = bb.backbone_stacks(stack_owner, family) if hasattr(stack_owner, "config") else [
        stack_owner]
    blocks = [block for stack in stacks for block in _blocks(stack, family)]
    modules = list(blocks[0].modules()) if blocks else []
    adapted = [m for m in modules if hasattr(m, "lora_A")]   # peft's LoRA layer wraps a Linear
    # GPT-2's Conv1D is a Linear stored transposed (backbones reads both)
    linears = adapted or [m for m in modules if bb._is_linear(m)]
    widths = [getattr(m, "out_features", None) or bb._in_out(m)[1] for m in linears]
    config = getattr(stack_owner, "config", None)
    # laddertune's GenericSideBlock has no config: its width and heads are its own
    width = bb.model_width(config) if config is not None else getattr(
        blocks[0], "width", None) or next(m.in_features for m in linears
                                          if isinstance(m, nn.Linear))
    heads = (bb._heads(config) if config is not None else getattr(blocks[0], "heads", 1)) or 1
    # Llama's block exactly: a gated feed-forward and two RMS norms (Gemma 2's four norms,
    # Qwen 3's and OLMo 2's extra ones keep other tensors, so they take the BERT terms)
    names = [name.rsplit(".", 1)[-1] for name, _ in blocks[0].named_modules()] if blocks else []
    norms = [m for m in modules if type(m).__name__.endswith("RMSNorm")]
    gated = "gate_proj" in names and len(norms) == 2
    return _Shape(width=width, ffn=max(widths, default=width), heads=heads, blocks=len(blocks),
                  linears_per_block=len(linears), attention_dropout=attention_dropout,
                  gated=gated)


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


def _unique_parameters(module: nn.Module) -> dict[int, torch.Tensor]:
    return {id(p): p for p in module.parameters()}


def _stored_bytes(backbone: nn.Module, storage: str, skip=()) -> int:
    """Bytes of a frozen backbone's weights stored as `storage` (laddertune.quant); parameters
    in `skip` (ids: trained ones, which stay float32) are not counted."""
    total = 0
    quantised = {}
    for module in backbone.modules():
        if storage == "int8" and isinstance(module, (nn.Linear, nn.Embedding)) or \
                storage == "nf4" and isinstance(module, nn.Linear):
            quantised[id(module.weight)] = module.weight
    for key, param in _unique_parameters(backbone).items():
        if key in skip:
            continue
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
    if cfg.method != "all" and cfg.backbone_dtype != "float32" and not get_method(
            cfg.method).reduced_backbone:
        raise UsageError(f"--backbone-dtype {cfg.backbone_dtype} stores a frozen backbone "
                         f"(lst, lora); --method {cfg.method} trains it in float32: drop "
                         "--backbone-dtype")
    hf_config = load_config(resolve_model(cfg.model))
    limit = getattr(hf_config, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.max_length > limit:
        raise UsageError(f"--max-length {cfg.max_length} exceeds the {limit} positions "
                         f"{cfg.model} was trained with; pass --max-length {limit} or less")
    device = cfg.device if cfg.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    budget = parse_bytes(cfg.budget) if cfg.budget else None
    lines = [f"{cfg.model}, batch {cfg.batch_size} x {cfg.max_length} tokens, on {device}"
             + (f", budget {mib(budget)}" if budget else "") + " (peak memory above the "
             "runtime; total: weights + the larger of a step and an eval)",
             f"{'method':<8} {'backbone':<9} {'weights':>12} {'activations':>13} "
             f"{'gradients':>12} {'optimizer':>12} {'working':>12} {'eval':>12} {'total':>12}"
             + ("  fits  largest batch" if budget else "")]
    for method in methods:
        storage = cfg.backbone_dtype if get_method(method).reduced_backbone else "float32"
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
               f"{mib(one.optimizer_bytes):>12} {mib(one.working_bytes):>12} "
               f"{mib(one.eval_bytes):>12} {mib(one.total_bytes):>12}")
        if budget:
            largest = largest_batch(
                lambda b, m=method, k=kwargs: plan(hf_config, m, b, cfg.max_length, **k), budget)
            fits = one.total_bytes <= budget
            row += f"  {'yes' if fits else 'no':<4}  {largest if largest else 'none fits'}"
        lines.append(row)
    return "\n".join(lines)


def run_plan(cfg, hf_config, max_length: int, num_labels: int, device: torch.device,
             train_set=None, eval_set=None) -> MemoryPlan:
    """The plan of a `laddertune train` run (a TrainConfig `cfg`) on its tokenized data: its
    batches are as long as its longest example and hold no more examples than its sets, and
    --cache-backbone holds every example's states."""
    entry = get_method(cfg.method)
    sets = [s for s in (train_set, eval_set) if s is not None]
    lengths = [min(len(ids), max_length) for s in sets for ids in s.input_ids]
    length = max(lengths, default=max_length)
    batch = min(cfg.batch_size, len(train_set)) if train_set else cfg.batch_size
    eval_batch = min(cfg.eval_batch_size, len(eval_set)) if eval_set else cfg.eval_batch_size
    reads_cache = cfg.cache_backbone and (entry.reads_backbone_states
                                          or cfg.top_layers is not None)
    cached = sum(lengths) if reads_cache else 0      # top K: the one state entering them
    lst = cfg.lst_config(num_labels) if entry.reads_lst_settings else None
    return plan(hf_config, cfg.method, batch, length, cfg.backbone_dtype, num_labels,
                cfg.reduction_factor, device.type, lst_config=lst, top_layers=cfg.top_layers,
                eval_batch_size=eval_batch, cached_tokens=cached, cache_dtype=cfg.cache_dtype)


def plan_line(cfg, hf_config, max_length: int, num_labels: int, task_type: str,
              device: torch.device, train_set=None, eval_set=None) -> str | None:
    """What `laddertune train` prints of its own run's plan before training (classifiers: the
    plan's formulas are for classification heads), or None."""
    if task_type != "SEQ_CLS":
        return None
    try:
        one = run_plan(cfg, hf_config, max_length, num_labels, device, train_set, eval_set)
    except Exception:  # noqa: BLE001 - a plan is advice: one that cannot be made stops nothing
        return None
    cache = f", cached states {mib(one.cache_bytes)}" if one.cache_bytes else ""
    return (f"plan: {cfg.method} at batch {cfg.batch_size} x {one.max_length} tokens should "
            f"peak at {mib(one.total_bytes)} above the runtime (weights "
            f"{mib(one.weight_bytes)}, activations {mib(one.activation_bytes)}, gradients and "
            f"AdamW {mib(one.gradient_bytes + one.optimizer_bytes)}, working set "
            f"{mib(one.working_bytes)}, eval {mib(one.eval_bytes)}{cache}; `laddertune plan` "
            "explains)")
