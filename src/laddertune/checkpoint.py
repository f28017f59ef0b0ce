"""Saving and checking side networks: safetensors weights, a JSON config, a backbone fingerprint.

The fingerprint ties a saved side network to its backbone without storing the backbone:
- the architecture: a hash of the stacks' parameter names and shapes plus the few config values
  that change the computation without changing a shape (activation, norm epsilon, positions).
  Token ids, dtypes, label maps and other loading details are left out, so setting a pad token or
  upgrading transformers does not orphan a checkpoint;
- the weights: for every weight matrix its mean absolute value and 8 sampled values, compared
  with a tolerance that admits another dtype (bf16 rounding) and nothing else: a merged LoRA or
  another checkpoint of the same architecture fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import BackboneMismatchError, CheckpointError

# Config values that change what the backbone computes without changing a parameter's shape.
_ARCHITECTURE_KEYS = (
    "model_type", "hidden_act", "activation_function", "hidden_activation", "feed_forward_proj",
    "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps", "rope_theta", "rope_parameters",
    "rope_scaling", "position_embedding_type", "relative_attention_num_buckets",
    "relative_attention_max_distance", "num_attention_heads", "num_key_value_heads", "n_head",
    "num_heads", "n_heads", "head_dim", "d_kv", "do_layer_norm_before", "normalize_before",
    "scale_embedding", "relative_attention", "pos_att_type", "rotary_pct",
)
_SAMPLES = 8


def backbone_fingerprint(config, stacks: list[torch.nn.Module]) -> dict:
    """{"architecture_sha256", "weight_abs_means", "weight_samples"} of a backbone's stacks."""
    settings = {k: getattr(config, k) for k in _ARCHITECTURE_KEYS if hasattr(config, k)}
    shapes = [[name, list(p.shape)] for stack in stacks for name, p in stack.named_parameters()]
    text = json.dumps({"config": settings, "parameters": shapes}, sort_keys=True, default=str)
    abs_means, samples = [], []
    for stack in stacks:
        for param in stack.parameters():
            if not param.is_floating_point() or param.dim() < 2:
                continue  # norms start as ones and biases as zeros: matrices tell checkpoints apart
            flat = param.detach().reshape(-1)
            # a slice at a time: |w| of a whole embedding matrix is a copy of it, at load's peak
            abs_sum = sum(part.abs().sum(dtype=torch.float64).item() for part in flat.split(2**20))
            abs_means.append(abs_sum / flat.numel())
            # integer arithmetic: float32 linspace rounds past the end of a large matrix
            index = torch.arange(_SAMPLES, device=flat.device) * (flat.numel() - 1) // (
                _SAMPLES - 1)
            samples.extend(flat[index].double().cpu().tolist())
    return {"architecture_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "weight_abs_means": abs_means, "weight_samples": samples}


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    """Raise BackboneMismatchError unless `current` is the backbone `saved` was made from."""
    hint = ("load it with the backbone it was trained on (base_model_name_or_path in "
            "lst_config.json)")
    if saved.get("architecture_sha256") != current["architecture_sha256"]:
        raise BackboneMismatchError(
            f"{where} was saved for a backbone with a different architecture; {hint}")
    for key, rtol, atol in (("weight_abs_means", 5e-3, 1e-6), ("weight_samples", 2e-2, 2e-3)):
        old = torch.tensor(saved.get(key, []), dtype=torch.float64)
        new = torch.tensor(current[key], dtype=torch.float64)
        if old.shape != new.shape or not torch.allclose(old, new, rtol=rtol, atol=atol):
            raise BackboneMismatchError(
                f"{where} was saved for a backbone with different weights (same architecture); "
                f"{hint}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, shared_file_mode())   # mkstemp makes 0600; a saved model is for sharing
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shared_file_mode() -> int:
    """The mode a plain `open` gives a new file: 0666 less the umask (0644 under umask 022)."""
    mask = os.umask(0)   # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def save_weights(state_dict: dict[str, torch.Tensor], path: Path,
                 metadata: dict | None = None) -> str:
    """Tensors to safetensors, atomically; `metadata` (JSON-able) rides in the file's header.
    Returns the file's sha256, for a loader to check."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    header = None if metadata is None else {"laddertune": json.dumps(metadata)}
    data = save(tensors, metadata=header)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise CheckpointError unless the file at `path` has the sha256 `expected`."""
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path} does not match the sha256 recorded when it was saved "
                              "(truncated, damaged or replaced); restore it or save the model "
                              "again")


def save_json(data: dict, path: Path) -> None:
    """Strict JSON, atomically: a NaN or infinity is written as null, never as `NaN`."""
    text = json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, text.encode())


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; pass the folder written by save_pretrained")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err.msg if hasattr(err, 'msg') else err}); "
                              "save the model again or restore the file") from None


def load_weights(path: Path, with_metadata: bool = False):
    """The tensors of a safetensors file, and with `with_metadata` also what save_weights put in
    its header: (tensors, metadata)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; pass the folder written by save_pretrained")
    try:
        tensors = load_file(str(path))
        if not with_metadata:
            return tensors
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        return tensors, json.loads(header.get("laddertune", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); save the model again "
                              "or restore the file") from None

