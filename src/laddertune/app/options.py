"""Every command's settings, defined once: a dataclass per command, one field per flag.

The command line is derived from these classes (`add_arguments`), so a flag's name, default,
help and choices live in one place. Each field's metadata holds:

    help        what the flag does, for a user who has not read the code
    choices     the allowed values, when there is a closed set
    metavar     what the value is (FILE, N, ...)
    resumable   may differ when `--resume` continues a run (it does not change what is trained)
    many        the flag takes several values, and may be repeated

Values are checked in `__post_init__`, so a Python caller gets the same one-line errors as the
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BACKBONE_DTYPES, LSTConfig
from ..errors import LSTError, LSTWarning
from .aliases import ALIASES
from .data import BBC_HEADLINES, BBC_NEWS, PAIR_COLUMNS, TWEET_SENTIMENT
from .methods import DEFAULT_LR, METHODS, REGISTRY, Method, default_eval_batch, get_method

DEVICES = ("auto", "cpu", "cuda")
TASKS = ("classify", "generate")
LST_PRESETS = ("default", "paper", "late")
CACHE_DTYPES = ("float16", "bfloat16", "float32")
# The --account-shape default: one batch shape for every method's memory account (examples, tokens)
ACCOUNT_SHAPE = (32, 256)

# adapters.ADAPTER_KINDS, named here so that the CLI starts without importing torch (a test
# pins that the two agree)
ADAPTER_KINDS = ("houlsby", "pfeiffer")
# LSTConfig fields the training run sets itself, so they get no --lst-* flag
LST_SET_BY_RUN = ("task_type", "num_labels", "reduction_factor", "decoder_side_layers",
                  "backbone_dtype")
DEFAULT_MAX_LENGTH = 256
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit


class UsageError(LSTError, ValueError):
    """A command-line option or training setting is out of range or contradicts another."""


def _flag(help: str, **meta) -> dict:
    return {"help": help, **meta}


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tune a pretrained model to classify texts (--task classify) or to answer prompts in
    words (--task generate): LST by default, or a baseline in the same loop. Writes the trained
    side network (or adapter), run.json, metrics.json, report.md and figures to --output.

    Frozen once `__post_init__` has checked it and filled in the defaults that depend on other
    fields (--lr, --output): what a run derives later (the --max-length fitted to the model,
    --max-new-tokens) lives on the run, which records it in run.json. Change a setting with
    `dataclasses.replace`, which checks the new config again.

    Args: one per field, each explained by its help (``laddertune train --help`` prints them).
    """

    model: str = field(default="minilm", metadata=_flag(
        "'minilm' (MiniLM-L6, BERT encoder), 'smollm2' (SmolLM2-135M, Llama decoder), 'mpnet' "
        "(all-mpnet-base-v2, installed on first use), a local Hugging Face model folder or "
        ".gguf file, or a Hugging Face Hub id ORG/NAME (downloaded once; offline, only a copy "
        "already in the Hub's cache)", metavar="MODEL"))
    revision: str | None = field(default=None, metadata=_flag(
        "with a Hub id --model: the branch, tag or commit to load (default: main); run.json "
        "records it and the commit loaded", metavar="REV"))
    task: str = field(default="classify", metadata=_flag(
        "classify: a label per text, from a new classification head; generate: text to text, "
        "through the model's own LM head (decoder-only or encoder-decoder models): prompt -> "
        "target pairs, or a classification file whose labels become target words",
        choices=TASKS))
    train: str = field(default=BBC_NEWS, metadata=_flag(
        f"training data: .csv, .tsv, .jsonl, .json or .parquet with a text and a label column "
        f"(--task generate: a prompt and a target column, or a text and a label column), or a "
        f"built-in set: '{BBC_NEWS}' (2,225 articles, 5 topics), '{TWEET_SENTIMENT}' "
        f"(35,696 tweets, negative/neutral/positive) or '{BBC_HEADLINES}' (4,450 article and "
        f"headline pairs: match/mismatch)", metavar="FILE"))
    eval: str | None = field(default=None, metadata=_flag(
        "eval data; without it a stratified 20% of --train is held out", metavar="FILE"))
    text_column: str = field(default="text", metadata=_flag("column holding the text",
                                                             metavar="NAME"))
    text_pair_column: str | None = field(default=None, metadata=_flag(
        "--task classify on sentence pairs: column holding each text's second text (a "
        "hypothesis, a paraphrase, a headline), read with the first as one pair; "
        f"'{BBC_HEADLINES}' sets it itself", metavar="NAME"))
    label_column: str = field(default="label", metadata=_flag("column holding the label",
                                                               metavar="NAME"))
    prompt_column: str = field(default="prompt", metadata=_flag(
        "--task generate: column holding the prompt (the model's input)", metavar="NAME"))
    target_column: str = field(default="target", metadata=_flag(
        "--task generate: column holding the target the model learns to answer; the loss is "
        "on its tokens only", metavar="NAME"))
    chat_template: bool = field(default=False, metadata=_flag(
        "--task generate: wrap each prompt in the tokenizer's chat template (a user turn, then "
        "the assistant's), when the tokenizer has one"))
    verbalizer: str | None = field(default=None, metadata=_flag(
        "--task generate on a classification file: the word each label is answered with, as "
        "LABEL=WORD,LABEL=WORD or a .json file {label: word} (default: the label itself)",
        metavar="MAP"))
    max_new_tokens: int | None = field(default=None, metadata=_flag(
        "--task generate: the most tokens generated per answer in evaluation (default: the "
        "longest training target, plus its end token)", metavar="N", resumable=True))
    num_beams: int = field(default=1, metadata=_flag(
        "--task generate: 1 decodes greedily (or samples), more keeps that many beams",
        metavar="N", resumable=True))
    temperature: float = field(default=0.0, metadata=_flag(
        "--task generate: 0 takes the likeliest token; above 0 samples, seeded by --seed",
        metavar="T", resumable=True))
    top_p: float = field(default=1.0, metadata=_flag(
        "--task generate, sampling: draw from the likeliest tokens whose probabilities add up "
        "to P", metavar="P", resumable=True))
    method: str = field(default="lst", metadata=_flag(
        "lst, or a baseline trained in the same loop: full fine-tuning, lora, prompt and ia3 "
        "(through peft), bitfit, adapter (bottleneck adapters, Houlsby or Pfeiffer), probe (a "
        "logistic regression on the frozen pooled final state, fitted to convergence)",
        choices=METHODS))
    epochs: int = field(default=3, metadata=_flag("passes over --train", metavar="N"))
    batch_size: int = field(default=16, metadata=_flag(
        "examples per forward pass; an optimizer step takes --grad-accum-steps of them",
        metavar="N"))
    grad_accum_steps: int = field(default=1, metadata=_flag(
        "micro-batches of --batch-size per optimizer step: the step sees their examples "
        "together, in the memory of one, its loss averaged over all of them (--task generate: "
        "over all their target tokens)", metavar="K"))
    lr: float | None = field(default=None, metadata=_flag(
        "peak learning rate; default per method: "
        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()), metavar="LR"))
    weight_decay: float = field(default=0.01, metadata=_flag("AdamW weight decay",
                                                             metavar="W"))
    warmup_ratio: float = field(default=0.1, metadata=_flag(
        "share of all steps spent warming the learning rate up linearly, before it decays "
        "linearly to 0", metavar="R"))
    max_grad_norm: float = field(default=1.0, metadata=_flag(
        "clip the gradient norm to this before each step", metavar="X"))
    max_length: int | None = field(default=None, metadata=_flag(
        f"tokens per text; longer texts are truncated and counted in the report (default: "
        f"{DEFAULT_MAX_LENGTH}, or the model's position limit if lower)", metavar="TOKENS"))
    seed: int = field(default=0, metadata=_flag(
        "fixes initialisation, data order and dropout (CPU runs repeat exactly)", metavar="N"))
    reduction_factor: int = field(default=8, metadata=_flag(
        "LST only: the side network is this many times narrower than the model", metavar="R"))
    lst_preset: str = field(default="default", metadata=_flag(
        "LST only: 'default' (laddertune's defaults), 'paper' (the reference code's choices: "
        "Fisher pruning, backbone dropout, attention dropout; see LSTConfig.paper) or 'late' "
        "(the late route: side blocks below the top 2 layers, which train; more memory than "
        "LST; see LSTConfig.late); --lst-* flags override any",
        choices=LST_PRESETS))
    backbone_dtype: str = field(default="float32", metadata=_flag(
        "LST and LoRA: how the frozen backbone is stored: float32; bfloat16 (half the weight "
        "memory, computed in bf16 where the device has fast bf16 kernels, else upcast one layer "
        "at a time); int8 (a quarter; torchao, `pip install laddertune[quant]`); nf4 "
        "(bitsandbytes 4-bit, CUDA only; QLoRA with lora). The side network, LoRA's weights "
        "and the head stay float32",
        choices=BACKBONE_DTYPES))
    lst: dict = field(default_factory=dict, metadata=_flag(
        "LST settings, one --lst-NAME flag per LSTConfig field", nested=True))
    adapter_kind: str = field(default="houlsby", metadata=_flag(
        "adapter only: 'houlsby' (after attention and feed-forward) or 'pfeiffer' (after the "
        "feed-forward)", choices=ADAPTER_KINDS))
    adapter_reduction_factor: int = field(default=16, metadata=_flag(
        "adapter only: the bottleneck is this many times narrower than the model", metavar="R"))
    top_layers: int | None = field(default=None, metadata=_flag(
        "full, lora, adapter, ia3: train only the top K backbone layers (and the head); the "
        "layers below get no trainable parameter, so backward keeps nothing for them and "
        "memory falls with K (the paper's low-memory baselines). Default: every layer",
        metavar="K"))
    cache_backbone: bool = field(default=False, metadata=_flag(
        "LST, the probe, and --top-layers K: store the frozen backbone's states (for top K, "
        "the state entering the top K layers, from the layers below in eval mode) the first "
        "time it computes them, so later epochs, evaluations and runs on the same data never "
        "run them again"))
    cache_dir: str | None = field(default=None, metadata=_flag(
        "where --cache-backbone keeps its caches, shared by runs (default: "
        "$LADDERTUNE_CACHE/states, ~/.cache/laddertune/states)", metavar="DIR",
        resumable=True))
    cache_dtype: str = field(default="float16", metadata=_flag(
        "precision of the cached states: float16 halves the disk of float32 and moves accuracy "
        "by a few hundredths of a point", choices=CACHE_DTYPES))
    output: str | None = field(default=None, metadata=_flag(
        "run folder (default runs/<train file name>-<method>)", metavar="DIR"))
    resume: bool = field(default=False, metadata=_flag(
        "continue the run in --output from its last checkpoint; flags you leave out are taken "
        "from the run", resumable=True))
    overwrite: bool = field(default=False, metadata=_flag(
        "replace the run in --output; the old run stays until the new one has finished"))
    device: str = field(default="auto", metadata=_flag(
        "auto picks a CUDA GPU when there is one", choices=DEVICES, resumable=True))
    save_every: int = field(default=50, metadata=_flag(
        "write a checkpoint every N steps (and at every epoch end)", metavar="N",
        resumable=True))
    eval_every: int | None = field(default=None, metadata=_flag(
        "evaluate every N optimizer steps as well as at each epoch end; metrics.json and the "
        "learning curve get a point per evaluation (default: at each epoch end only)",
        metavar="N"))
    early_stopping_patience: int | None = field(default=None, metadata=_flag(
        "stop once P evaluations in a row have not improved on the best --metric-for-best; "
        "the run then keeps the weights of its best evaluation, which eval, predict and "
        "generate use (default: no early stopping; every epoch trains)", metavar="P"))
    metric_for_best: str | None = field(default=None, metadata=_flag(
        "the eval score early stopping and metrics.json's best step judge by, higher is "
        "better except for loss (default: the task's own, macro_f1 for classify, rouge_l for "
        "generate)", metavar="NAME"))
    eval_batch_size: int | None = field(default=None, metadata=_flag(
        "examples per eval forward pass (default: 64; for lst, whose eval holds every layer's "
        "state at once, no more than --batch-size)", metavar="N", resumable=True))
    tensorboard: bool = field(default=False, metadata=_flag(
        "log to TensorBoard in <output>/tensorboard", resumable=True))
    progress: bool = field(default=True, metadata=_flag(
        "progress bars on a terminal (a line per epoch otherwise)", resumable=True))
    account_shape: str = field(default="x".join(map(str, ACCOUNT_SHAPE)), metadata=_flag(
        "after training, account the bytes one training step keeps (for backward, gradients, "
        "optimizer state, trainable and frozen weights) on a synthetic batch of BxT tokens, the "
        "same for every method, into metrics.json; 'none' skips it", metavar="BxT",
        resumable=True))

    def __post_init__(self):
        _check_counts(self, "epochs", "batch_size")
        if self.eval_batch_size is None:
            _fill(self, "eval_batch_size", default_eval_batch(self.method, self.batch_size))
        _check_counts(self, "grad_accum_steps", "save_every", "eval_batch_size",
                      "reduction_factor", "adapter_reduction_factor", "num_beams")
        for name in ("max_length", "max_new_tokens", "eval_every", "early_stopping_patience"):
            if getattr(self, name) is not None:
                _check_counts(self, name)
        _check_choices(self)
        if self.task not in self.method_entry.tasks:
            tasks = self.method_entry.tasks
            raise UsageError(f"--method {self.method} trains only for --task "
                             f"{' or '.join(tasks)}, not --task {self.task}; use --task "
                             f"{tasks[0]} or another --method")
        _check_sampling(self)
        if self.lr is None:
            _fill(self, "lr", self.method_entry.default_lr)
        _check_finite(self, "lr", "weight_decay", "warmup_ratio", "max_grad_norm")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr:g}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay:g}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio:g}")
        if self.max_grad_norm <= 0:
            raise UsageError(f"--max-grad-norm must be > 0, got {self.max_grad_norm:g}")
        _check_seed(self.seed)
        self._check_top_layers()
        _account_shape(self.account_shape)   # a bad one fails now, not after training
        if self.train in PAIR_COLUMNS and self.task == "classify":   # recorded for eval, predict
            _fill(self, "text_column", PAIR_COLUMNS[self.train][0])
            _fill(self, "text_pair_column", PAIR_COLUMNS[self.train][1])
        if self.text_pair_column is not None and self.task != "classify":
            raise UsageError(f"--text-pair-column is for --task classify; --task {self.task} "
                             "reads one prompt per example: drop it")
        if self.text_pair_column in (self.text_column, self.label_column):
            raise UsageError(f"--text-pair-column names {self.text_pair_column!r}, which is "
                             "already the text or the label column; pass the column that holds "
                             "the second text")
        if self.revision is not None and (self.model in ALIASES
                                          or Path(self.model).expanduser().exists()):
            raise UsageError(f"--revision is for a Hugging Face Hub id, and --model "
                             f"{self.model} is a local model; drop --revision")
        lst = self.lst_config(num_labels=2)   # a bad --lst-* value fails now, not after loading
        _check_backbone_dtype(self)
        if (self.cache_backbone and not self.method_entry.reads_backbone_states
                and self.top_layers is None):
            readers = " or ".join(f"--method {m.name}" for m in REGISTRY.values()
                                  if m.reads_backbone_states)
            topk = ", ".join(m.name for m in REGISTRY.values() if m.top_layers)
            raise UsageError(f"--cache-backbone is for {readers}, or {topk} with --top-layers "
                             f"K: {self.method} at full depth trains through the backbone, "
                             "whose states then change every step")
        if self.cache_backbone and lst.late_layers:
            raise UsageError("--cache-backbone stores what the ladders read, but the late "
                             "route runs the backbone's top layers on each call; drop "
                             "--cache-backbone or the late route")
        if self.cache_backbone and lst.backbone_dropout:
            if "backbone_dropout" not in self.lst:   # the paper preset turned it on
                raise UsageError("--cache-backbone needs fixed backbone states, but --lst-preset "
                                 "paper turns on backbone dropout, which changes them every "
                                 "step; drop --cache-backbone, or add --lst-backbone-dropout "
                                 "false")
            raise UsageError("--cache-backbone needs fixed backbone states, but "
                             "--lst-backbone-dropout true changes them every step; drop one")
        self._warn_unused()
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        if self.output is None:
            stem = self.train.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "run"
            _fill(self, "output", f"runs/{stem}-{self.method}")
        # paths as absolute ones: a run resumed from another folder reads the same files
        for name in ("train", "eval", "model", "cache_dir"):
            _fill(self, name, _absolute(getattr(self, name)))

    def _check_top_layers(self) -> None:
        """--top-layers K (1..L is checked once the model is loaded) for the methods that can."""
        if self.top_layers is None:
            return
        _check_counts(self, "top_layers")
        if not self.method_entry.top_layers:
            able = ", ".join(m.name for m in REGISTRY.values() if m.top_layers)
            raise UsageError(f"--top-layers is for --method {able}, not {self.method}; drop it "
                             "or pick one of those")
        if self.cache_backbone and self.backbone_dtype not in (None, "float32"):
            raise UsageError(f"--cache-backbone with --top-layers caches float32 layers below, "
                             f"not --backbone-dtype {self.backbone_dtype}; drop one of them")

    def _warn_unused(self) -> None:
        """Settings of another method or task than the one trained do nothing: say so once."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        defaults = {name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for name, f in fields.items()}
        others = [name for method in REGISTRY.values() if method is not self.method_entry
                  for name in method.fields if name not in self.method_entry.fields]
        by_method = [_flag_name(name) + ("-*" if fields[name].metadata.get("nested") else "")
                     for name in dict.fromkeys(others) if getattr(self, name) != defaults[name]]
        by_task = []
        if self.task != "generate":
            by_task = [_flag_name(name) for name in GENERATE_ONLY
                       if getattr(self, name) != defaults[name]]
        by_fit = []
        if self.method_entry.fit is not None:   # fitted in one go: no optimizer steps to set
            set_by_user = {**defaults, "lr": self.method_entry.default_lr}
            by_fit = [_flag_name(name) for name in STEP_SETTINGS
                      if getattr(self, name) != set_by_user[name]]
        for unused, what in ((by_method, f"--method {self.method}"),
                             (by_task, f"--task {self.task}"),
                             (by_fit, f"--method {self.method}, fitted to convergence,")):
            if unused:
                warnings.warn(f"{', '.join(unused)} set, but {what} does not use them",
                              LSTWarning, stacklevel=3)

    @property
    def account_batch_shape(self) -> tuple[int, int] | None:
        """--account-shape as (examples, tokens), or None for 'none'."""
        return _account_shape(self.account_shape)

    @property
    def method_entry(self) -> Method:
        """--method's entry in the registry (`methods.REGISTRY`)."""
        return get_method(self.method)

    def lst_config(self, num_labels: int = 2, task_type: str = "SEQ_CLS") -> LSTConfig:
        """The LSTConfig of a `task_type` model (a sequence classifier of `num_labels` classes,
        or a language model): the preset, then the --lst-* flags, then --reduction-factor."""
        build = {"paper": LSTConfig.paper, "late": LSTConfig.late}.get(self.lst_preset,
                                                                       LSTConfig)
        return build(**{**self.lst, "task_type": task_type, "num_labels": num_labels,
                        "reduction_factor": self.reduction_factor,
                        "backbone_dtype": self.backbone_dtype})

    def training_settings(self) -> dict:
        """The fields that decide what is trained: a resumed run must keep every one. (The LST
        settings are compared as the LSTConfig they make, `lst_config`.)"""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.metadata.get("resumable")
                and f.name not in ("output", "overwrite", "lst", "lst_preset")}


