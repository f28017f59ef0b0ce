"""Using a finished run: rebuild its model from the run folder (its task, `tasks.task_of_run`,
then evaluates or predicts).

`load_run` checks, before anything is computed, that the folder is a finished run, that its
model files are the ones training wrote (sha256 recorded in metrics.json), and that the backbone
loaded now is the one it was trained on (fingerprint in run.json).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import check_fingerprint, load_json
from ..errors import BackboneMismatchError, CheckpointError
from .aliases import ALIASES, backbone_signature, load_backbone, load_tokenizer, resolve_model
from .methods import get_method, load_trained
from .run_folder import RunFolder, recover
from .runtime import pick_device
from .tasks import task_of_run


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
    head = task_of_run(info).head(get_method(method))
    # the trained part meets the backbone stored as it trained, at that memory
    storage = info.get("backbone_dtype", "float32")
    on = pick_device(device)
    backbone = load_backbone(source, tokenizer.pad_token_id, head, len(labels), storage, on)
    try:
        check_fingerprint(info["backbone_fingerprint"], backbone_signature(backbone), "run")
    except BackboneMismatchError:
        raise BackboneMismatchError(
            f"{folder.path} was trained on another backbone than the {name!r} loaded now (its "
            "weights or config differ); pass --model with the model it was trained on") from None
    trained = load_trained(backbone, method, folder.path)
    return trained.to(on).eval(), tokenizer, info
