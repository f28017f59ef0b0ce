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
LAST_LAYER_READINGS = ("raw", "normed")
UP_INITS = ("auto", "zero", "default", "small")
LATE_TUNINGS = ("full", "lora")
BACKBONE_DTYPES = ("float32", "bfloat16", "int8", "nf4")   # laddertune.quant explains each
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
            uses the reference code's choice for the T5 checkpoints it ran (t5-base drops 0, 4,
            8; t5-large keeps the odd layers; t5-3b keeps layer 23 only), told by their shape,
            and for every other backbone the paper's rule: drop every fourth layer from 0.
        decoder_side_layers: The same for the decoder stack of an encoder-decoder backbone.
            ``None`` applies the same choice to the decoder.
        gate_temperature: T in the gate mu = sigmoid(alpha / T). Smaller T makes the gates move
            faster as alpha changes.
        gate_alpha_init: Initial alpha. 0 gives mu = 0.5: an even mix of side stream and ladder.
        gate: ``learnable`` gates (alpha is trained) or ``fixed`` gates (alpha stays at its
            initial value, as in the paper's ablation).
        ladder_rank: None (the paper's): each ladder is one Linear(d -> d/r). k: QST's
            low-rank ladder Linear(d -> k), swish, Linear(k -> d/r), LayerNorm(d/r); QST uses
            16. Its parameters no longer grow with d * d/r, so a wider side network (smaller
            ``reduction_factor``) costs far fewer ladder parameters.
        gate_per_channel: One gate alpha per side channel, (n, d/r), as QST, instead of one per
            side block, (n,). (QST's gates are sigmoid(z) with z starting at 0.5: here
            ``gate_temperature=1, gate_alpha_init=0.5``.)
        side_init: How side blocks start: ``magnitude`` (the default: backbone blocks pruned to
            width d/r, ranked by weight magnitude), ``fisher`` (ranked by the summed squared
            gradients of the task loss on ``init_data``, as the paper does) or ``random``.
            Left at its default, a backbone pruning cannot handle (blocks it cannot read, generic
            side blocks, side heads too small to keep rotary pairs) starts random with a warning.
        prune_samples: Examples used to estimate Fisher importance when ``side_init="fisher"``:
            a uniform random sample of ``init_data`` (which is read once to the end), as the
            reference code draws them from a shuffled loader.
        prune_seed: Seed of that sample.
        dropout: Dropout inside the side network and before the task head.
        side_attention_dropout: Dropout on the side blocks' attention probabilities. 0 keeps
            fused attention kernels, which store no (t x t) attention matrix for backward; the
            reference code uses T5's 0.1.
        backbone_dropout: Run the backbone in train mode while the model trains, as the
            reference code does: the ladders read dropout-noised states. Still no autograd
            through the backbone. False runs it in eval mode: the ladders read clean states.
        ladder_last_layer: What the ladder from a stack's last layer reads. ``raw``: the last
            block's own output, as the reference code does. ``normed``: transformers'
            ``hidden_states[-1]``, which for GPT-2, GPT-NeoX, Llama, Qwen2, Mistral, OPT, T5
            and mBART is the output of the stack's final norm (for the others it is the raw
            output too). Folders saved before this switch existed load as ``normed``.
        gate_weight_decay: Whether `LSTModel.parameter_groups` puts the gate alphas in the
            weight-decay group. False (as for biases and norms): decay would pull every gate to
            its start value mu = 0.5.
        pooling: ``first``, ``last``, ``mean`` or ``auto`` (the mean of non-padding tokens for
            text encoders, the first token for vision models, the last non-padding token for
            decoders): how ``SEQ_CLS`` reads one vector per sequence.
        side_blocks: ``native`` (the backbone's own block class at width d/r, needed for
            pruning initialisation and encoder-decoder models), ``generic`` (plain pre-norm
            transformer blocks) or ``auto`` (native, else generic).
        head_residual: True: the head reads the backbone's own final hidden state plus the
            side network's up-projected output, the up-projection starting at zero. For
            language-model tasks the model then starts as the pretrained language model and the
            side network learns a correction (as LoRA starts from the pretrained model); for
            ``SEQ_CLS`` the new classifier starts as a linear probe of the pooled final state
            (``TOKEN_CLS``: of each token's), with no tanh. No backbone gradient is needed: the
            state is an input, like the ladders'. Refused for ``FEATURE_EXTRACTION``. False
            (the paper's): the head reads the side network alone, which must first learn to
            reproduce the backbone's predictions.
        head_gate: True: QST's output mixing. The head reads
            sigmoid(z) * h + (1 - sigmoid(z)) * up(side), h the backbone's final hidden state and
            z a trained vector of one logit per channel (d), starting at ``head_gate_init``.
            Like ``head_residual`` (which it excludes) it reads the backbone's final state, so it
            is refused for ``FEATURE_EXTRACTION``; a backbone-state cache stores that state.
        head_gate_init: The starting z of every channel of ``head_gate``. QST's 1 starts the head
            at sigmoid(1) = 0.73 of the backbone's state.
        up_init: How the up-projection (d/r -> d) starts: ``zero`` (the side network's output
            starts at none: the head starts as the pretrained model, but the side network gets
            no gradient on the first step), ``default`` (PyTorch's Linear initialisation, as
            QST and the reference code), ``small`` (normal weights of std 0.01, zero bias: the
            ``auto`` start before 2026-12-07, kept to reproduce runs made with it) or ``auto``
            (zero with ``head_residual`` or the late route, else PyTorch's default).
        late_layers: K > 0 takes the late route (SHERL, DTL; `laddertune.late`): side blocks on
            the layers below the top K only; the side network's up-projected output is added to
            the backbone stream before its top K layers, and trained copies of those K layers
            (and of the stack's final norm) carry it to the head. Memory: LST's plus the top K
            layers' activations (and, trained in full, their gradients and optimizer state);
            not yet measured against top-K LoRA. 0 (default): LST as the paper. One-stack
            models only; the copies keep no key/value cache, and the route cannot read cached
            backbone states.
        late_tuning: How the top K copies train: ``full`` (every weight) or ``lora`` (a
            low-rank correction of each of their Linear layers, the copies frozen).
        late_lora_rank: The rank of those corrections.
        xladder_depth: delta > 0 extends the side network past the backbone's top (xLadder,
            "Ladder Up, Memory Down"): 2 delta more side blocks on top of the kept ones, fed by
            the top delta backbone layers, two blocks each. Depth at no backbone cost. 0
            (default): one side block per kept layer. Extra blocks start random.
        backbone_dtype: How the frozen backbone is stored: ``float32`` (as loaded), ``bfloat16``
            (half the weight memory; computed in bf16 where the device has fast bf16 kernels,
            else upcast to fp32 one layer at a time), ``int8`` (torchao weight-only int8 Linear
            layers and embeddings, a quarter; needs ``laddertune[quant]``) or ``nf4``
            (bitsandbytes 4-bit, CUDA only). The backbone is converted in place after the side
            network is initialised from its original weights; the side network stays fp32.
            See `laddertune.quant`.
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
        metadata={"help": "Backbone layers that feed the side network. None = the paper's "
                          "choice: its code's layers for t5-base/large/3b, else drop every "
                          "fourth layer starting at 0."},
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
    ladder_rank: int | None = field(
        default=None,
        metadata={"help": "None: each ladder is one Linear(d -> d/r), as the paper. A number k: "
                          "QST's low-rank ladder Linear(d -> k), swish, Linear(k -> d/r), "
                          "LayerNorm (QST uses 16); far fewer ladder parameters."},
    )
    gate_per_channel: bool = field(
        default=False,
        metadata={"help": "One gate per side channel (a vector of d/r alphas per side block), "
                          "as QST, instead of one scalar gate per block."},
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
        metadata={"help": "Examples used for Fisher importance (side_init='fisher'), drawn at "
                          "random from all of init_data, which is read once to the end."},
    )
    prune_seed: int = field(
        default=0,
        metadata={"help": "Seed of the random sample of init_data for Fisher importance."},
    )
    dropout: float = field(
        default=0.1,
        metadata={"help": "Dropout inside the side network and before the task head."},
    )
    side_attention_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the side network's attention probabilities. 0 (default) "
                          "lets fused attention skip storing attention maps for backward; the "
                          "paper's code uses 0.1."},
    )
    backbone_dropout: bool = field(
        default=False,
        metadata={"help": "Run the frozen backbone with its dropout on while training, as the "
                          "paper's code does (noisier ladder inputs, still no backbone "
                          "gradients). Off: the backbone runs in eval mode."},
    )
    ladder_last_layer: str = field(
        default="raw",
        metadata={"help": "What the ladder from a stack's last layer reads: 'raw' (default) the "
                          "last block's output, as the paper's code does, or 'normed' the "
                          "output after the stack's final norm where transformers reports "
                          "that (hidden_states[-1])."},
    )
    gate_weight_decay: bool = field(
        default=False,
        metadata={"help": "Apply weight decay to the gate alphas in parameter_groups. Off "
                          "(default): decay would pull every gate back to mu = 0.5."},
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

    head_residual: bool = field(
        default=False,
        metadata={"help": "The head (the LM head, or a new classifier) reads the backbone's "
                          "final state plus the side network's correction (up-projection "
                          "starting at zero), so language models start from their own "
                          "predictions and classifiers from a probe of the backbone. Off "
                          "(default, the paper's): the head reads the side network alone."},
    )
    head_gate: bool = field(
        default=False,
        metadata={"help": "QST's output mixing: the head reads sigmoid(z) * (backbone's final "
                          "state) + (1 - sigmoid(z)) * (side network's up-projection), z one "
                          "trained logit per channel. Excludes head_residual."},
    )
    head_gate_init: float = field(
        default=1.0,
        metadata={"help": "Starting z of head_gate's per-channel gate; QST's 1 weighs the "
                          "backbone's state sigmoid(1) = 0.73 at the start."},
    )
    up_init: str = field(
        default="auto",
        metadata={"help": "How the up-projection starts: 'zero' (the head starts at the "
                          "backbone's own state), 'default' (PyTorch's Linear init, as QST) or "
                          "'small' (normal, std 0.01: auto's start before 2026-12-07) or "
                          "'auto' (zero with head_residual or the late route, else "
                          "PyTorch's default)."},
    )
    late_layers: int = field(
        default=0,
        metadata={"help": "K > 0: the late route (SHERL/DTL): side blocks on the lower layers, "
                          "their output added back before the top K backbone layers, which are "
                          "trained (copies; see late_tuning). More memory than LST: the top K "
                          "layers' activations and training state. 0 (default): plain LST."},
    )
    late_tuning: str = field(
        default="full",
        metadata={"help": "How the late route's top K layers train: 'full' or 'lora' (a "
                          "low-rank correction of each of their linear layers)."},
    )
    late_lora_rank: int = field(
        default=8,
        metadata={"help": "Rank of the LoRA corrections when late_tuning is 'lora'."},
    )
    xladder_depth: int = field(
        default=0,
        metadata={"help": "xLadder: delta > 0 adds 2*delta side blocks on top of the side "
                          "network, fed by the backbone's top delta layers (two blocks each): "
                          "more depth, no more backbone. 0 (default): none."},
    )
    backbone_dtype: str = field(
        default="float32",
        metadata={"help": "How the frozen backbone is stored: 'float32' (default), 'bfloat16' "
                          "(half the weight memory), 'int8' (a quarter; torchao, "
                          "laddertune[quant]) or 'nf4' (bitsandbytes 4-bit, CUDA only). The "
                          "side network stays float32."},
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
        if not _is_count(self.prune_seed, 0):
            raise LSTConfigError(f"prune_seed must be a whole number >= 0, got {self.prune_seed!r}")
        for name in ("backbone_dropout", "gate_weight_decay", "head_residual", "head_gate",
                     "gate_per_channel"):
            if not isinstance(getattr(self, name), bool):
                raise LSTConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
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
        for name in ("dropout", "side_attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LSTConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.backbone_dtype not in BACKBONE_DTYPES:
            raise LSTConfigError(f"backbone_dtype={self.backbone_dtype!r} is unknown; use one of "
                                 f"{', '.join(BACKBONE_DTYPES)}")
        if self.ladder_last_layer not in LAST_LAYER_READINGS:
            raise LSTConfigError(f"ladder_last_layer={self.ladder_last_layer!r} is unknown; use "
                                 "'raw' or 'normed'")
        if self.ladder_rank is not None and not _is_count(self.ladder_rank, 1):
            raise LSTConfigError(f"ladder_rank must be a whole number >= 1 (QST uses 16) or "
                                 f"None, got {self.ladder_rank!r}")
        if self.up_init not in UP_INITS:
            raise LSTConfigError(f"up_init={self.up_init!r} is unknown; use one of "
                                 f"{', '.join(UP_INITS)}")
        if self.head_gate and self.head_residual:
            raise LSTConfigError("head_gate and head_residual are two ways of mixing the "
                                 "backbone's final state into the head; turn one of them off")
        if not _is_count(self.late_layers, 0) or not _is_count(self.late_lora_rank, 1):
            raise LSTConfigError(f"late_layers must be a whole number >= 0 and late_lora_rank "
                                 f">= 1, got {self.late_layers!r} and {self.late_lora_rank!r}")
        if not _is_count(self.xladder_depth, 0):
            raise LSTConfigError(f"xladder_depth must be a whole number >= 0, got "
                                 f"{self.xladder_depth!r}")
        if self.xladder_depth and self.late_layers:
            raise LSTConfigError("xladder_depth reads the backbone's top layers, which the late "
                                 "route trains instead; set one of them to 0")
        if self.late_tuning not in LATE_TUNINGS:
            raise LSTConfigError(f"late_tuning={self.late_tuning!r} is unknown; use 'full' or "
                                 "'lora'")
        if self.late_layers and (self.head_residual or self.head_gate):
            raise LSTConfigError("the late route's top layers already carry the side network "
                                 "into the head; turn off head_residual and head_gate, or set "
                                 "late_layers=0")
        for name in ("side_layers", "decoder_side_layers"):
            layers = getattr(self, name)
            if layers is not None:
                layers = [int(i) for i in layers]
                if not layers:
                    raise LSTConfigError(f"{name} is empty; list at least one layer or pass None")
                if len(set(layers)) != len(layers):
                    raise LSTConfigError(f"{name} lists a layer twice: {layers}")
                setattr(self, name, sorted(layers))

    @classmethod
    def paper(cls, **overrides) -> LSTConfig:
        """The reference code's choices (ylsung/Ladder-Side-Tuning, T5 on GLUE); any field can
        be overridden, e.g. ``LSTConfig.paper(task_type="SEQ_2_SEQ_LM")`` for its text-to-text
        set-up.

        What it sets, and why:
            reduction_factor=8: the GLUE scripts' r (the paper uses 4 for vision-and-language).
            side_init="fisher", prune_samples=1024: side blocks pruned by the empirical Fisher
                of 1,024 examples of a shuffled loader (its fisher-v2 initialisation); pass
                init_data.
            ladder_last_layer="raw": its ladders read each block's own output; the stack's
                final norm comes after the loop.
            backbone_dropout=True: its backbone runs in train mode, dropout on.
            side_attention_dropout=0.1, dropout=0.1: its side blocks are T5 blocks with all of
                T5's dropout (rate 0.1), attention probabilities included.
            gate="learnable", gate_temperature=0.1, gate_alpha_init=0.0: its learnable gates,
                mu = sigmoid(alpha / 0.1) starting at 0.5.
            gate_weight_decay=False: it trains with weight decay 0, so its gates never decay;
                with parameter_groups no gate decays here whatever decay the rest gets.
            side_layers=None: its layers per checkpoint (see ``side_layers``).
        """
        choices = dict(reduction_factor=8, side_init="fisher", prune_samples=1024,
                       ladder_last_layer="raw", backbone_dropout=True,
                       side_attention_dropout=0.1, dropout=0.1, gate="learnable",
                       gate_temperature=0.1, gate_alpha_init=0.0, gate_weight_decay=False)
        return cls(**{**choices, **overrides})

    @classmethod
    def late(cls, **overrides) -> LSTConfig:
        """The late route (``late_layers``) as a preset: side blocks on the lower layers, the
        top 2 backbone layers trained in full. For users who can afford the top layers'
        activations and weights; any field can be overridden."""
        return cls(**{"late_layers": 2, "late_tuning": "full", **overrides})

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
