"""The training loop, in three steps: setup -> epochs -> finish. `train`, `demo` and `bench` all
run it; a benchmark measures what users run, never a private copy.

    setup    decide where to write (nothing written yet), load and check the data, load the
             model and build the method, refuse a --max-length the model cannot take; then write
             run.json and, when resuming, restore the checkpoint. The task (`tasks.py`:
             classify, or generate) decides the data pipeline, the model's head and the eval
    epoch    the batches of a permutation fixed by (seed, epoch); each step is `train_step`:
             forward, backward, clip the gradient norm, AdamW, the linear schedule (with
             --grad-accum-steps K, K micro-batches `accumulate` their gradients first). An eval
             every --eval-every steps, a checkpoint every --save-every steps (and after each
             eval), and at the epoch end an eval and a checkpoint
    finish   save what the method trained (with --early-stopping-patience, the weights of the
             best eval), metrics.json (last: it marks the run finished), report.md and
             figures; an overwrite is swapped into place only now

Early stopping judges every eval by the task's `best_metric` (or --metric-for-best); the run
stops once --early-stopping-patience evals in a row have not beaten the best, whose weights are
kept beside the checkpoint and saved at the end. Its counters live in the checkpoint's
TrainState, so a resumed run stops where the uninterrupted one would.

A resumed CPU run ends with the same weights and metrics as an uninterrupted one: the data
order depends only on (seed, epoch), the checkpoint holds every RNG, and the batches already
done are skipped. (accelerate's `skip_first_batches` would need a DataLoader, and its
`save_state` pickles; a list of batches is sliced instead.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones import max_positions
from ..cache import (
    StateCache,
    cache_key,
    default_root,
    example_lengths,
    examples_digest,
    free_bytes,
)
from ..checkpoint import check_fingerprint, load_weights, save_json, save_weights, sha256_file
from ..errors import BackboneMismatchError, LSTError
from .aliases import (
    ModelSource,
    backbone_signature,
    load_backbone,
    load_config,
    load_tokenizer,
    resolve_model,
)
from .data import Encoded, collate
from .memory import (
    current_rss_mb,
    library_rss_mb,
    peak_memory_mb,
    peak_rss_mb,
    reference_account,
    reset_peak_rss,
)
from .methods import count_parameters, get_method, save_trained, trainable_parameters
from .options import DEFAULT_MAX_LENGTH, TrainConfig, UsageError
from .plan import plan_line
from .report import plot_confusion_matrix, plot_learning_curve, write_report
from .run_folder import Destination, data_digests
from .runtime import EpochProgress, Processes, local_rank, pick_device
from .state import BEST_FILE, TrainState, load_checkpoint, save_checkpoint, trained_state
from .tasks import TASKS, Task, make_task

LOWER_IS_BETTER = ("loss",)   # eval scores where less is better; higher is, for the others


class TrainingDiverged(LSTError):
    """The loss or the gradient became NaN or infinite."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with what the user can do next."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


# ---- one optimizer step, the same for every caller ----------------------------------------------