# The optimizer-step settings a method fitted in one go (Method.fit) never reads
STEP_SETTINGS = ("lr", "epochs", "weight_decay", "warmup_ratio", "max_grad_norm")

# TrainConfig fields only --task generate reads
GENERATE_ONLY = ("prompt_column", "target_column", "chat_template", "verbalizer",
                 "max_new_tokens", "num_beams", "temperature", "top_p")


def _generation_flag(help: str, **meta):
    """A generation setting of eval, predict and generate: None takes the run's own."""
    return field(default=None, metadata=_flag(help + " (default: the run's)", **meta))


@dataclass
class EvalConfig:
    """Print a finished run's scores on labelled data, as JSON: accuracy, macro-F1, loss,
    per-class scores and confusion matrix of a classifier; exact match, token F1, ROUGE-L and
    loss of a generate run. The run folder names its backbone; no --model needed."""

    checkpoint: str = field(metadata=_flag("run folder written by `laddertune train`",
                                           metavar="DIR", required=True))
    data: str = field(metadata=_flag(
        f".csv, .tsv, .jsonl, .json or .parquet file, or a built-in set ('{BBC_NEWS}', "
        f"'{TWEET_SENTIMENT}', '{BBC_HEADLINES}': its held-out split)",
        metavar="FILE", required=True))
    text_column: str | None = field(default=None, metadata=_flag(
        "column holding the text (default: the one used in training)", metavar="NAME"))
    text_pair_column: str | None = field(default=None, metadata=_flag(
        "runs trained on sentence pairs: column holding the second text (default: the one used "
        "in training)", metavar="NAME"))
    label_column: str | None = field(default=None, metadata=_flag(
        "column holding the label (default: the one used in training)", metavar="NAME"))
    model: str | None = field(default=None, metadata=_flag(
        "backbone to load instead of the one run.json names (e.g. after moving it); it must "
        "be the same model", metavar="MODEL"))
    batch_size: int | None = field(default=None, metadata=_flag(
        "examples per forward pass (default: the run's own eval batch, 64 for runs that did "
        "not record one)", metavar="N"))
    device: str = field(default="auto", metadata=_flag("auto picks a CUDA GPU when there is one",
                                                       choices=DEVICES))
    prompt_column: str | None = _generation_flag("generate runs: column holding the prompt",
                                                 metavar="NAME")
    target_column: str | None = _generation_flag("generate runs: column holding the target",
                                                 metavar="NAME")
    max_new_tokens: int | None = _generation_flag("generate runs: the most tokens per answer",
                                                  metavar="N")
    num_beams: int | None = _generation_flag("generate runs: beams (1: greedy or sampling)",
                                             metavar="N")
    temperature: float | None = _generation_flag("generate runs: 0 is greedy, above 0 samples",
                                                 metavar="T")
    top_p: float | None = _generation_flag("generate runs, sampling: the nucleus mass",
                                           metavar="P")

    def __post_init__(self):
        if self.batch_size is not None:
            _check_counts(self, "batch_size")
        for name in ("max_new_tokens", "num_beams"):
            if getattr(self, name) is not None:
                _check_counts(self, name)
        _check_choices(self)
        _check_sampling(self)


