"""Typed errors for mistakes a user can make. Each message is one line that names the fix."""


class LSTError(Exception):
    """Base class of every error laddertune raises on purpose."""


class UnsupportedModelError(LSTError):
    """The model is not a Hugging Face backbone laddertune can read, or cannot do the task."""


class LSTConfigError(LSTError, ValueError):
    """An LSTConfig value is out of range for this backbone."""


class InputError(LSTError, ValueError):
    """A forward call got inputs the model cannot use (labels out of range, wrong shapes)."""


class MissingInputError(InputError):
    """A forward call lacks an input the task needs (labels for a loss, pixel_values, ...)."""


class CheckpointError(LSTError):
    """A saved LST folder is missing, truncated or corrupted."""


class BackboneMismatchError(CheckpointError):
    """A saved side network belongs to a different backbone than the one passed to load it."""


class DataError(LSTError, ValueError):
    """A data file, column, label set or output folder the CLI cannot use as given."""


class LSTWarning(UserWarning):
    """Base class of laddertune's warnings: something was done, correctly, that the user should
    know about (texts truncated, a fallback taken). The CLI prints each as one line."""


class DataWarning(LSTWarning):
    """A data file the CLI can use, though not quite as given (empty texts dropped, say)."""
