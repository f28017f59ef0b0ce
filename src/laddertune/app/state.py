"""Where training stands, saved so that `--resume` continues exactly: weights, optimizer,
schedule, every RNG and the step, in one safetensors file with the rest as JSON in its header.

Nothing is pickled. The file is replaced atomically (temporary file, then rename), so a kill at
any moment leaves the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_weights, save_json, save_weights
from ..errors import CheckpointError

STATE_FILE = "state.safetensors"
BEST_FILE = "best.safetensors"         # early stopping: the trained tensors of the best eval
PROGRESS_FILE = "trainer_state.json"  # step and epoch, readable without loading tensors


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0                  # optimizer steps done
    epochs_done: int = 0
    train_seconds: float = 0.0
    epoch_started: float = 0.0     # train_seconds when the current epoch began
    epoch_seconds: list = field(default_factory=list)
    backbone_seconds: float | None = None   # LST: time the frozen backbone ran (none if cached)
    step_seconds: float = 0.0      # time in optimizer steps (forward, backward, update) alone
    history: dict = field(default_factory=lambda: {"train_loss": [], "eval": []})
    # early stopping (and metrics.json's best step): the best eval so far, how many evals have
    # not beaten it since, and whether that ended the run
    best: dict | None = None       # {"metric", "value", "step", "epoch"}
    evals_since_best: int = 0
    stopped_early: bool = False


def trained_state(model) -> dict[str, torch.Tensor]:
    """The tensors a method trains (requires_grad), by name, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG's state as (tensors, JSON-able rest)."""
    _, numpy_keys, *numpy_rest = np.random.get_state()
    version, python_state, gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy": torch.from_numpy(numpy_keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, {"numpy": numpy_rest, "python": [version, list(python_state), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32),
                         *rest["numpy"]))
    version, python_state, gauss = rest["python"]
    random.setstate((version, tuple(python_state), gauss))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: TrainState) -> None:
    """Atomically replace `directory`/state.safetensors with the whole training state."""
    tensors = {f"model.{name}": t for name, t in trained_state(model).items()}
    optimizer_state = optimizer.state_dict()
    optimizer_rest = {"param_groups": optimizer_state["param_groups"], "state": {}}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                optimizer_rest["state"].setdefault(str(index), {})[key] = value
    rng_tensors, rng_rest = rng_state()
    tensors.update(rng_tensors)
    save_weights(tensors, directory / STATE_FILE, metadata={
        "optimizer": optimizer_rest, "scheduler": scheduler.state_dict(), "rng": rng_rest,
        "state": asdict(state)})
    save_json({"step": state.step, "epochs_done": state.epochs_done}, directory / PROGRESS_FILE)


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> TrainState:
    """Restore what `save_checkpoint` wrote into `model`, `optimizer` and `scheduler`.

    Raises:
        CheckpointError: the file is damaged, or was written for another model.
    """
    try:
        tensors, meta = load_weights(directory / STATE_FILE, with_metadata=True)
        trained = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        optimizer_state = {int(i): dict(v) for i, v in meta["optimizer"]["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        state = TrainState(**meta["state"])
    except (CheckpointError, KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / STATE_FILE} is damaged ({type(err).__name__}); "
                              "delete it and train again with --overwrite") from None
    expected = trained_state(model)
    missing = set(expected) - set(trained)
    wrong = [k for k in expected if k in trained and trained[k].shape != expected[k].shape]
    if missing or wrong:
        raise CheckpointError(
            f"{directory / STATE_FILE} was written for another model (lacks or misshapes "
            f"{sorted(missing or wrong)[0]}); resume with the run's own flags, or --overwrite")
    model.load_state_dict(trained, strict=False)
    optimizer.load_state_dict({"state": optimizer_state,
                               "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(tensors, meta["rng"])
    return state