@dataclass
class PredictConfig(EvalConfig):
    """Label every row of a file with a finished run: a CSV with an id (or row) column, the
    input's columns (--keep-columns) and the predicted label and one probability column per
    class, or, for a generate run, the `generated` text."""

    output: str = field(default="predictions.csv", metadata=_flag(
        "predictions CSV to write: an id (or row) column, then the label and one probability "
        "per class (classify) or the generated text (generate)", metavar="CSV"))
    id_column: str = field(default="id", metadata=_flag(
        "column passed through to the predictions when the file has it", metavar="NAME"))
    keep_columns: str | None = field(default=None, metadata=_flag(
        "the input's columns copied into the predictions, between the id (or row) and the "
        "predicted ones, as NAME,NAME,... or 'none'; one named like a predicted column is "
        "written as input_NAME (default: all of a file's columns)", metavar="NAMES"))


@dataclass
class GenerateConfig:
    """Print one completion of --prompt by a finished generate run, token by token as it is
    generated."""

    checkpoint: str = field(metadata=_flag("run folder written by `laddertune train --task "
                                           "generate`", metavar="DIR", required=True))
    prompt: str = field(metadata=_flag("the prompt to complete ('-' reads it from standard "
                                       "input)", metavar="TEXT", required=True))
    max_new_tokens: int | None = _generation_flag("the most tokens to generate", metavar="N")
    num_beams: int | None = _generation_flag(
        "beams (1: greedy or sampling; beams print at the end)", metavar="N")
    temperature: float | None = _generation_flag("0 is greedy, above 0 samples", metavar="T")
    top_p: float | None = _generation_flag("sampling: the nucleus mass", metavar="P")
    seed: int = field(default=0, metadata=_flag("seeds sampling", metavar="N"))
    model: str | None = field(default=None, metadata=_flag(
        "backbone to load instead of the one run.json names; it must be the same model",
        metavar="MODEL"))
    device: str = field(default="auto", metadata=_flag("auto picks a CUDA GPU when there is one",
                                                       choices=DEVICES))

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams"):
            if getattr(self, name) is not None:
                _check_counts(self, name)
        _check_choices(self)
        _check_sampling(self)
        _check_seed(self.seed)


