"""One training loop for every method (LST and the baselines); checkpoints survive kill -9.

The loop: AdamW over the method's trainable parameters, a linear schedule with warm-up, a fixed
data order per (seed, epoch). Every `save_every` steps and at each epoch end it writes
``checkpoint/state.safetensors`` atomically (temp file, then rename): trained weights, optimizer,
scheduler, every RNG state and the step. `--resume` reloads it and skips the batches already
done, so a resumed CPU run ends with the same weights and metrics as an uninterrupted one.

Launched by ``torchrun``, it trains with DistributedDataParallel (gloo on CPU): every rank sees
the same batch order and takes its slice of each batch; only rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import (
    backbone_fingerprint,
    check_fingerprint,
    load_json,
    load_weights,
    save_json,
    save_weights,
)
from ..errors import BackboneMismatchError, CheckpointError, DataError
from .aliases import ModelSource, load_backbone, load_tokenizer, resolve_model
from .data import BBC_NEWS, Encoded, collate, label_names, load_train_eval, tokenize
from .memory import current_rss_mb, peak_memory_mb
from .methods import (
    DEFAULT_LR,
    METHODS,
    build_method,
    count_parameters,
    load_trained,
    save_trained,
    trainable_parameters,
)
from .report import classification_metrics, plot_learning_curve, write_report

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.safetensors"


@dataclass
class TrainConfig:
    """What `laddertune train` was asked to do (the CLI flags, one field each)."""

    model: str = "minilm"               # alias (minilm, smollm2) or a local model folder
    train: str = BBC_NEWS               # data file or "bbc-news"
    eval: str | None = None             # eval file; None holds out a stratified 20%
    text_column: str = "text"
    label_column: str = "label"
    method: str = "lst"                 # lst | full | lora | bitfit | prompt
    epochs: int = 3
    batch_size: int = 16
    lr: float | None = None             # None: the method's default (methods.DEFAULT_LR)
    max_length: int = 256               # longer texts are truncated, and counted
    seed: int = 0
    output: str = "runs/default"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"                # auto | cpu | cuda
    save_every: int = 50                # steps between checkpoints (and one per epoch end)
    warmup_ratio: float = 0.1           # share of all steps spent warming the LR up
    reduction_factor: int = 8           # LST: the side network is r times narrower
    eval_batch_size: int = 64
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise DataError(f"--method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        for name in ("epochs", "batch_size", "max_length", "save_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(self, name)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.lr <= 0:
            raise DataError(f"--lr must be > 0, got {self.lr}")


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0                  # optimizer steps done
    epochs_done: int = 0
    train_seconds: float = 0.0
    history: dict = field(default_factory=lambda: {"train_loss": [], "eval": []})


# ---- distributed --------------------------------------------------------------------------------

@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> Distributed:
        """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def gather(self, value) -> list:
        if self.world_size == 1:
            return [value]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out


# ---- building models ----------------------------------------------------------------------------

def build_model(source: ModelSource, method: str, num_labels: int, pad_token_id: int,
                reduction_factor: int = 8):
    """A fresh model for `method` and the fingerprint of its pretrained backbone."""
    from ..config import LSTConfig
    backbone = load_backbone(source, num_labels, pad_token_id, bare=method == "lst")
    fingerprint = backbone_signature(backbone)
    lst_config = LSTConfig(task_type="SEQ_CLS", num_labels=num_labels,
                           reduction_factor=reduction_factor) if method == "lst" else None
    model = build_method(method, backbone, "SEQ_CLS", num_labels, lst_config=lst_config)
    return model, fingerprint


def backbone_signature(backbone) -> dict:
    """The fingerprint of the backbone's base model (the same with or without a task head)."""
    base = backbone.base_model
    return backbone_fingerprint(base.config, [base])


def same_backbone(saved: dict, current: dict) -> bool:
    try:
        check_fingerprint(saved, current, "run")
    except BackboneMismatchError:
        return False
    return True


