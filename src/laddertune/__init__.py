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
from .model import LSTModel, LSTOutput, get_lst_model  # noqa: E402
from .text2text import Verbalizer, evaluate_text2text  # noqa: E402
from .vision_language import LSTVisionLanguageModel  # noqa: E402

__all__ = [
    "LSTConfig", "LSTModel", "LSTOutput", "get_lst_model", "LSTError", "LSTConfigError",
    "UnsupportedModelError", "InputError", "MissingInputError", "CheckpointError",
    "BackboneMismatchError", "DataError", "LSTVisionLanguageModel", "Verbalizer",
    "evaluate_text2text", "__version__",
]