@dataclass
class DemoConfig:
    """Fine-tune MiniLM with LST on BBC News (2,225 articles, 5 topics, fixed 80/20 split), print
    test accuracy and macro-F1, then time a few steps of full fine-tuning and LoRA on the same
    batches and measure their memory. With --task generate: SmolLM2-135M learns to write BBC
    News headlines, by LST and by LoRA, against its untrained self (ROUGE-L, exact match,
    memory, step time). Fully offline; writes report.md, metrics.json and figures to
    --output."""

    task: str = field(default="classify", metadata=_flag(
        "classify: MiniLM learns BBC News topics; generate: SmolLM2-135M learns BBC News "
        "headlines from the start of each article", choices=TASKS))
    output: str | None = field(default=None, metadata=_flag(
        "run folder (default runs/demo, or runs/demo-generate with --task generate)",
        metavar="DIR"))
    epochs: int | None = field(default=None, metadata=_flag(
        "passes over the training split (default 2, which suffice for 97% on 2 CPU cores; 1 "
        "with --task generate, to fit 10 minutes)", metavar="N"))
    device: str = field(default="auto", metadata=_flag("auto picks a CUDA GPU when there is one",
                                                       choices=DEVICES))

    def __post_init__(self):
        _check_choices(self)
        if self.epochs is None:
            self.epochs = 2 if self.task == "classify" else 1
        _check_counts(self, "epochs")
        if self.output is None:
            self.output = "runs/demo" if self.task == "classify" else "runs/demo-generate"


