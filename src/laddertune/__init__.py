"""laddertune: memory-efficient fine-tuning of Hugging Face transformers by Ladder Side-Tuning."""

__version__ = "0.1.0"

from .config import LSTConfig  # noqa: E402
from .errors import (  # noqa: E402
    BackboneMismatchError,
    CheckpointError,
    DataError,
    InputError,
    LSTConfigError,
    LSTError,
    MissingInputError,
    UnsupportedModelError,
)

# The names that need torch are imported on first use, so `laddertune --help` starts at once.
_LAZY = {"LSTModel": ".model", "LSTOutput": ".model", "get_lst_model": ".model",
         "Verbalizer": ".text2text", "evaluate_text2text": ".text2text",
         "LSTVisionLanguageModel": ".vision_language"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'laddertune' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "LSTConfig", "LSTModel", "LSTOutput", "get_lst_model", "LSTError", "LSTConfigError",
    "UnsupportedModelError", "InputError", "MissingInputError", "CheckpointError",
    "BackboneMismatchError", "DataError", "LSTVisionLanguageModel", "Verbalizer",
    "evaluate_text2text", "__version__",
]
