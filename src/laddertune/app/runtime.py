"""Where a command runs: the device, the processes of a torchrun launch, and how progress shows.

Launched by ``torchrun``, training runs one process per rank; `accelerate`'s `PartialState`
joins the process group (gloo on CPU, nccl on GPUs) and tells each process its rank. Every rank
sees the same batch order and takes its slice of each batch (`trainer.rank_shard`); only rank 0
writes files.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from .options import UsageError


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` is the GPU of this rank when CUDA is there, else the CPU.

    Raises:
        UsageError: ``cuda`` was asked for and no GPU is visible.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device "
                         "cpu or auto")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


class Processes:
    """This process's place among the ranks of a launch (one rank when not launched)."""

    def __init__(self, device: torch.device):
        self.state = None
        self.rank, self.world_size = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState  # only under torchrun: slow to import
            self.state = PartialState(cpu=device.type == "cpu")
            self.rank, self.world_size = self.state.process_index, self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, value) -> list:
        """`value` from every rank, in rank order."""
        if self.state is None:
            return [value]
        from accelerate.utils import gather_object  # see __init__
        return gather_object([value])

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel around `model` when there are several ranks."""
        if self.state is None:
            return model
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)


class EpochProgress:
    """A progress bar over one epoch's batches on a terminal; elsewhere (a log file, CI) nothing
    per step, and the epoch's summary line is the only progress shown."""

    def __init__(self, batches: list, done: int, epoch: int, epochs: int, enabled: bool):
        self.batches, self.done = batches, done
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=len(batches), initial=done, leave=True, dynamic_ncols=True,
                            desc=f"epoch {epoch + 1}/{epochs}")
        self.started, self.examples, self.losses = time.perf_counter(), 0, []

    def __iter__(self):
        return iter(self.batches[self.done:])

    def update(self, examples: int, loss: float, memory_mb: float) -> None:
        self.examples += examples
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{self.rate():.1f}",
                                 mem=f"{memory_mb:.0f}MiB")

    def rate(self) -> float:
        return self.examples / max(time.perf_counter() - self.started, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def mean_loss(self) -> float:
        return sum(self.losses) / max(len(self.losses), 1)