@dataclass
class ServeConfig:
    """Serve finished runs over HTTP, all over one copy of their backbone: classify and
    generate tasks, OpenAI-shaped (/v1/models, /v1/classify, /v1/completions,
    /v1/chat/completions, /health). Requests for any tasks that arrive together share one
    backbone pass. SIGTERM drains the requests in flight, then exits 0."""

    checkpoint: list[str] = field(metadata=_flag(
        "run folders written by `laddertune train`, each served as a task named NAME (default: "
        "the folder's name); all trained on one backbone", metavar="[NAME=]DIR", required=True,
        many=True))
    host: str = field(default="127.0.0.1", metadata=_flag(
        "address to listen on (0.0.0.0: every interface; put a proxy in front, see "
        "docs/serving.md)", metavar="HOST"))
    port: int = field(default=8000, metadata=_flag("port to listen on (0: any free port)",
                                                   metavar="N"))
    device: str = field(default="auto", metadata=_flag("auto picks a CUDA GPU when there is one",
                                                       choices=DEVICES))
    max_batch_size: int = field(default=32, metadata=_flag(
        "the most texts one forward answers: more amortises the backbone, fewer bounds latency",
        metavar="N"))
    max_wait_ms: float = field(default=5.0, metadata=_flag(
        "how long a request waits for others to share its batch", metavar="MS"))
    max_queue: int = field(default=256, metadata=_flag(
        "requests in the server at once; one more is answered 429", metavar="N"))
    timeout: float = field(default=30.0, metadata=_flag(
        "seconds a request may wait for its answer before a 503", metavar="S"))
    max_new_tokens_limit: int = field(default=256, metadata=_flag(
        "the most tokens one completion may ask for (max_tokens is capped to it)", metavar="N"))
    max_length: int | None = field(default=None, metadata=_flag(
        "the longest text in tokens; longer ones are refused with a 400 (default: the "
        "smallest --max-length the runs were trained with)", metavar="N"))
    max_body_bytes: int = field(default=1_000_000, metadata=_flag(
        "the largest request body; a larger one is answered 413", metavar="N"))

    def __post_init__(self):
        _check_counts(self, "max_batch_size", "max_queue", "max_new_tokens_limit",
                      "max_body_bytes", *(["max_length"] if self.max_length is not None else []))
        if not 0 <= self.port < 65536:
            raise UsageError(f"--port must be 0..65535, got {self.port}")
        _check_finite(self, "max_wait_ms", "timeout")
        if self.max_wait_ms < 0 or self.timeout <= 0:
            raise UsageError("--max-wait-ms must be at least 0 and --timeout above 0")
        _check_choices(self)


