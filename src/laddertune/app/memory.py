"""Measuring training memory: device-independent accounting and the device's own peaks.

`SavedTensorMeter` counts what autograd keeps for the backward pass, the part of training memory
that LST removes. `training_memory_account` adds parameters, gradients and optimizer state, so two
methods can be compared on any machine. `peak_memory_mb` reads the device's own figure: CUDA's
allocator peak on a GPU, the process's peak resident set on a CPU; `reset_peak_rss` and
`peak_rss_mb` measure a CPU peak from a chosen moment (after a model is loaded, say).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field

import torch

from ..held import held_modules


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
            self._params.update(p.untyped_storage().data_ptr() for p in module.parameters())
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
        ``gradient_bytes``, ``optimizer_bytes`` and their ``total_bytes``.
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
    loss.backward()
    account = {
        "saved_bytes": meter.saved_bytes,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params.values()),
        "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_bytes": optimizer_states * sum(p.numel() * 4 for p in trainable),
    }
    account["total_bytes"] = sum(account.values())
    model.zero_grad(set_to_none=True)
    return account


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak RSS, in MiB."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
    `peak_rss_mb` reports the peak from now on; False where that is not possible."""
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
