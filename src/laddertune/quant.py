"""A frozen backbone stored in 16, 8 or 4 bits: LST never back-propagates through it, so any
inference format will do, and its weights are most of LST's training memory.

    float32   as loaded.
    bfloat16  every parameter stored in bf16 (half the bytes). It computes in bf16 where the
              device has fast bf16 kernels (CUDA; CPUs that oneDNN reports bf16-capable), and
              elsewhere each layer is upcast to fp32 for its own forward call only, so one
              layer's fp32 copy exists at a time.
    int8      torchao weight-only int8 (one scale per output row) for Linear layers, and int8
              rows with one scale each for embeddings (`Int8Embedding`: a lookup dequantises
              only the rows it reads); computed in fp32. Needs the `laddertune[quant]` extra
              (torchao). The LM head stays as loaded.
    nf4       bitsandbytes 4-bit NormalFloat Linear layers computing in bf16, CUDA only.

The backbone is converted in place, one unit at a time (a transformer block, or a module outside
the blocks), so a full second copy of the weights never exists. The side network stays fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import sys
import weakref

import torch
from torch import nn

from .checkpoint import _ARCHITECTURE_KEYS, _SAMPLES
from .config import BACKBONE_DTYPES
from .errors import LSTConfigError

# Fingerprints of backbones as loaded, taken before conversion: a converted backbone's weights
# are no longer the original ones it must be recognised by.
_ORIGINAL_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DEFERRED = [False]    # inside `conversion_deferred`


@contextlib.contextmanager
def conversion_deferred():
    """Inside, a new LSTModel leaves its backbone as loaded and only records the dtype it will
    compute in: a sweep prunes every configuration from the original weights, then converts
    the backbone they share once (`LSTModel.convert_backbone`)."""
    _DEFERRED[0] = True
    try:
        yield
    finally:
        _DEFERRED[0] = False


def conversion_is_deferred() -> bool:
    return _DEFERRED[0]


def fast_bf16(device: torch.device | str) -> bool:
    """Whether `device` has fast bf16 matrix kernels: a CUDA GPU that supports bf16, or a CPU
    that oneDNN reports bf16-capable (AVX-512 BF16/AMX; torch has no public API for it yet)
    while ATen dispatches its AVX-512 kernels: under a lower `ATEN_CPU_CAPABILITY` ATen's own
    bf16 kernels (attention's among them) refuse to run ("only supported when avx512 is")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def compute_dtype(storage: str, device: torch.device | str) -> str:
    """The dtype a backbone stored as `storage` computes in on `device`."""
    check_backbone_dtype(storage, device)
    if storage == "bfloat16":
        return "bfloat16" if fast_bf16(device) else "float32"
    return "bfloat16" if storage == "nf4" else "float32"


def check_backbone_dtype(storage: str, device: torch.device | str) -> None:
    """Raises LSTConfigError for an unknown dtype, nf4 off CUDA or int8 without torchao."""
    if storage not in BACKBONE_DTYPES:
        raise LSTConfigError(f"backbone_dtype={storage!r} is unknown; use one of "
                             f"{', '.join(BACKBONE_DTYPES)}")
    if storage == "nf4" and torch.device(device).type != "cuda":
        raise LSTConfigError("backbone dtype nf4 (bitsandbytes 4-bit) needs a CUDA GPU; on "
                             "this device use int8")
    if storage == "int8":
        try:
            _import_torchao()
        except ImportError:
            raise LSTConfigError("backbone dtype int8 needs torchao; run `pip install "
                                 "laddertune[quant]`") from None


def stored_dtype(backbone: nn.Module) -> str:
    """How `backbone`'s weights are stored now: nf4, int8, bfloat16 or float32."""
    kinds = {type(p).__name__ for p in backbone.parameters()}
    if "Params4bit" in kinds:
        return "nf4"
    if any(_is_int8(p) for p in backbone.parameters()) or any(
            isinstance(m, Int8Embedding) for m in backbone.modules()):
        return "int8"
    floats = [p.dtype for p in backbone.parameters() if p.is_floating_point()]
    return "bfloat16" if torch.bfloat16 in floats else "float32"


def original_fingerprint(backbone: nn.Module) -> dict | None:
    """The fingerprint `convert_backbone` took of `backbone` before converting it, if it did."""
    return _ORIGINAL_FINGERPRINTS.get(backbone)


def remember_fingerprint(backbone: nn.Module, fingerprint: dict) -> None:
    """Record the fingerprint of `backbone`'s original weights (a loader that converted them
    as they streamed past took it)."""
    _ORIGINAL_FINGERPRINTS[backbone] = fingerprint


def weight_stats(weight: torch.Tensor) -> tuple[float, list[float]] | None:
    """What a fingerprint reads of one original weight: its mean |w| and evenly spaced samples
    (as `checkpoint.backbone_fingerprint` computes them), or None for a vector or integers."""
    if not weight.is_floating_point() or weight.dim() < 2:
        return None
    flat = weight.detach().reshape(-1)
    chunk = 1 << 20    # summed a million at a time: no full-size temporaries while loading
    abs_sum = sum(flat[i:i + chunk].abs().sum(dtype=torch.float64).item()
                  for i in range(0, flat.numel(), chunk))
    abs_mean = abs_sum / flat.numel()
    index = torch.arange(_SAMPLES, device=flat.device) * (flat.numel() - 1) // (_SAMPLES - 1)
    return abs_mean, flat[index].double().cpu().tolist()


def streamed_fingerprint(config, shapes: list[list], stats: dict) -> dict:
    """`checkpoint.backbone_fingerprint` of a backbone whose weights were converted as they
    loaded: `shapes` are [name, shape] of its original parameters in order, `stats` the
    `weight_stats` of each original weight, by name."""
    settings = {k: getattr(config, k) for k in _ARCHITECTURE_KEYS if hasattr(config, k)}
    text = json.dumps({"config": settings, "parameters": shapes}, sort_keys=True, default=str)
    kept = [stats[name] for name, _ in shapes if stats.get(name)]
    return {"architecture_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "weight_abs_means": [abs_mean for abs_mean, _ in kept],
            "weight_samples": [s for _, samples in kept for s in samples]}


def convert_backbone(backbone: nn.Module, storage: str, blocks: list[nn.Module],
                     device: torch.device | str | None = None, fingerprint=None,
                     keep_lm_head: bool = False) -> str:
    """Store `backbone` as `storage`, in place, unit by unit: each of `blocks` (its transformer
    blocks), then each module outside them that holds parameters. Returns the compute dtype.

    Args:
        keep_lm_head: leave the LM head (and an embedding tied to it) as loaded in int8 and
            nf4: a language-model task reads it as a whole matrix every step.
        fingerprint: called before anything changes; its result is what `original_fingerprint`
            returns for this backbone from then on.

    Raises:
        LSTConfigError: see `check_backbone_dtype`; or the backbone is already stored in
            another reduced dtype.
    """
    if storage == "float32":     # as loaded, whatever that is: nothing changes
        floats = {p.dtype for p in backbone.parameters() if p.is_floating_point()}
        return "bfloat16" if floats == {torch.bfloat16} else "float32"
    device = torch.device(device) if device is not None else _device_of(backbone)
    compute = compute_dtype(storage, device)
    check_convertible(backbone, storage)
    if fingerprint is not None and backbone not in _ORIGINAL_FINGERPRINTS:
        _ORIGINAL_FINGERPRINTS[backbone] = fingerprint()
    keep = _lm_head_weights(backbone) if keep_lm_head and storage != "bfloat16" else set()
    if storage == "nf4":   # replaces modules, so it walks their parents: still one at a time
        _to_nf4(backbone, keep)
    else:
        parents = parent_map(backbone)
        for unit in conversion_units(backbone, blocks):
            convert_unit(unit, storage, compute, keep, parents)
            release_freed_memory()
    return compute


def convert_task_model(task_model: nn.Module, storage: str,
                       device: torch.device | str | None = None) -> str:
    """Store the backbone of a Hugging Face task model as `storage`, in place, for a method that
    trains through it (LoRA on a quantised backbone, QLoRA at nf4). Returns the compute dtype.

    The base model is converted unit by unit (`convert_backbone`); a classification head stays
    fp32 and unquantised (it trains), its input cast to fp32 when the backbone computes in
    bf16. An LM head is converted with the model and, in int8 and nf4, kept as loaded. The
    fingerprint stays that of the original weights (`original_fingerprint` of the base model).
    """
    from . import backbones as bb
    from .checkpoint import backbone_fingerprint
    base = task_model.base_model
    original = original_fingerprint(base) or backbone_fingerprint(base.config, [base])
    family = bb.detect_family(base)
    blocks = [block for stack in bb.backbone_stacks(base, family)
              for block in bb.get_path(stack, family.layers)]
    lm = task_model.get_output_embeddings() is not None
    if storage == "nf4" and device is not None:   # bitsandbytes quantises as it reaches the GPU
        (task_model if lm else base).to(device)
    compute = convert_backbone(task_model if lm else base, storage, blocks, device,
                               keep_lm_head=lm)
    remember_fingerprint(base, original)
    if storage == "nf4":
        task_model.is_loaded_in_4bit = True   # what peft reads to wrap bitsandbytes layers
    if not lm:
        fp32_head(task_model, compute)
    return compute


def fp32_head(task_model: nn.Module, compute: str) -> None:
    """A classification head trains in fp32: when the backbone computes in bf16, the head's
    modules read its states cast to fp32."""
    if compute == "bfloat16":
        for head in task_model.children():
            if head is not task_model.base_model:
                head.register_forward_pre_hook(_to_float32)


def _to_float32(module: nn.Module, args):
    """Forward pre-hook: a trainable fp32 head reads a bf16 backbone's states as fp32."""
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def check_convertible(backbone: nn.Module, storage: str, pruned: bool = False) -> None:
    """Raises LSTConfigError when `backbone` is stored in another reduced dtype than `storage`,
    or (`pruned`: pruning will read it) has lost its original weights: stored in int8 or nf4,
    or converted to bf16 by `convert_backbone`."""
    current = stored_dtype(backbone)
    if storage != "float32" and current not in ("float32", storage):
        raise LSTConfigError(f"the backbone is already stored in {current}; load it again in "
                             f"float32 to store it in {storage}")
    # a backbone converted here (a sweep's later configurations share it) has lost them too
    if pruned and (current in ("int8", "nf4") or (
            current == "bfloat16" and backbone in _ORIGINAL_FINGERPRINTS)):
        raise LSTConfigError(f"the backbone is already stored in {current}, and pruning needs "
                             "its original weights: pass a float32 backbone, or "
                             "side_init='random' (--lst-side-init random)")


def parent_map(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """Each submodule's parent and its name there, by the submodule's id."""
    return {id(child): (parent, name) for parent in model.modules()
            for name, child in parent.named_children()}


def conversion_units(backbone: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """The blocks, then every module outside them with parameters of its own, in order."""
    inside = {id(m) for block in blocks for m in block.modules()}
    rest = [m for m in backbone.modules() if id(m) not in inside
            and next(m.parameters(recurse=False), None) is not None]
    return [*blocks, *rest]


def convert_unit(unit: nn.Module, storage: str, compute: str, keep: set[int] = frozenset(),
                 parents: dict | None = None) -> None:
    """Store one unit's weights as `storage`, bfloat16 or int8 (bf16 computing in fp32 gets
    the upcast hooks; int8 replaces embeddings, found in `parents`, see `parent_map`).
    Parameters whose id is in `keep` (a tied LM head) are left as they are."""
    if storage == "bfloat16":
        for param in _own_parameters(unit):
            param.data = param.data.to(torch.bfloat16)
        if compute == "float32" and not hasattr(unit, "_laddertune_upcast"):
            unit._laddertune_upcast = (unit.register_forward_pre_hook(_upcast),
                                       unit.register_forward_hook(_restore))
    elif storage == "int8":
        for module in list(unit.modules()):
            if id(getattr(module, "weight", None)) in keep:
                continue
            if type(module) is nn.Linear and not _is_int8(module.weight):
                module.weight = nn.Parameter(int8_rows(module.weight.detach()),
                                             requires_grad=False)
            elif type(module) is nn.Embedding:
                parent, name = parents[id(module)]
                setattr(parent, name, Int8Embedding(module))
        # What stays float32 (norms, biases) may be a view into the checkpoint's memory map:
        # copied out, so the map (the whole float32 file, resident once pruning has read it)
        # is unmapped when the converted weights let go of it.
        for param in _own_parameters(unit):
            if id(param) not in keep and not _is_int8(param):
                param.data = param.data.clone()


def int8_rows(weight: torch.Tensor, rows_at_once: int = 4096) -> torch.Tensor:
    """torchao's weight-only int8 tensor of `weight` (one scale per row, as
    `Int8WeightOnlyConfig` makes), quantised a few thousand rows at a time so the temporaries
    stay small beside a large embedding."""
    Int8Tensor, PerRow = _import_torchao().Int8Tensor, _import_torchao().PerRow
    parts = [Int8Tensor.from_hp(weight[i:i + rows_at_once], PerRow())
             for i in range(0, weight.shape[0], rows_at_once)]
    return Int8Tensor(torch.cat([p.qdata for p in parts]), torch.cat([p.scale for p in parts]),
                      parts[0].block_size, weight.dtype,
                      zero_point=torch.cat([p.zero_point for p in parts]))


class Int8Embedding(nn.Module):
    """An nn.Embedding stored as int8 rows with one fp32 scale per row (absmax / 127). A lookup
    dequantises only the rows it reads; torchao's int8 embedding dequantises the whole table on
    every call, a full fp32 copy of it each step."""

    def __init__(self, embedding: nn.Embedding, rows_at_once: int = 4096):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        weight = embedding.weight.detach()
        qdata = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(weight.shape[0], 1, dtype=torch.float32, device=weight.device)
        for i in range(0, weight.shape[0], rows_at_once):       # small temporaries only
            rows = weight[i:i + rows_at_once].float()
            scale[i:i + rows_at_once] = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
            qdata[i:i + rows_at_once] = (rows / scale[i:i + rows_at_once]).round().clamp(
                -127, 127).to(torch.int8)
        self.qdata = nn.Parameter(qdata, requires_grad=False)            # (vocab, d)
        self.scale = nn.Parameter(scale, requires_grad=False)            # (vocab, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qdata[ids].float() * self.scale[ids]                 # (..., d)

    def dequantize(self) -> torch.Tensor:
        return self.qdata.float() * self.scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def _import_torchao():
    """torchao.quantization, without the warnings its import logs about CUDA kernels a CPU
    build cannot load (they are not used here)."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization
        return torchao.quantization
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _own_parameters(unit: nn.Module):
    """Every parameter under `unit` not yet bf16, each once (tied weights are shared)."""
    return [p for p in {id(p): p for p in unit.parameters()}.values()
            if p.is_floating_point() and p.dtype != torch.bfloat16]


def _upcast(unit: nn.Module, args) -> None:
    """Forward pre-hook: this unit's bf16 weights as fp32 copies, for this call only. A
    backward through the unit (LoRA trains through the backbone) upcasts them again: autograd
    keeps the weight itself, whose data is bf16 again by then (see `_UpcastAgain`)."""
    unit._laddertune_stored = {}
    for param in {id(p): p for p in unit.parameters()}.values():
        if param.dtype == torch.bfloat16:
            unit._laddertune_stored[param] = param.data
            param.data = param.data.float()
    unit._laddertune_saving = torch.autograd.graph.saved_tensors_hooks(
        _UpcastAgain.pack(unit._laddertune_stored), _UpcastAgain.unpack)
    unit._laddertune_saving.__enter__()


def _restore(unit: nn.Module, args, output) -> None:
    """Forward hook: drop the fp32 copies, back to the stored bf16 weights."""
    unit._laddertune_saving.__exit__(None, None, None)
    for param, stored in unit._laddertune_stored.items():
        param.data = stored
    unit._laddertune_stored = {}


class _UpcastAgain:
    """What autograd keeps of an upcast weight: the weight, upcast once more when backward
    reads it, so no fp32 copy lives from the forward call to the backward one."""

    def __init__(self, param: nn.Parameter):
        self.param = param

    @staticmethod
    def pack(upcast: dict):
        return lambda tensor: _UpcastAgain(tensor) if tensor in upcast else tensor

    @staticmethod
    def unpack(saved):
        return saved.param.float() if isinstance(saved, _UpcastAgain) else saved


def _to_nf4(backbone: nn.Module, keep: set[int]) -> None:
    """Each nn.Linear in `backbone`, in turn, as a bitsandbytes NF4 Linear4bit on the GPU
    (computing in bf16). Not run in this repository's CPU tests: no GPU was lent."""
    import bitsandbytes as bnb
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or id(child.weight) in keep:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                      bias=child.bias is not None, compute_dtype=torch.bfloat16,
                                      quant_type="nf4", device=device)
            layer.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False,
                                             quant_type="nf4").to(device)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer)


def _lm_head_weights(backbone: nn.Module) -> set[int]:
    """The LM head's weight (and the input embedding tied to it): LST reads it as a matrix."""
    head = getattr(backbone, "get_output_embeddings", lambda: None)()
    if head is None and getattr(backbone.config, "tie_word_embeddings", False):
        head = backbone.get_input_embeddings()      # a bare model's head is its embedding
    return {id(head.weight)} if head is not None and hasattr(head, "weight") else set()


def _is_int8(param) -> bool:
    """torchao's weight-only int8 tensor (there is none unless torchao was imported)."""
    quantization = sys.modules.get("torchao.quantization")
    return quantization is not None and isinstance(param, quantization.Int8Tensor)


def dense(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A stored weight as a plain tensor of `dtype` (dequantised, when quantised)."""
    if _is_int8(weight):
        weight = weight.dequantize()
    return weight.to(dtype)


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise, and the process's
    resident memory would not show the saving)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _device_of(backbone: nn.Module) -> torch.device:
    return next(backbone.parameters()).device