def load_run(run_dir: str | Path, device: str = "auto", model: str | None = None):
    """(model, tokenizer, run info) rebuilt from a `laddertune train` output folder.

    Raises:
        CheckpointError: the folder is not a finished run.
        BackboneMismatchError: `model` (or the backbone run.json names) is not the one trained.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise CheckpointError(f"{run_dir} holds no {RUN_FILE}; pass the --output folder of "
                              "a finished `laddertune train`")
    info = load_json(run_dir / RUN_FILE)
    if not (run_dir / METRICS_FILE).is_file():
        raise CheckpointError(f"{run_dir} is an unfinished run; finish it with `laddertune "
                              "train ... --resume` first")
    name = model or info["model"]
    source = resolve_model(name if name in ("minilm", "smollm2") or model else info["model_path"])
    tokenizer = load_tokenizer(source)
    method, labels = info["method"], info["labels"]
    backbone = load_backbone(source, len(labels), tokenizer.pad_token_id, bare=method == "lst")
    if not same_backbone(info["backbone_fingerprint"], backbone_signature(backbone)):
        raise BackboneMismatchError(
            f"{run_dir} was trained on another backbone than the {name!r} loaded now (its weights "
            f"or config differ); pass --model with the model it was trained on")
    trained = load_trained(backbone, method, run_dir)
    return trained.to(pick_device(device)).eval(), tokenizer, info


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is visible; use --device "
                        "cpu or auto")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# ---- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def predict_probs(model, encoded: Encoded, pad_token_id: int, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """Class probabilities of every example, in order: (n, num_labels)."""
    was_training = model.training
    model.eval()
    probs = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded, range(start, min(start + batch_size, len(encoded))),
                        pad_token_id)
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (b, num_labels)
        probs.append(torch.softmax(logits.float(), -1).cpu())
    model.train(was_training)
    return torch.cat(probs)


# ---- checkpoints --------------------------------------------------------------------------------

def _trained_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG's state as (tensors, JSON-able rest)."""
    _, numpy_keys, *numpy_rest = np.random.get_state()
    version, python_state, gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(),
               "rng.numpy": torch.from_numpy(numpy_keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, {"numpy": numpy_rest, "python": [version, list(python_state), gauss]}


def _set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32),
                         *rest["numpy"]))
    version, python_state, gauss = rest["python"]
    random.setstate((version, tuple(python_state), gauss))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: TrainState) -> None:
    """Atomically replace checkpoint/state.safetensors: a kill at any moment leaves the old or
    the new. Tensors (weights, optimizer moments, RNG states) are the file's tensors; the rest
    (step, schedule, optimizer settings) is JSON in its header. Nothing is pickled."""
    tensors = {f"model.{name}": t for name, t in _trained_state(model).items()}
    optimizer_state = optimizer.state_dict()
    optimizer_rest = {"param_groups": optimizer_state["param_groups"], "state": {}}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                optimizer_rest["state"].setdefault(str(index), {})[key] = value
    rng_tensors, rng_rest = _rng_state()
    tensors.update(rng_tensors)
    save_weights(tensors, directory / STATE_FILE, metadata={
        "optimizer": optimizer_rest, "scheduler": scheduler.state_dict(), "rng": rng_rest,
        "state": asdict(state)})
    save_json({"step": state.step, "epochs_done": state.epochs_done},
              directory / "trainer_state.json")


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> TrainState:
    try:
        tensors, meta = load_weights(directory / STATE_FILE, with_metadata=True)
        trained = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        optimizer_state = {int(i): dict(v) for i, v in meta["optimizer"]["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
    except (CheckpointError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / STATE_FILE} is damaged ({type(err).__name__}); "
                              "delete it and train again with --overwrite") from None
    missing = set(_trained_state(model)) - set(trained)
    if missing:
        raise CheckpointError(f"{directory / STATE_FILE} was written for another model (lacks "
                              f"{sorted(missing)[0]}); use another --output or --overwrite")
    model.load_state_dict(trained, strict=False)
    optimizer.load_state_dict({"state": optimizer_state,
                               "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(tensors, meta["rng"])
    return TrainState(**meta["state"])


def _check_output(out: Path, cfg: TrainConfig) -> bool:
    """Refuse to mix two runs in one folder; True when there is a checkpoint to resume."""
    has_run = (out / RUN_FILE).is_file() or (out / CHECKPOINT_DIR / STATE_FILE).is_file()
    if has_run and not (cfg.resume or cfg.overwrite):
        raise DataError(f"{out} already holds a run; pass --resume to continue it, --overwrite "
                        "to replace it, or another --output")
    if cfg.resume and cfg.overwrite:
        raise DataError("--resume and --overwrite contradict each other; pass one of them")
    if has_run and cfg.resume and (out / RUN_FILE).is_file():
        info = load_json(out / RUN_FILE)
        for key in ("model", "method", "train", "seed", "max_length", "batch_size"):
            if info.get(key) != getattr(cfg, key):
                raise DataError(f"{out} holds a run with {key}={info.get(key)!r}, not "
                                f"{getattr(cfg, key)!r}; resume with the same flags or use "
                                "another --output")
    return cfg.resume and (out / CHECKPOINT_DIR / STATE_FILE).is_file()


# ---- the loop -----------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), cut into batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    order = order.tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def train(cfg: TrainConfig, log=print) -> dict:
    """Train `cfg.method` on `cfg.train`, write the run folder, return its metrics."""
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    dist = Distributed.from_env(device.type)
    out, ckpt_dir = Path(cfg.output), Path(cfg.output) / CHECKPOINT_DIR
    resuming = _check_output(out, cfg)
    if cfg.overwrite and dist.is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    dist.barrier()

    train_data, eval_data = load_train_eval(cfg.train, cfg.eval, cfg.text_column,
                                            cfg.label_column, cfg.seed)
    names = label_names(train_data.labels)
    source = resolve_model(cfg.model)
    tokenizer = load_tokenizer(source)
    train_enc = tokenize(tokenizer, train_data, cfg.max_length, names)
    eval_enc = tokenize(tokenizer, eval_data, cfg.max_length, names)
    pad = tokenizer.pad_token_id

    seed_everything(cfg.seed)
    model, fingerprint = build_model(source, cfg.method, len(names), pad, cfg.reduction_factor)
    model.to(device).train()
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    from transformers import get_linear_schedule_with_warmup
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    state = TrainState()
    if resuming:
        state = load_checkpoint(ckpt_dir, model, optimizer, scheduler)
        log(f"resuming {out} at step {state.step}/{total_steps}")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json({**asdict(cfg), "model_path": source.path, "gguf_file": source.gguf_file,
                   "labels": names, "backbone_fingerprint": fingerprint,
                   "task_type": "SEQ_CLS"}, out / RUN_FILE)
        log(f"{cfg.method} on {cfg.model}: {len(train_enc)} train / {len(eval_enc)} eval "
            f"examples, {len(names)} classes; trainable params {trainable:,} of {total:,} "
            f"({100 * trainable / total:.2f}%)")

    stepper = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        stepper = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    writer = None
    if cfg.tensorboard and dist.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"))

    from tqdm.auto import tqdm
    started = time.perf_counter() - state.train_seconds
    for epoch in range(state.epochs_done, cfg.epochs):
        batches = epoch_batches(len(train_enc), cfg.batch_size, cfg.seed, epoch)
        done_in_epoch = state.step - epoch * steps_per_epoch
        bar = tqdm(batches[done_in_epoch:], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   initial=done_in_epoch, total=len(batches), leave=True, dynamic_ncols=True,
                   disable=not (cfg.progress and dist.is_main))
        tick, seen = time.perf_counter(), 0
        for indices in bar:
            shard = indices[dist.rank::dist.world_size] or indices
            batch = {k: v.to(device) for k, v in collate(train_enc, shard, pad).items()}
            loss = stepper(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            loss_value = loss.item()
            state.history["train_loss"].append((state.step, round(loss_value, 6)))
            seen += len(indices)
            rate = seen / max(time.perf_counter() - tick, 1e-9)
            memory = (torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda"
                      else current_rss_mb())
            bar.set_postfix(loss=f"{loss_value:.4f}", ex_s=f"{rate:.1f}", mem=f"{memory:.0f}MiB")
            if writer:
                writer.add_scalar("train/loss", loss_value, state.step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state.step)
            if state.step % cfg.save_every == 0 and state.step % steps_per_epoch != 0:
                state.train_seconds = time.perf_counter() - started
                if dist.is_main:
                    save_checkpoint(ckpt_dir, model, optimizer, scheduler, state)
        bar.close()
        probs = predict_probs(model, eval_enc, pad, cfg.eval_batch_size, device)
        scores = classification_metrics(probs, eval_enc.labels)
        state.history["eval"].append({"epoch": epoch + 1, "step": state.step, **scores})
        state.epochs_done = epoch + 1
        state.train_seconds = time.perf_counter() - started
        if dist.is_main:
            log(f"epoch {epoch + 1}: eval accuracy {scores['accuracy']:.4f}, macro-F1 "
                f"{scores['macro_f1']:.4f}, loss {scores['loss']:.4f}")
            save_checkpoint(ckpt_dir, model, optimizer, scheduler, state)
            if writer:
                for key in ("accuracy", "macro_f1", "loss"):
                    writer.add_scalar(f"eval/{key}", scores[key], state.step)

    weights_sha = hashlib.sha256(b"".join(
        p.detach().cpu().contiguous().numpy().tobytes()
        for p in trainable_parameters(model))).hexdigest()
    digests = dist.gather(weights_sha)
    metrics = {
        "eval": state.history["eval"][-1] if state.history["eval"] else {},
        "train_seconds": round(state.train_seconds, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": trainable,
        "all_params": total,
        "method": cfg.method,
        "model": cfg.model,
        "labels": names,
        "train_data": cfg.train,
        "train_examples": len(train_enc),
        "epochs": cfg.epochs,
        "steps": state.step,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "device": str(device),
        "truncated": {"train": train_enc.truncated, "eval": eval_enc.truncated,
                      "max_length": cfg.max_length},
        "world_size": dist.world_size,
        "weights_sha256_per_rank": digests,
        "history": state.history,
    }
    if dist.is_main:
        save_trained(model, cfg.method, out)
        save_json(metrics, out / METRICS_FILE)
        plot_learning_curve(state.history, out / "learning_curve.png")
        write_report(out, metrics)
        log(f"saved {out} (eval accuracy {metrics['eval']['accuracy']:.4f}, macro-F1 "
            f"{metrics['eval']['macro_f1']:.4f}, {metrics['train_seconds']:.0f} s)")
    if writer:
        writer.close()
    dist.barrier()
    return metrics