def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Steps of linear warm-up: a ratio asked for is at least one step (a short run's
    int(0.1 * 8) would otherwise be 0), and never more than the run has."""
    if warmup_ratio <= 0:
        return 0
    return min(max(1, int(warmup_ratio * total_steps)), max(total_steps, 1))


class Optimization:
    """AdamW over the method's trainable parameters, a linear warm-up then linear decay to 0,
    and gradient-norm clipping.

    An LST model names its own parameter groups (`LSTModel.parameter_groups`, e.g. no weight
    decay on the gates); the baselines decay every trainable parameter alike.
    """

    def __init__(self, model, lr: float, total_steps: int, warmup_ratio: float = 0.1,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        # here: transformers' optimization module imports peft, seconds at CLI start-up
        from transformers import get_linear_schedule_with_warmup
        self.params = trainable_parameters(model)
        groups = (model.parameter_groups(weight_decay) if hasattr(model, "parameter_groups")
                  else [{"params": self.params, "weight_decay": weight_decay}])
        self.optimizer = torch.optim.AdamW(groups, lr=lr)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, warmup_steps(warmup_ratio, total_steps), total_steps)
        self.max_grad_norm = max_grad_norm

    def step(self) -> float:
        """Clip, step and clear the gradients backward has left; returns the gradient norm."""
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if math.isfinite(norm):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


def train_step(model, batch: dict, optimization: Optimization, loss_weight: float = 1.0
               ) -> tuple[float, float]:
    """Forward, backward and one optimizer step: (loss, gradient norm). The gradient is that
    of the loss times `loss_weight` (a rank's share of a batch, `rank_shard`, and a micro-batch's
    share of an accumulated step); the loss returned is not weighted. A non-finite gradient
    norm leaves the weights as they were (the caller decides what to do about it)."""
    loss = accumulate(model, batch, loss_weight)
    return loss, optimization.step()


def accumulate(model, batch: dict, loss_weight: float = 1.0) -> float:
    """Forward and backward: adds the gradient of the loss times `loss_weight` to the
    parameters' gradients, for a later optimizer step; returns the loss, not weighted.

    Gradient accumulation: the micro-batches of one step weighted by their shares of the
    step's loss terms (examples, or target tokens: `Task.loss_terms`) sum to the gradient of
    the mean loss over all of them, as one batch of them all would give."""
    loss = model(**batch).loss
    (loss if loss_weight == 1.0 else loss * loss_weight).backward()
    return loss.item()


def rank_shard(indices: list[int], rank: int, world_size: int) -> tuple[list[int], float]:
    """This rank's examples of the batch at `indices`, and the weight of its loss.

    Every rank sees the same batches and takes every `world_size`-th example. DDP averages the
    ranks' gradients, and each rank's loss is the mean over its own examples; weighting that
    loss by its share of the batch (examples here x world_size / examples in the batch) makes
    the average the gradient of the whole batch's mean loss, also when the shares differ (a
    last batch that does not divide evenly). A rank left without an example (a last batch
    smaller than the world) must still join DDP's all-reduce, or every rank waits forever: it
    runs the batch's first example at weight 0, adding nothing to the gradient.
    """
    shard = indices[rank::world_size]
    if not shard:
        return indices[:1], 0.0
    return shard, len(shard) * world_size / len(indices)


class BackboneStates:
    """The frozen backbone's states for an LST batch: read from a complete cache, else computed
    (and added to the cache, when there is one). `seconds` counts the backbone's own time."""

    def __init__(self, model, cache: StateCache | None, pad_token_id: int,
                 batch_size: int, collate=collate):
        self.model, self.cache = model, cache
        self.pad, self.batch_size, self.collate = pad_token_id, batch_size, collate
        self.seconds = 0.0

    def __call__(self, indices: list[int], batch: dict) -> tuple:
        device = batch["input_ids"].device
        if self.cache is not None and self.cache.complete:
            return self.cache.read(indices, device)
        tick = time.perf_counter()
        inputs = {k: v for k, v in batch.items() if k != "backbone_hidden_states"}
        states = self.model.backbone_states(**inputs)
        self.seconds += time.perf_counter() - tick
        if self.cache is not None:
            self.cache.add(indices, states, example_lengths(self.model, inputs))
        return states

    def end_of_pass(self, encoded: Encoded) -> None:
        """After a pass over `encoded`: store what a resumed run skipped, mark complete."""
        if self.cache is None or self.cache.complete:
            return
        device = next(self.model.parameters()).device
        missing = self.cache.missing()
        for start in range(0, len(missing), self.batch_size):
            indices = missing[start:start + self.batch_size]
            batch = {k: v.to(device) for k, v in self.collate(encoded, indices, self.pad).items()}
            self(indices, batch)
        self.cache.flush()


def open_cache(model, encoded: Encoded, cfg: TrainConfig, log, what: str) -> StateCache:
    """The cache of `model`'s backbone states over `encoded`, after saying what it will take.

    Raises:
        UsageError: the disk cannot hold it.
    """
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_root()
    digest = examples_digest(getattr(encoded, "cache_ids", encoded.input_ids),
                             getattr(encoded, "token_type_ids", None))
    key = cache_key(model, digest, cfg.cache_dtype)
    cache = StateCache(root, key, len(encoded))
    if cache.complete:
        log(f"reading the {what} set's backbone states from {cache.folder}")
        return cache
    lengths = [len(ids) for ids in encoded.input_ids]
    needed = cache.bytes_needed([lengths] * len(model.stacks), model.width)
    free = free_bytes(root)
    log(f"caching the {what} set's backbone states: {len(cache.missing())} examples, "
        f"{needed / 2**20:,.1f} MiB ({cfg.cache_dtype}) in {cache.folder}")
    if needed > free:
        raise UsageError(f"caching the {what} set's backbone states needs {needed / 2**20:,.0f}"
                         f" MiB but {root} has {free / 2**20:,.0f} MiB free; free some space, "
                         "pass another --cache-dir, or --cache-dtype float16")
    return cache


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), cut into batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    order = order.tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(backbone, cfg: TrainConfig, task, init_data=None):
    """The model `cfg.method` trains on `backbone` (freshly loaded; the method may own it) for
    `task`. `init_data`, the training set, is what LST's Fisher pruning ranks weights on."""
    method = get_method(cfg.method)
    examples = single_examples(init_data, task.collate) if init_data is not None else None
    return method.build(backbone, method.settings(cfg, task.task_type, task.num_labels, examples))


