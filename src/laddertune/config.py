"""LSTConfig: every knob of a Ladder Side-Tuning model, with the trade-off each one makes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LSTConfigError

TASK_TYPES = ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", "SEQ_2_SEQ_LM", "FEATURE_EXTRACTION")
SIDE_INITS = ("random", "magnitude", "fisher")
GATE_KINDS = ("learnable", "fixed")
SIDE_BLOCKS = ("auto", "native", "generic")
POOLINGS = ("auto", "first", "last", "mean")
CONFIG_NAME = "lst_config.json"
WEIGHTS_NAME = "lst_model.safetensors"


class _DefaultChoice(str):
    """A default value that remembers nobody chose it (equal to the plain string).

    `side_init` defaults to magnitude pruning, but a family pruning cannot handle then falls
    back to random side blocks with a warning; the same value set by the user raises instead.
    """

    is_default = True


@dataclass
class LSTConfig:
    """Configuration of a Ladder Side-Tuning (LST) side network.

    The backbone stays frozen and runs without autograd; a narrow side network of width d/r reads
    the backbone's layer outputs through trainable down-projections ("ladders") and is the only
    part that learns.

    Args:
        task_type: What the model predicts, in PEFT's words: ``SEQ_CLS`` (one label per sequence
            or image), ``TOKEN_CLS`` (one label per token), ``CAUSAL_LM`` (next token),
            ``SEQ_2_SEQ_LM`` (text to text), ``FEATURE_EXTRACTION`` (hidden states).
        num_labels: Classes for ``SEQ_CLS``/``TOKEN_CLS``; 1 means regression (MSE loss).
        reduction_factor: r. The side network is r times narrower than the backbone. Larger r
            saves memory and parameters, smaller r gives the side network more capacity.
        side_layers: Backbone layers (0-based) that feed a ladder and get a side block. ``None``
            uses the paper's layer dropping: drop every fourth layer starting at layer 0.
        decoder_side_layers: The same for the decoder stack of an encoder-decoder backbone.
            ``None`` applies the paper's rule to the decoder.
        gate_temperature: T in the gate mu = sigmoid(alpha / T). Smaller T makes the gates move
            faster as alpha changes.
        gate_alpha_init: Initial alpha. 0 gives mu = 0.5: an even mix of side stream and ladder.
        gate: ``learnable`` gates (alpha is trained) or ``fixed`` gates (alpha stays at its
            initial value, as in the paper's ablation).
        side_init: How side blocks start: ``magnitude`` (the default: backbone blocks pruned to
            width d/r, ranked by weight magnitude), ``fisher`` (ranked by the summed squared
            gradients of the task loss on ``init_data``, as the paper does) or ``random``.
            Left at its default, a backbone pruning cannot handle (no plan for its blocks, generic
            side blocks, side heads too small to keep rotary pairs) starts random with a warning.
        prune_samples: Examples used to estimate Fisher importance when ``side_init="fisher"``.
        dropout: Dropout inside the side network and before the task head.
        pooling: ``first``, ``last``, ``mean`` or ``auto`` (the mean of non-padding tokens for
            text encoders, the first token for vision models, the last non-padding token for
            decoders): how ``SEQ_CLS`` reads one vector per sequence.
        side_blocks: ``native`` (the backbone's own block class at width d/r, needed for
            pruning initialisation and encoder-decoder models), ``generic`` (plain pre-norm
            transformer blocks) or ``auto`` (native, else generic).
    """

    task_type: str = field(
        default="SEQ_CLS",
        metadata={"help": "What to predict: SEQ_CLS, TOKEN_CLS, CAUSAL_LM, SEQ_2_SEQ_LM or "
                          "FEATURE_EXTRACTION (PEFT's task names)."},
    )
    num_labels: int = field(
        default=2,
        metadata={"help": "Number of classes for SEQ_CLS/TOKEN_CLS; 1 means regression."},
    )
    reduction_factor: int = field(
        default=8,
        metadata={"help": "r: the side network is r times narrower than the backbone. "
                          "Bigger r = less memory, fewer parameters, less capacity."},
    )
    side_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Backbone layers that feed the side network. None = drop every "
                          "fourth layer starting at 0, as the paper does."},
    )
    decoder_side_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layers that feed the side decoder (encoder-decoder models "
                          "only). None = the paper's rule."},
    )
    gate_temperature: float = field(
        default=0.1,
        metadata={"help": "T in mu = sigmoid(alpha / T); smaller T makes gates more decisive."},
    )
    gate_alpha_init: float = field(
        default=0.0,
        metadata={"help": "Starting alpha of every gate; 0 mixes side stream and ladder 50/50."},
    )
    gate: str = field(
        default="learnable",
        metadata={"help": "'learnable' trains the gates; 'fixed' keeps them at their start value."},
    )
    side_init: str = field(
        default=_DefaultChoice("magnitude"),
        metadata={"help": "How side blocks start: 'magnitude' (default; backbone blocks pruned "
                          "to width d/r keeping the largest weights), 'fisher' (pruned by "
                          "gradient importance on init_data, as the paper does; needs data) or "
                          "'random'. The default falls back to random, with a one-line warning, "
                          "where pruning cannot build the side blocks; a value you set raises "
                          "there instead."},
    )
    prune_samples: int = field(
        default=1024,
        metadata={"help": "Examples used for Fisher importance (side_init='fisher')."},
    )
    dropout: float = field(
        default=0.1,
        metadata={"help": "Dropout inside the side network and before the task head."},
    )
    pooling: str = field(
        default="auto",
        metadata={"help": "How SEQ_CLS reads one vector per sequence from the side network: "
                          "'first' token (CLS), 'last' non-padding token, 'mean' of the "
                          "non-padding tokens, or 'auto' (mean for text encoders, first for "
                          "vision models, last for decoders)."},
    )
    side_blocks: str = field(
        default="auto",
        metadata={"help": "'native' builds side blocks of the backbone's own class at width d/r; "
                          "'generic' uses plain pre-norm transformer blocks; 'auto' tries native "
                          "first and falls back to generic."},
    )

    def __post_init__(self):
        self.task_type = str(self.task_type).upper()
        if self.task_type not in TASK_TYPES:
            raise LSTConfigError(
                f"task_type={self.task_type!r} is unknown; use one of {', '.join(TASK_TYPES)}")
        if (not isinstance(self.reduction_factor, int) or isinstance(self.reduction_factor, bool)
                or self.reduction_factor < 1):
            raise LSTConfigError(
                f"reduction_factor must be a whole number >= 1 (the paper uses 8), "
                f"got {self.reduction_factor!r}")
        if not _is_count(self.num_labels, 1):
            raise LSTConfigError(f"num_labels must be a whole number >= 1, got {self.num_labels!r}")
        if not _is_count(self.prune_samples, 1):
            raise LSTConfigError(
                f"prune_samples must be a whole number >= 1, got {self.prune_samples!r}")
        if self.gate not in GATE_KINDS:
            raise LSTConfigError(f"gate={self.gate!r} is unknown; use 'learnable' or 'fixed'")
        if self.side_init not in SIDE_INITS:
            raise LSTConfigError(
                f"side_init={self.side_init!r} is unknown; use one of {', '.join(SIDE_INITS)}")
        if self.side_blocks not in SIDE_BLOCKS:
            raise LSTConfigError(
                f"side_blocks={self.side_blocks!r} is unknown; use 'auto', 'native' or 'generic'")
        if self.pooling not in POOLINGS:
            raise LSTConfigError(
                f"pooling={self.pooling!r} is unknown; use one of {', '.join(POOLINGS)}")
        if self.gate_temperature <= 0:
            raise LSTConfigError(f"gate_temperature must be > 0, got {self.gate_temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise LSTConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("side_layers", "decoder_side_layers"):
            layers = getattr(self, name)
            if layers is not None:
                layers = [int(i) for i in layers]
                if not layers:
                    raise LSTConfigError(f"{name} is empty; list at least one layer or pass None")
                if len(set(layers)) != len(layers):
                    raise LSTConfigError(f"{name} lists a layer twice: {layers}")
                setattr(self, name, sorted(layers))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LSTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_file(self, path: str | Path, **extra) -> None:
        Path(path).write_text(json.dumps({**self.to_dict(), **extra}, indent=2, sort_keys=True))


def _is_count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def default_side_layers(num_layers: int) -> list[int]:
    """The paper's layer dropping: drop layers 0, 4, 8, ... (T5-base keeps 9 of 12)."""
    kept = [i for i in range(num_layers) if i % 4 != 0]
    return kept or list(range(num_layers))
