"""Measuring training memory: device-independent accounting and the device's own peaks.

`SavedTensorMeter` counts what autograd keeps for the backward pass, the part of training memory
that LST removes. `training_memory_account` adds parameters, gradients and optimizer state, so two
methods can be compared on any machine; `reference_account` takes that account of a trained run
at one fixed batch shape (`options.ACCOUNT_SHAPE`), the same for every method.
`peak_memory_mb` reads the device's own figure: CUDA's allocator peak on a GPU, the process's
peak resident set on a CPU; `reset_peak_rss` and `peak_rss_mb` measure a CPU peak from a chosen
moment (after a model is loaded, say). `library_rss_mb` is the part of the resident set that is
shared libraries' pages: the runtime's code, paged in as it is first run.
"""

from __future__ import annotations

import functools
import random
import resource
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..held import held_modules

# The batch every run's memory account is taken at, whatever it trained with: at small batches
# weights and optimizer state dominate and hide what is kept for backward, where LST saves.


@dataclass
class SavedTensorMeter:
    """Context manager: every tensor autograd saves for backward while it is active.

    Storages are counted once, however many views of them are saved, and parameters are not
    counted (they exist whether or not anything is saved).

    Attributes:
        shapes: shape of each saved tensor, in the order saved.
        saved_bytes: bytes of distinct non-parameter storages saved.
    """

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    saved_bytes: int = 0
    _storages: set = field(default_factory=set)
    _params: set = field(default_factory=set)
    _hooks: object = None

    def exclude_parameters(self, *modules: torch.nn.Module) -> SavedTensorMeter:
        for module in modules:
            self._params.update(ptr for p in module.parameters() for ptr in _storage_pointers(p))
        return self

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._params:
            self.shapes.append(tuple(tensor.shape))
            if key not in self._storages:
                self._storages.add(key)
                self.saved_bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def training_memory_account(model: torch.nn.Module, loss_fn, optimizer_states: int = 2) -> dict:
    """Device-independent bytes of one training step.

    Args:
        model: the model being trained (frozen weights count as parameters, not gradients).
        loss_fn: a no-argument callable that runs the forward pass and returns the loss.
        optimizer_states: tensors of optimizer state per trainable parameter (AdamW keeps 2).

    Returns:
        dict with ``saved_bytes`` (activations kept for backward), ``parameter_bytes``,
        ``gradient_bytes``, ``optimizer_bytes`` and their ``total_bytes``; and, not in that sum,
        ``parameter_bytes`` split into ``trainable_weight_bytes`` and ``frozen_weight_bytes``.
    """
    # An LSTModel holds its frozen backbone without registering it: the registered parameters
    # are what trains, the held ones only count as weights.
    held = held_modules(model)
    registered = {id(p): p for p in model.parameters()}
    trainable = [p for p in registered.values() if p.requires_grad]
    params = {**registered, **{id(p): p for m in held for p in m.parameters()}}
    meter = SavedTensorMeter().exclude_parameters(model, *held)
    with meter:
        loss = loss_fn()
    if loss.requires_grad:   # a model trained without autograd (a probe) keeps nothing for it
        loss.backward()
    account = {
        "saved_bytes": meter.saved_bytes,
        "parameter_bytes": sum(stored_bytes(p) for p in params.values()),
        "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_bytes": optimizer_states * sum(p.numel() * 4 for p in trainable),
    }
    account["total_bytes"] = sum(account.values())
    account["trainable_weight_bytes"] = account["gradient_bytes"]   # a gradient per weight
    account["frozen_weight_bytes"] = account["parameter_bytes"] - account["gradient_bytes"]
    model.zero_grad(set_to_none=True)
    return account


def _inner_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold `tensor`: itself, or a wrapper subclass's parts (torchao's
    int8 weight keeps int8 values and float scales, and has no storage of its own)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [part for name in names for part in _inner_tensors(getattr(tensor, name))]


def _storage_pointers(tensor: torch.Tensor) -> list[int]:
    return [part.untyped_storage().data_ptr() for part in _inner_tensors(tensor)]


def stored_bytes(tensor: torch.Tensor) -> int:
    """The bytes `tensor` takes as stored: an int8-quantised weight counts its int8 values and
    scales, not 4 bytes per element of the float tensor it stands for."""
    return sum(part.numel() * part.element_size() for part in _inner_tensors(tensor))


SMALL_BATCHES = (2, 4)    # the batches `reference_account` measures (one example may take
                          # a special path: no padding, a squeezed dimension)