def fit_max_length(backbone, max_length: int | None, model_name: str, tokenizer) -> int:
    """--max-length as given, refused beyond the backbone's learned positions or below what
    the tokenizer's special tokens take; when not given, `DEFAULT_MAX_LENGTH` or the
    backbone's limit, whichever is smaller."""
    limit = max_positions(backbone)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
    shortest = tokenizer.num_special_tokens_to_add() + 1
    if max_length < shortest:
        raise UsageError(f"--max-length {max_length} leaves no room for text: {model_name}'s "
                         f"tokenizer adds {shortest - 1} special tokens; pass --max-length "
                         f"{shortest} or more")
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length} exceeds the {limit} positions {model_name} "
                         f"was trained with; pass --max-length {limit} or less")
    return max_length


def single_examples(encoded, collate_fn=collate):
    """Each example as a batch of one, with its label, in order."""
    for i in range(len(encoded)):
        yield collate_fn(encoded, [i], 0)   # one row: nothing to pad


def import_runtime(source: ModelSource) -> None:
    """Import now what a run imports later anyway, so that the runtime measured before the model
    loads holds it: the evaluation's metrics (sklearn.metrics, ~130 MiB of RSS), and what
    loading imports (accelerate, the model's own code: ~20 MiB)."""
    import importlib
    for name in ("sklearn.metrics", "accelerate"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING
    with contextlib.suppress(Exception):   # unknown to the mapping: its code loads with it
        MODEL_MAPPING[type(load_config(source))]


# ---- the recipe ---------------------------------------------------------------------------------

@dataclass
class RunData:
    """What a run loads before its model, shared by the runs of a sweep: the task with its data
    tokenized at the fitted --max-length, the tokenizer and the backbone's fingerprint."""

    task: Task
    source: ModelSource
    tokenizer: object
    fingerprint: dict
    max_length: int            # --max-length fitted to the backbone (run.json records it)
    train_set: Encoded
    eval_set: Encoded
    rss_before_model_mb: float           # the runtime: the process before the model loads
    library_before_model_mb: float | None    # the shared libraries' pages in it


class TrainingRun:
    """One `laddertune train`: `setup()`, then `run_epoch(e)` for each remaining epoch, then
    `finish()`. `train(cfg)` does all three; the demo and the bench call the steps they need.

    Several runs can train on one loaded backbone (a sweep, the demo's comparison): the first
    `load()`s it, the others `share_data(first)`; each then `build(backbone)`s its own model,
    and runs whose models read the backbone's states may `share_backbone_states(first)`.
    """

    def __init__(self, cfg: TrainConfig, log=print):
        self.cfg, self.log = cfg, log
        self.method = get_method(cfg.method)
        self.device = pick_device(cfg.device, local_rank())
        self.processes = Processes(self.device)
        self.destination = None
        task = TASKS[cfg.task]
        self.best_metric = cfg.metric_for_best or task.best_metric
        if self.best_metric not in task.headline:
            raise UsageError(f"--metric-for-best {self.best_metric} is not a --task {cfg.task} "
                             f"eval score; use one of {', '.join(task.headline)}")
        self.best_weights = None    # early stopping: the trained tensors of the best eval

    # the loaded data, by name
    task = property(lambda self: self.data.task)
    labels = property(lambda self: self.data.task.labels)
    tokenizer = property(lambda self: self.data.tokenizer)
    pad = property(lambda self: self.data.tokenizer.pad_token_id)
    train_set = property(lambda self: self.data.train_set)
    eval_set = property(lambda self: self.data.eval_set)
    max_length = property(lambda self: self.data.max_length)

    # ---- setup ----------------------------------------------------------------------------------

    def setup(self, write: bool = True) -> TrainingRun:
        """Everything before the first step. With `write=False` (demo, bench) no folder is
        touched: the run only builds its data, model and optimizer."""
        if write:
            self.open_destination()
        return self.build(self.load(), write)

    def open_destination(self) -> None:
        """Decide where the run writes, and check that it may (nothing is written yet).

        Raises:
            UsageError: --output holds another run, or --resume finds nothing to continue.
        """
        self.destination = Destination(self.cfg, self.processes.is_main)

    def load(self, as_dtype: str | None = None):
        """The data, tokenized, and the pretrained backbone (returned) the model is built on,
        stored as `as_dtype` when given (else as `_load_as` says)."""
        cfg = self.cfg
        task = make_task(cfg)
        task.read(cfg)                             # the data, checked before any model loads
        source = resolve_model(cfg.model, cfg.revision)
        tokenizer = load_tokenizer(source)
        seed_everything(cfg.seed)
        # The runtime, measured here, is all that does not depend on the model's size
        import_runtime(source)
        rss_before_model_mb, library_before_model_mb = current_rss_mb(), library_rss_mb()
        backbone = load_backbone(source, tokenizer.pad_token_id, task.head(self.method),
                                 len(task.labels), as_dtype or self._load_as(), self.device)
        fingerprint = backbone_signature(backbone)
        self._check_same_backbone(fingerprint)
        max_length = fit_max_length(backbone, cfg.max_length, cfg.model, tokenizer)
        train_set, eval_set = task.prepare(backbone, tokenizer, cfg, max_length)
        planned = plan_line(cfg, backbone.config, max_length, len(task.labels), task.task_type,
                            self.device, train_set, eval_set)
        if planned and self.processes.is_main:
            self.log(planned)
        self.data = RunData(task, source, tokenizer, fingerprint, max_length, train_set,
                            eval_set, rss_before_model_mb, library_before_model_mb)
        return backbone

    def share_data(self, lead: TrainingRun) -> None:
        """Take `lead`'s loaded data and tokenizer instead of loading them again.

        Raises:
            UsageError: this run resumes one that started on another backbone.
        """
        self._check_same_backbone(lead.data.fingerprint)
        self.data = lead.data

    def share_backbone_states(self, lead: TrainingRun) -> None:
        """Read the backbone's states through `lead`'s (built) run: computed or read from its
        cache once per batch for both."""
        self.train_states, self.eval_states = lead.train_states, lead.eval_states

    def state_source(self):
        """What computes the frozen states this run reads as given: the model (LST, the probe),
        the layers below the top K (`--top-layers K --cache-backbone`), or None: the model runs
        its backbone itself (the late route runs the backbone's top layers on each call)."""
        if self.method.reads_backbone_states:
            return self.model if getattr(self.model, "reads_given_states", True) else None
        if not (self.cfg.cache_backbone and self.cfg.top_layers is not None):
            return None
        from . import top_layers
        if not top_layers.restricts(top_layers.base_model(self.model), self.cfg.top_layers):
            raise UsageError(f"--top-layers {self.cfg.top_layers} is every layer of this model: "
                             "nothing below is frozen to cache; drop --cache-backbone or pass a "
                             "smaller K")
        top_layers.replay_cached_states(self.model, self.cfg.top_layers)
        return top_layers.BelowTopLayers(self.model, self.cfg.top_layers)

    def build(self, backbone, write: bool = True) -> TrainingRun:
        """The model on `backbone`, its optimizer and, with `write`, the run folder."""
        cfg = self.cfg
        self._check_same_compute_dtype()
        self.model = build_model(backbone, cfg, self.task, self.train_set)
        self.model.to(self.device).train()
        self.train_states = self.eval_states = None
        self.source = source = self.state_source()
        if source is not None:
            if cfg.cache_backbone and self.processes.world_size > 1:
                raise UsageError("--cache-backbone runs in one process; drop it under torchrun "
                                 "or train on one device")
            caches = ((open_cache(source, self.train_set, cfg, self.log, "training"),
                       open_cache(source, self.eval_set, cfg, self.log, "eval"))
                      if cfg.cache_backbone else (None, None))
            self.train_states, self.eval_states = (
                BackboneStates(source, cache, self.pad, cfg.eval_batch_size,
                               self.task.collate) for cache in caches)
        self.trainable, self.total = count_parameters(self.model)
        # optimizer steps: each takes --grad-accum-steps micro-batches (the last, what is left)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_set) / cfg.batch_size)
                                         / cfg.grad_accum_steps)
        self.optimization = Optimization(
            self.model, cfg.lr, self.steps_per_epoch * cfg.epochs, cfg.warmup_ratio,
            cfg.weight_decay, cfg.max_grad_norm)
        self.state = TrainState()
        self.fit_record = None             # what a full-batch method's fit reports (fit_whole)
        self._backbone_before = 0.0        # backbone seconds of the run before a resume
        self.stepper = self.processes.wrap(self.model, self.device)
        self.writer = None
        if write:
            self._start_folder()
        # the CPU peak of training itself, from here: the model and its optimizer are built
        self.rss_built_mb = current_rss_mb()
        self.peak_rss_reset = self.device.type == "cpu" and reset_peak_rss()
        self.training_peak_mb = None
        return self

    def _training_peak(self) -> float | None:
        """The CPU peak of the training steps so far, less the built model (see `finish`)."""
        if not self.peak_rss_reset:
            return None
        now = peak_rss_mb() - self.rss_built_mb
        return now if self.training_peak_mb is None else max(self.training_peak_mb, now)

    def _check_same_backbone(self, fingerprint: dict) -> None:
        """A resumed run continues on the backbone it started on."""
        if self.destination is None or not self.destination.resuming:
            return
        saved = self.destination.target.info()["backbone_fingerprint"]
        try:
            check_fingerprint(saved, fingerprint, "run")
        except BackboneMismatchError:
            raise UsageError(f"--model {self.cfg.model} is not the backbone "
                             f"{self.destination.target.path} started training on; resume with "
                             "the run's own model (see run.json) or --overwrite") from None

    def _load_as(self) -> str:
        """--backbone-dtype converts as the backbone loads unless pruning is to read the
        original weights first (then the model converts them after pruning)."""
        if not self.method.reads_lst_settings:   # LoRA: converted as it loads, head apart
            return self.cfg.backbone_dtype
        prunes = self.cfg.lst_config().side_init != "random"
        return "float32" if prunes else self.cfg.backbone_dtype

    def compute_dtype(self) -> str:
        """What the backbone computes in on this run's device (--backbone-dtype)."""
        from ..quant import compute_dtype
        return compute_dtype(self.cfg.backbone_dtype, self.device)

    def _check_same_compute_dtype(self) -> None:
        """A resumed run continues computing in the dtype it started with."""
        if self.destination is None or not self.destination.resuming:
            return
        started = self.destination.target.info().get("backbone_compute_dtype", "float32")
        if started != self.compute_dtype():
            raise UsageError(f"{self.destination.target.path} started with its backbone "
                             f"computing in {started}; on {self.device.type} here it would "
                             f"compute in {self.compute_dtype()}: resume on a machine like the "
                             "first one, or start again with --overwrite")

    def _start_folder(self) -> None:
        cfg, folder = self.cfg, self.destination.folder
        if self.destination.resuming:
            self.state = load_checkpoint(folder.checkpoint_dir, self.model,
                                         self.optimization.optimizer,
                                         self.optimization.scheduler)
            self._backbone_before = self.state.backbone_seconds or 0.0
            if self.state.best is not None and cfg.early_stopping_patience is not None:
                self.best_weights = load_weights(folder.checkpoint_dir / BEST_FILE)
            self.log(f"resuming {folder.path} at step {self.state.step}/"
                     f"{self.steps_per_epoch * cfg.epochs}")
        if self.processes.is_main:
            self.destination.prepare()
            task = self.task
            lst_settings = (cfg.lst_config(task.num_labels, task.task_type).to_dict()
                            if self.method.reads_lst_settings else None)
            source = self.data.source
            save_json({**dataclasses.asdict(cfg), "max_length": self.max_length,
                       "model_path": source.path, "gguf_file": source.gguf_file,
                       "model_commit": source.commit,
                       "labels": self.labels, "backbone_fingerprint": self.data.fingerprint,
                       "task_type": task.task_type, **task.record(),
                       "lst_settings": lst_settings, "data_sha256": data_digests(cfg),
                       "backbone_compute_dtype": self.compute_dtype()},
                      folder.run_file)
            self.log(f"{cfg.method} on {cfg.model}: {len(self.train_set)} train / "
                     f"{len(self.eval_set)} eval examples, {task.outline()}; trainable "
                     f"params {self.trainable:,} of {self.total:,} "
                     f"({100 * self.trainable / self.total:.2f}%)")
            if cfg.tensorboard:   # imported only when asked for: it takes seconds
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(folder.path / "tensorboard"))
        self.processes.barrier()

    # ---- epochs ---------------------------------------------------------------------------------

    def remaining_epochs(self):
        """The epochs still to train, one at a time: none once early stopping has ended it. A
        full-batch fit (`Method.fit`) stands in for every epoch."""
        last = 1 if self.method.fit is not None else self.cfg.epochs
        for epoch in range(self.state.epochs_done, last):
            if self.state.stopped_early:
                return
            yield epoch

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """This rank's slice of the batch at `indices` (`rank_shard`), on the device; for LST
        with the backbone's states for it (computed, or read from the cache)."""
        shard, _ = rank_shard(indices, self.processes.rank, self.processes.world_size)
        batch = {k: v.to(self.device)
                 for k, v in self.task.collate(self.train_set, shard, self.pad).items()}
        if self.train_states is not None:
            batch["backbone_hidden_states"] = self.train_states(shard, batch)
        return batch

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch (the rest of it, when resuming), checkpoint, evaluate."""
        if self.method.fit is not None:
            return self.fit_whole()
        progress = self.begin_epoch(epoch)
        for indices in progress:
            self.train_on(epoch, indices, self.batch(indices), progress)
            if self.state.stopped_early:
                break
        progress.close()
        if self.train_states is not None:
            self.train_states.end_of_pass(self.train_set)
        if self.state.stopped_early:      # the eval that stopped it is the epoch's last
            return self.end_epoch(epoch, progress, self.state.history["eval"][-1])
        return self.end_epoch(epoch, progress, self.evaluate_between_steps())

    def evaluate_between_steps(self) -> dict:
        """The eval scores now, the eval's memory peak kept apart from training's."""
        # an eval's peak (a generate run's answers, an eval batch's logits) is not training's
        self.training_peak_mb = self._training_peak()
        scores = self.evaluate()
        if self.peak_rss_reset:
            reset_peak_rss()
        if not math.isfinite(scores.get("loss", 0.0)):   # the last step's update broke the weights
            raise TrainingDiverged(
                f"training diverged at step {self.state.step}: the eval loss is "
                f"{scores['loss']}; lower --lr (now {self.cfg.lr:g}) or check the data; no "
                "model was saved")
        return scores

    def fit_whole(self) -> dict:
        """A full-batch method's one fit (`Method.fit`, e.g. the probe's), then an eval; its
        record goes into metrics.json as "fit"."""
        tick = time.perf_counter()
        self.fit_record = self.method.fit(self)
        self.state.train_seconds = time.perf_counter() - tick
        scores = self.evaluate()
        self.state.history["eval"].append({"epoch": 1, "step": 0, **scores})
        self.state.epochs_done = 1
        if self.train_states is not None:
            self.state.backbone_seconds = round(self.train_states.seconds
                                                + self.eval_states.seconds, 3)
        if self.processes.is_main:
            self.log(f"fitted {self.cfg.method} in {self.state.train_seconds:.1f} s, eval "
                     f"{self.task.describe(scores)}")
        return scores

    def begin_epoch(self, epoch: int, show: bool = True) -> EpochProgress:
        """The epoch's batches still to do, as a progress display to iterate."""
        cfg, state = self.cfg, self.state
        # training time carries over a resume: the clock starts where the checkpoint left it
        self._clock = time.perf_counter() - state.train_seconds
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, epoch)
        done = state.step - epoch * self.steps_per_epoch
        if done == 0:
            state.epoch_started = state.train_seconds
        # the micro-batches of each optimizer step, and the loss terms of the step's whole
        # batch, each micro-batch's loss weighted by its share of them
        k = cfg.grad_accum_steps
        self._step_terms = [sum(self.task.loss_terms(self.train_set, b) for b in batches[i:i + k])
                            for i in range(0, len(batches), k)]
        self._micro_batches, self._micro_done = len(batches), done * k
        self._step_loss = 0.0
        return EpochProgress(batches, done * k, epoch, cfg.epochs,
                             show and cfg.progress and self.processes.is_main)

    def train_on(self, epoch: int, indices: list[int], batch: dict,
                 progress: EpochProgress) -> None:
        """`batch` (the examples at `indices`), one micro-batch of an optimizer step: its
        share of the step's gradient; after the step's last, the step and its bookkeeping."""
        cfg, state = self.cfg, self.state
        tick = time.perf_counter()
        _, weight = rank_shard(indices, self.processes.rank, self.processes.world_size)
        position = self._micro_done
        self._micro_done += 1
        share = (self.task.loss_terms(self.train_set, indices)
                 / self._step_terms[position // cfg.grad_accum_steps])
        if self._micro_done % cfg.grad_accum_steps and self._micro_done < self._micro_batches:
            micro_loss = accumulate(self.stepper, batch, weight * share)
            self._step_loss += share * micro_loss
            state.step_seconds += time.perf_counter() - tick
            progress.update(len(indices), micro_loss, self._memory_mb())
            return
        micro_loss, norm = train_step(self.stepper, batch, self.optimization, weight * share)
        loss, self._step_loss = self._step_loss + share * micro_loss, 0.0
        state.step_seconds += time.perf_counter() - tick
        state.step += 1
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self._diverged(loss, norm, epoch)
        state.history["train_loss"].append((state.step, round(loss, 6)))
        progress.update(len(indices), micro_loss, self._memory_mb())
        if self.writer:
            self.writer.add_scalar("train/loss", loss, state.step)
            self.writer.add_scalar("train/lr", self.optimization.scheduler.get_last_lr()[0],
                                   state.step)
        if state.step % self.steps_per_epoch == 0:
            return                        # the epoch's end evaluates and checkpoints
        evaluate = cfg.eval_every is not None and state.step % cfg.eval_every == 0
        if evaluate:
            scores = self.record_eval(epoch, self.evaluate_between_steps())
            if self.processes.is_main:
                self.log(f"step {state.step}: eval {self.task.describe(scores)}")
        if evaluate or state.step % cfg.save_every == 0:
            state.train_seconds = time.perf_counter() - self._clock
            self._checkpoint()

    def record_eval(self, epoch: int, scores: dict) -> dict:
        """Add `scores`, the eval after this step, to the history (once per step)."""
        state, evals = self.state, self.state.history["eval"]
        if evals and evals[-1]["step"] == state.step:
            return scores
        at_end = state.step == (epoch + 1) * self.steps_per_epoch
        evals.append({"epoch": epoch + 1 if at_end else round(state.step / self.steps_per_epoch, 3),
                      "step": state.step, **scores})
        if self.writer:
            for key in self.task.headline:
                self.writer.add_scalar(f"eval/{key}", scores[key], state.step)
        self._judge(evals[-1])
        return scores

    def _judge(self, entry: dict) -> None:
        """Early stopping's bookkeeping after the eval `entry`: a new best (its weights kept
        when early stopping), or one more eval without one, which may end the run."""
        state, name, patience = self.state, self.best_metric, self.cfg.early_stopping_patience
        best = state.best
        if best is None or (entry[name] < best["value"] if name in LOWER_IS_BETTER
                            else entry[name] > best["value"]):
            state.best = {"metric": name, "value": entry[name], "step": entry["step"],
                          "epoch": entry["epoch"]}
            state.evals_since_best = 0
            if patience is not None:
                self._keep_best()
        else:
            state.evals_since_best += 1
        if patience is not None and state.evals_since_best >= patience:
            state.stopped_early = True

    def _keep_best(self) -> None:
        """The trained tensors now, kept as the best; beside the checkpoint, for a resume."""
        self.best_weights = trained_state(self.model)
        if self.destination is not None and self.processes.is_main:
            save_weights(self.best_weights, self.destination.folder.checkpoint_dir / BEST_FILE)

    def end_epoch(self, epoch: int, progress: EpochProgress, scores: dict) -> dict:
        """Record the epoch's eval `scores`, checkpoint, say how it went."""
        cfg, state = self.cfg, self.state
        self.record_eval(epoch, scores)
        state.train_seconds = time.perf_counter() - self._clock
        state.epoch_seconds.append(round(state.train_seconds - state.epoch_started, 3))
        state.epochs_done = epoch + 1
        self._checkpoint()
        if self.processes.is_main:
            self.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {progress.mean_loss():.4f}, "
                     f"{progress.rate():.1f} examples/s, eval {self.task.describe(scores)}")
            best = state.best
            if state.stopped_early:
                self.log(f"early stopping at step {state.step}: "
                         f"{cfg.early_stopping_patience} evals without a better "
                         f"{best['metric']} than {best['value']:.4f} (step {best['step']})")
        return scores

    def _checkpoint(self) -> None:
        if self.train_states is not None:
            self.state.backbone_seconds = round(
                self._backbone_before + self.train_states.seconds + self.eval_states.seconds, 3)
        if self.destination is not None and self.processes.is_main:
            save_checkpoint(self.destination.folder.checkpoint_dir, self.model,
                            self.optimization.optimizer, self.optimization.scheduler, self.state)

    def _diverged(self, loss: float, norm: float, epoch: int) -> None:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        raise TrainingDiverged(
            f"training diverged at step {self.state.step} (epoch {epoch + 1}): the {what}; lower "
            f"--lr (now {self.cfg.lr:g}) or check the data; no model was saved")

    def _training_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return peak_memory_mb(self.device)
        return peak_memory_mb(self.device) - self.data.rss_before_model_mb

    def _runtime_figures(self) -> dict:
        if self.device.type == "cuda":
            return {}
        code = self._runtime_code_mb()
        above = None if code is None else round(self._training_memory_mb() - code, 1)
        return {"runtime_rss_mb": round(self.data.rss_before_model_mb, 1),
                "runtime_code_paged_in_mb": None if code is None else round(code, 1),
                "peak_above_runtime_mb": above}

    def _runtime_code_mb(self) -> float | None:
        """CPU: the shared libraries' pages the run has paged in since the model began to load
        (kernels first run by a backward pass, an optimizer, an eval): the runtime's code."""
        now, before = library_rss_mb(), self.data.library_before_model_mb
        if self.device.type == "cuda" or now is None or before is None:
            return None
        return max(now - before, 0.0)

    def _memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return current_rss_mb()

    def evaluate_together(self, runs: list[TrainingRun]) -> list[dict]:
        """The eval scores of each of `runs` (sharing this run's data and backbone states), from
        one pass over the eval set: each batch's backbone states serve every model."""
        return self.task.evaluate_together([run.model for run in runs], self.eval_set,
                                           self.pad, self.cfg.eval_batch_size, self.device,
                                           self.eval_states)

    def evaluate(self, encoded: Encoded | None = None) -> dict:
        """The task's scores of the model on `encoded` (the eval set by default)."""
        states = self.eval_states if encoded is None else None
        encoded = encoded or self.eval_set
        return self.task.evaluate(self.model, encoded, self.pad, self.cfg.eval_batch_size,
                                  self.device, states)

    # ---- finish ---------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Save the trained model, metrics, report and figures; returns the metrics."""
        cfg, state = self.cfg, self.state
        final_eval = state.history["eval"][-1] if state.history["eval"] else {}
        if self.best_weights is not None:     # early stopping: the run is its best eval's
            self.model.load_state_dict(self.best_weights, strict=False)
            final_eval = next(e for e in state.history["eval"] if e["step"] == state.best["step"])
        weights_sha = hashlib.sha256(b"".join(
            p.detach().cpu().contiguous().numpy().tobytes()
            for p in trainable_parameters(self.model))).hexdigest()
        metrics = {
            "eval": final_eval,
            "best": state.best,
            "stopped_early": state.stopped_early,
            "train_seconds": round(state.train_seconds, 2),
            "epoch_seconds": state.epoch_seconds,
            "backbone_seconds": state.backbone_seconds,
            # the mean optimizer step (forward, backward, update), without evals and checkpoints
            "step_seconds": round(state.step_seconds / max(state.step, 1), 4),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            # what training itself took: the peak less what the process held before the model
            # was loaded (Python, torch, the data); on a GPU the allocator's peak
            "training_memory_mb": round(self._training_memory_mb(), 1),
            # CPU: the runtime that figure is measured above (the RSS before the model loaded:
            # Python, torch, the libraries, the tokenizer, the data), and the code the run paged
            # in since; the peak above both is what `laddertune plan` predicts
            **self._runtime_figures(),
            # CPU: the peak of the training steps less what the process held once the model
            # was built (gradients, optimizer state, activations); loading and evals excluded
            "training_peak_rss_mb": (None if not self.peak_rss_reset else round(
                self.training_peak_mb if self.training_peak_mb is not None
                else self._training_peak(), 1)),
            # bytes one step keeps at one shape for every method (--account-shape), anywhere
            "memory_account": reference_account(self.model, cfg.account_batch_shape, self.task,
                                                self.tokenizer),
            "trainable_params": self.trainable,
            "all_params": self.total,
            "task": cfg.task,
            "method": cfg.method,
            "top_layers": cfg.top_layers,
            "model": cfg.model,
            "labels": self.labels,
            "train_data": cfg.train,
            "train_examples": len(self.train_set),
            "epochs": cfg.epochs,
            "steps": state.step,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "device": str(self.device),
            "truncated": {"train": self.train_set.truncated, "eval": self.eval_set.truncated,
                          "max_length": self.max_length},
            "world_size": self.processes.world_size,
            "weights_sha256_per_rank": self.processes.gather(weights_sha),
            "history": state.history,
        }
        if self.fit_record is not None:
            metrics["fit"] = self.fit_record
        if self.destination is not None and self.processes.is_main:
            folder = self.destination.folder
            written = save_trained(self.model, cfg.method, folder.path)
            metrics["model_files_sha256"] = {p.name: sha256_file(p) for p in written}
            plot_learning_curve(state.history, folder.path / "learning_curve.png",
                                self.task.headline[:-1])
            if "confusion_matrix" in metrics["eval"]:
                plot_confusion_matrix(metrics["eval"], folder.path / "confusion_matrix.png")
            write_report(folder.path, metrics)
            save_json(metrics, folder.metrics_file)       # last: it marks the run finished
            self.destination.commit()
            self.log(f"saved {self.destination.target.path} (eval "
                     f"{self.task.describe(metrics['eval'])}, {metrics['train_seconds']:.0f} s)")
        if self.writer:
            self.writer.close()
        self.processes.barrier()
        return metrics


def train(cfg: TrainConfig, log=print) -> dict:
    """Train `cfg.method` on `cfg.train`, write the run folder, return its metrics."""
    run = TrainingRun(cfg, log)
    try:
        run.setup()
        for epoch in run.remaining_epochs():
            run.run_epoch(epoch)
        return run.finish()
    except KeyboardInterrupt:
        raise RunInterrupted(_after_interrupt(run, cfg)) from None
    except TrainingDiverged:
        run.destination.abandon()
        raise
    finally:
        if getattr(run, "destination", None) is not None:
            run.destination.close()


def _after_interrupt(run: TrainingRun, cfg: TrainConfig) -> str:
    """Clean up after Ctrl-C, and say what the user can do next."""
    destination = getattr(run, "destination", None)
    if destination is None:
        return "interrupted before anything was written"
    if destination.is_overwrite:
        destination.abandon()
        return (f"interrupted; {destination.target.path} still holds the old run, unchanged "
                "(run the --overwrite again to replace it)")
    if destination.folder.is_finished():
        return f"interrupted after the run finished; {destination.target.path} is complete"
    if not destination.folder.has_checkpoint():
        destination.abandon()
        return "interrupted before the first checkpoint, so nothing was kept; run the same " \
               "command again"
    return (f"interrupted; continue later with the same command and --resume (the last "
            f"checkpoint is in {destination.folder.checkpoint_dir})")
