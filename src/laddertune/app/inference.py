"""Using a finished run: rebuild its model from the run folder, and predict.

`load_run` checks, before anything is computed, that the folder is a finished run, that its
model files are the ones training wrote (sha256 recorded in metrics.json), and that the backbone
loaded now is the one it was trained on (fingerprint in run.json).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import check_fingerprint, load_json
from ..errors import BackboneMismatchError, CheckpointError
from ..held import HeldModules
from .aliases import ALIASES, backbone_signature, load_backbone, load_tokenizer, resolve_model
from .data import Encoded, collate
from .methods import get_method, load_trained
from .run_folder import RunFolder, recover
from .runtime import pick_device


def load_run(run_dir: str | Path, device: str = "auto", model: str | None = None):
    """(model, tokenizer, run info) rebuilt from a `laddertune train` output folder.

    Args:
        run_dir: the run folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        model: a backbone to load instead of the one run.json names (it must be the same).

    Raises:
        CheckpointError: the folder is not a finished run, or a file is missing or damaged.
        BackboneMismatchError: the backbone loaded is not the one the run was trained on.
    """
    recover(run_dir)
    folder = RunFolder(run_dir)
    info = folder.info()
    if not folder.is_finished():
        raise CheckpointError(f"{folder.path} is an unfinished run; finish it with `laddertune "
                              "train ... --resume` first")
    metrics = load_json(folder.metrics_file)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{folder.metrics_file} is not a JSON object (damaged or edited); "
                              "restore it or train the run again")
    recorded = metrics.get("model_files_sha256")
    if recorded:      # runs from before laddertune recorded digests load unchecked
        folder.check_model_files(recorded)
    if metrics.get("labels") not in (None, info["labels"]):
        raise CheckpointError(f"{folder.run_file} lists labels {info['labels']} but the run was "
                              f"trained on {metrics['labels']} (edited?); restore run.json")
    name = model or info["model"]
    source = resolve_model(name if name in ALIASES or model else info["model_path"])
    tokenizer = load_tokenizer(source)
    method, labels = info["method"], info["labels"]
    head = "lm" if info.get("task") == "generate" else get_method(method).head
    backbone = load_backbone(source, tokenizer.pad_token_id, head, len(labels))
    try:
        check_fingerprint(info["backbone_fingerprint"], backbone_signature(backbone), "run")
    except BackboneMismatchError:
        raise BackboneMismatchError(
            f"{folder.path} was trained on another backbone than the {name!r} loaded now (its "
            "weights or config differ); pass --model with the model it was trained on") from None
    trained = load_trained(backbone, method, folder.path)
    return trained.to(pick_device(device)).eval(), tokenizer, info


def generate_task(info: dict, config=None, model=None, tokenizer=None):
    """The `GenerateTask` of a finished generate run (run.json's `info`), with the generation
    settings `config` (eval, predict or generate flags) overrides; given the `model` and
    `tokenizer` `load_run` returned, ready to encode and generate."""
    from .generate_task import GenerateTask
    settings = {**info}
    for name in ("prompt_column", "target_column", "max_new_tokens", "num_beams",
                 "temperature", "top_p", "seed"):
        value = getattr(config, name, None)
        if value is not None:
            settings[name] = value
    task = GenerateTask(settings, info.get("label_words"), info["labels"])
    if model is not None:
        backbone = (model.held_backbone() if isinstance(model, HeldModules)    # LST's own
                    else model.get_base_model() if hasattr(model, "get_base_model") else model)
        task.attach(backbone, tokenizer, info["model"], info.get("eos_token_id"))
    return task


@torch.no_grad()
def predict_probs(model, encoded: Encoded, pad_token_id: int, batch_size: int,
                  device: torch.device, states=None) -> torch.Tensor:
    """Class probabilities of every example, in order: (n, num_labels). `states`, for LST, gives
    each batch's backbone states (`trainer.BackboneStates`: computed, or read from a cache)."""
    was_training = model.training
    model.eval()
    probs = []
    for start in range(0, len(encoded), batch_size):
        indices = list(range(start, min(start + batch_size, len(encoded))))
        batch = {k: v.to(device) for k, v in collate(encoded, indices, pad_token_id).items()}
        if states is not None:
            batch["backbone_hidden_states"] = states(indices, batch)
        batch.pop("labels", None)
        logits = model(**batch).logits                                       # (b, num_labels)
        probs.append(torch.softmax(logits.float(), -1).cpu())
    if states is not None:
        states.end_of_pass(encoded)
    model.train(was_training)
    return torch.cat(probs)