def reference_account(model: torch.nn.Module, shape: tuple[int, int] | None, task,
                      tokenizer) -> dict | None:
    """The memory account of one training step of `model` for `task` on a synthetic batch of
    `shape` (examples, tokens): random token ids inside `tokenizer`'s vocabulary, a full
    attention mask, and random class indices (a classifier) or the ids themselves as targets
    (a language model). The tokens are clamped to the backbone's learned positions; ``shape``
    records the shape used.

    What is saved for backward is measured at batches of 2 and 4 examples and extended to
    `shape`'s batch along the line through them (it grows linearly with the batch at a fixed
    length), so taking the account never holds a large batch's activations.

    The model is left as it was: no optimizer step, gradients cleared, train/eval mode and every
    RNG restored (dropout draws from them), so a run's results do not move. None if `shape` is,
    or under DDP (whose gradient hooks expect its own forward pass).

    Returns:
        dict with ``shape``, ``saved_for_backward_bytes``, ``gradient_bytes``,
        ``optimizer_bytes``, ``trainable_weight_bytes``, their sum ``training_bytes`` (what
        training adds to the frozen weights), and ``frozen_weight_bytes`` apart.
    """
    if shape is None or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    num_labels = task.num_labels if task.task_type == "SEQ_CLS" else 0
    vocab_size = tokenizer.vocab_size   # without added tokens: inside every embedding table
    limit = _position_limit(model)
    examples, tokens = shape[0], min(shape[1], limit or shape[1])
    device = next(p.device for m in (model, *held_modules(model)) for p in m.parameters())
    rng_states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                  torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    modes = {m: m.training for m in (*model.modules(), *held_modules(model))}
    generator = torch.Generator().manual_seed(0)

    def batch_of(size: int) -> dict:
        input_ids = torch.randint(0, vocab_size, (size, tokens), generator=generator)
        labels = (torch.randint(0, num_labels, (size,), generator=generator) if num_labels
                  else input_ids.clone())
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                 "labels": labels}
        return {k: v.to(device) for k, v in batch.items()}

    model.zero_grad(set_to_none=True)
    try:
        model.train()
        # What backward keeps grows by the same bytes with every example of a fixed length, so
        # two small batches give the account at any batch without holding its activations: at
        # 32 x 256 those would be gigabytes for full fine-tuning, after training has finished.
        small = list(SMALL_BATCHES) if examples > max(SMALL_BATCHES) else [examples]
        accounts = [training_memory_account(model, functools.partial(_loss, model, batch_of(size)))
                    for size in small]
    finally:
        model.zero_grad(set_to_none=True)
        for module, training in modes.items():
            module.train(training)
        random.setstate(rng_states[0])
        np.random.set_state(rng_states[1])
        torch.set_rng_state(rng_states[2])
        if rng_states[3] is not None:
            torch.cuda.set_rng_state_all(rng_states[3])
    account = accounts[-1]
    if len(accounts) == 2:
        (b1, b2), (s1, s2) = small, [a["saved_bytes"] for a in accounts]
        account = {**account, "saved_bytes": s1 + round((s2 - s1) * (examples - b1) / (b2 - b1))}
    parts = {"saved_for_backward_bytes": account["saved_bytes"],
             "gradient_bytes": account["gradient_bytes"],
             "optimizer_bytes": account["optimizer_bytes"],
             "trainable_weight_bytes": account["trainable_weight_bytes"]}
    return {"shape": [examples, tokens], **parts, "training_bytes": sum(parts.values()),
            "frozen_weight_bytes": account["frozen_weight_bytes"]}


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def _position_limit(model: torch.nn.Module) -> int | None:
    """The tokens a batch may hold: the backbone's position limit (`backbones.max_positions`;
    the held backbone of an LST model, the base model of a peft one, else the model itself),
    less prompt tuning's virtual tokens; None if nothing limits it."""
    from ..backbones import max_positions
    from ..errors import UnsupportedModelError
    backbone = next((m.held_backbone() for m in model.modules() if hasattr(m, "held_backbone")
                     and m.held_backbone() is not None), None)
    if backbone is None:
        backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        limit = max_positions(backbone)
    except (UnsupportedModelError, AttributeError):   # no config or no blocks: nothing to read
        return None
    # prompt tuning puts its virtual tokens before the text, in the same positions
    prompt = getattr(model, "active_peft_config", None)
    return None if limit is None else limit - getattr(prompt, "num_virtual_tokens", 0)


# The process's peak RSS before the last `reset_peak_rss`: Linux's reset lowers getrusage's
# peak too, and the peak of a whole run must still count what came before it (loading, say)
_peak_before_reset_mb = 0.0


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak RSS, in MiB
    (over the whole process, `reset_peak_rss` or not)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return max(peak_mb, peak_rss_mb() or 0.0, _peak_before_reset_mb)


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return peak_memory_mb()


def reset_peak_rss() -> bool:
    """Start this process's peak resident set afresh (Linux's /proc/self/clear_refs), so that
    `peak_rss_mb` reports the peak from now on; False where that is not possible.
    `peak_memory_mb` still reports the whole process's peak."""
    global _peak_before_reset_mb
    _peak_before_reset_mb = peak_memory_mb()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory since the last `reset_peak_rss` (Linux's VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def library_rss_mb() -> float | None:
    """Resident pages of this process's shared libraries (``*.so`` mappings in Linux's
    /proc/self/smaps), in MiB; None where that cannot be read. Code is paged in the first time it
    runs (a backward pass, a metric), so this grows during a run without the run holding more
    data: `laddertune train` counts its growth as the runtime's, not the model's."""
    total_kib, in_library = 0, False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    fields = line.split()
                    in_library = len(fields) > 5 and ".so" in fields[5].rsplit("/", 1)[-1]
                elif in_library and line.startswith("Rss:"):
                    total_kib += int(line.split()[1])
    except OSError:
        return None
    return total_kib / 2**10
