"""Saving and checking side networks: safetensors weights, a JSON config, a backbone fingerprint.

The fingerprint ties a saved side network to its backbone without storing the backbone: a hash of
the backbone's architecture config and a few sampled weight values. Values are compared with a
tolerance so a backbone loaded in another dtype still matches; other weights do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import BackboneMismatchError, CheckpointError

# Config keys that describe how a model was loaded or used, not what it is.
_VOLATILE_KEYS = {
    "_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
    "_commit_hash", "id2label", "label2id", "num_labels", "problem_type", "use_cache",
    "output_hidden_states", "output_attentions", "return_dict", "_attn_implementation",
    "attn_implementation", "_attn_implementation_autoset", "finetuning_task",
    "task_specific_params",
    "classifier_dropout", "tie_word_embeddings", "quantization_config", "pruned_heads",
    "chunk_size_feed_forward", "tokenizer_class", "_experts_implementation",
}
_PROBE_VALUES = 16


def backbone_fingerprint(config, stacks: list[torch.nn.Module]) -> dict:
    """{"config_sha256": ..., "weight_probe": [...]} for a backbone's config and stacks."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_KEYS}
    text = json.dumps(items, sort_keys=True, default=str)
    probe = []
    for stack in stacks:
        # weight matrices only (norms start as ones, biases as zeros), sampled across the matrix
        # (an embedding's first row is often the zeroed padding row)
        matrices = [p for p in stack.parameters() if p.is_floating_point() and p.dim() >= 2]
        for param in (matrices[0], matrices[len(matrices) // 2], matrices[-1]):
            flat = param.detach().reshape(-1)
            index = torch.linspace(0, flat.numel() - 1, _PROBE_VALUES).long().to(flat.device)
            probe.extend(round(v, 6) for v in flat[index].float().cpu().tolist())
    return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(), "weight_probe": probe}


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    if saved.get("config_sha256") != current["config_sha256"]:
        raise BackboneMismatchError(
            f"{where} was saved for a backbone with a different architecture config; "
            "load it with the backbone it was trained on (see base_model_name_or_path in "
            "lst_config.json)")
    saved_probe = torch.tensor(saved.get("weight_probe", []), dtype=torch.float32)
    current_probe = torch.tensor(current["weight_probe"], dtype=torch.float32)
    if saved_probe.shape != current_probe.shape or not torch.allclose(
            saved_probe, current_probe, rtol=2e-2, atol=2e-3):
        raise BackboneMismatchError(
            f"{where} was saved for a backbone with different weights (same architecture); "
            "load it with the checkpoint it was trained on (see base_model_name_or_path in "
            "lst_config.json)")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors))


def save_json(data: dict, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def load_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; pass the folder written by save_pretrained")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err.msg if hasattr(err, 'msg') else err}); "
                              "save the model again or restore the file") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; pass the folder written by save_pretrained")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); save the model again "
                              "or restore the file") from None