@dataclass(frozen=True)
class PlanConfig:
    """Predict a training run's peak memory before loading anything: weights, the activations
    autograd keeps (the attention term included), gradients and AdamW state, and the larger of
    a step's working set, an eval batch and a checkpoint, for every method or the one named; with
    --budget, whether it fits and the largest batch that does. The figures are above the
    runtime (Python, torch, the libraries and the data: what `laddertune train` records as
    runtime_rss_mb), and come from the model's shapes and formulas written out in
    laddertune/app/plan.py, not from fits to measurements."""

    model: str = field(default="minilm", metadata=_flag(
        "'minilm', 'smollm2', 'mpnet' or a local Hugging Face model folder (only its "
        "config.json is read)", metavar="MODEL"))
    method: str = field(default="all", metadata=_flag(
        "the method to plan, or 'all'", choices=("all", *METHODS)))
    batch_size: int = field(default=16, metadata=_flag("examples per optimizer step",
                                                       metavar="N"))
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata=_flag(
        "tokens per text (every batch padded to it: the worst case)", metavar="TOKENS"))
    backbone_dtype: str = field(default="float32", metadata=_flag(
        "LST's frozen backbone storage, as laddertune train's --backbone-dtype",
        choices=BACKBONE_DTYPES))
    budget: str | None = field(default=None, metadata=_flag(
        "memory the run may take above the runtime, e.g. 8GiB or 512MB", metavar="SIZE"))
    reduction_factor: int = field(default=8, metadata=_flag(
        "LST only: the side network is this many times narrower than the model", metavar="R"))
    num_labels: int = field(default=2, metadata=_flag("classes of the classifier",
                                                      metavar="N"))
    device: str = field(default="auto", metadata=_flag(
        "where it would train: on a CPU attention with dropout keeps its probability matrix",
        choices=DEVICES))

    def __post_init__(self):
        _check_counts(self, "batch_size", "max_length", "reduction_factor", "num_labels")
        _check_choices(self)
        if self.budget is not None:
            from .plan import parse_bytes
            try:
                parse_bytes(self.budget)
            except ValueError as err:
                raise UsageError(f"--budget {err}") from None


def _fill(config, name: str, value) -> None:
    """Set a field of a frozen config while `__post_init__` completes it."""
    object.__setattr__(config, name, value)


def _absolute(value: str | None) -> str | None:
    """An existing local path made absolute; a built-in name, an alias or None as given."""
    if value is None or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


# ---- checks -------------------------------------------------------------------------------------

def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_counts(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{_flag_name(name)} must be a whole number >= 1, got {value!r}")


def _check_finite(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{_flag_name(name)} must be a finite number, got {value!r}")


def _check_choices(config) -> None:
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise UsageError(f"{_flag_name(f.name)} {getattr(config, f.name)!r} is unknown; use "
                             f"one of {', '.join(choices)}")


def _check_sampling(config) -> None:
    temperature, top_p = getattr(config, "temperature", None), getattr(config, "top_p", None)
    if temperature is not None:
        _check_finite(config, "temperature")
        if temperature < 0:
            raise UsageError(f"--temperature must be >= 0 (0 is greedy), got {temperature:g}")
    if top_p is not None:
        _check_finite(config, "top_p")
        if not 0 < top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {top_p:g}")
    beams = getattr(config, "num_beams", None)
    if temperature and beams and beams > 1:
        raise UsageError(f"--temperature {temperature:g} samples and --num-beams {beams} "
                         "searches beams; they do not combine: drop one")


def _account_shape(text: str) -> tuple[int, int] | None:
    """BxT as (examples, tokens); 'none' as None."""
    if text.strip().lower() == "none":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--account-shape {text!r} is not BxT (examples x tokens, e.g. 32x256) "
                         "or none")
    return int(parts[0]), int(parts[1])


def _check_backbone_dtype(config) -> None:
    """--backbone-dtype: the frozen backbone of LST or LoRA only (`Method.reduced_backbone`),
    nf4 only where CUDA will run it, int8 only with torchao installed."""
    if config.backbone_dtype == "float32":
        return
    if not config.method_entry.reduced_backbone:
        able = " or ".join(m.name for m in REGISTRY.values() if m.reduced_backbone)
        raise UsageError(f"--backbone-dtype {config.backbone_dtype} stores the frozen backbone "
                         f"of {able}; --method {config.method} trains or reads the backbone "
                         "in float32: drop --backbone-dtype")
    import importlib.util

    import torch
    on_gpu = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.backbone_dtype == "nf4" and not on_gpu:
        raise UsageError("--backbone-dtype nf4 (bitsandbytes 4-bit) needs a CUDA GPU; on this "
                         "machine use --backbone-dtype int8")
    needs, extra = {"int8": ("torchao", "quant"),
                    "nf4": ("bitsandbytes", "nf4")}.get(config.backbone_dtype, (None, None))
    if needs and importlib.util.find_spec(needs) is None:
        raise UsageError(f"--backbone-dtype {config.backbone_dtype} needs {needs}; run `pip "
                         f"install laddertune[{extra}]`")


def _check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be a whole number from 0 to {SEED_LIMIT - 1}, got {seed!r}")


# ---- the command line, derived --------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per field of `config_class`. Defaults are left out of the parsed namespace
    (argparse.SUPPRESS), so `explicit_values` can tell what the user typed."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if meta.get("nested"):
            _add_lst_arguments(parser)
            continue
        default = defaults[f.name]
        text = meta["help"]
        # by identity: 0 == False and 1.0 == True, yet --seed 0 and --top-p 1.0 are defaults
        if not any(default is v for v in (None, False, True, dataclasses.MISSING)):
            text += f" (default: {default})"
        text = text.replace("%", "%%")   # argparse formats help with %
        if default is True:   # on by default: the flag turns it off
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                                action="store_false", default=argparse.SUPPRESS, help=text)
        elif default is False:
            parser.add_argument(_flag_name(f.name), dest=f.name, action="store_true",
                                default=argparse.SUPPRESS, help=text)
        else:
            many = {"nargs": "+", "action": "extend"} if meta.get("many") else {}
            parser.add_argument(_flag_name(f.name), dest=f.name, type=_value_type(f),
                                choices=meta.get("choices"), metavar=meta.get("metavar"),
                                required=meta.get("required", False),
                                default=argparse.SUPPRESS, help=text, **many)


def _add_lst_arguments(parser: argparse.ArgumentParser) -> None:
    """--lst-NAME VALUE for each LSTConfig field the run does not set itself, with its help."""
    group = parser.add_argument_group(
        "LST settings", "each overrides one LSTConfig field (see its help); unset ones keep the "
        "--lst-preset's value")
    for f in dataclasses.fields(LSTConfig):
        if f.name in LST_SET_BY_RUN:
            continue
        group.add_argument(f"--lst-{f.name.replace('_', '-')}", dest=f"lst.{f.name}",
                           type=_lst_value_type(f), default=argparse.SUPPRESS,
                           metavar=_lst_metavar(f), help=_lst_help(f).replace("%", "%%"))


def _lst_help(f: dataclasses.Field) -> str:
    """An LSTConfig field's help, with its default (the 'paper' preset may choose another)."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    shown = ("none" if default is None else str(default).lower() if isinstance(default, bool)
             else ",".join(map(str, default)) if isinstance(default, list) else default)
    return f"{f.metadata['help']} (default: {shown})"


def _lst_value_type(f: dataclasses.Field):
    kind = str(f.type)
    if kind.startswith("list"):
        return _layer_list
    if kind == "bool":
        return _boolean
    return _value_type(f)


def _lst_metavar(f: dataclasses.Field) -> str:
    kind = str(f.type)
    return {"bool": "true|false", "int": "N", "float": "X"}.get(
        kind, "I,J,..." if kind.startswith("list") else "VALUE")


def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer "
                                         "numbers, e.g. 1,2,3") from None


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _value_type(f: dataclasses.Field):
    kind = str(f.type)
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def explicit_values(args: argparse.Namespace, config_class) -> dict:
    """The fields the user set on the command line (others are absent from `args`); the
    --lst-* flags are gathered into the `lst` dict."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in vars(args).items() if k in names}
    lst = {k[len("lst."):]: v for k, v in vars(args).items() if k.startswith("lst.")}
    if lst and "lst" in names:
        values["lst"] = lst
    return values
