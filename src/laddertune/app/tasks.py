"""What a run learns: the task decides the data, the model's head, batching, evaluation and
prediction, in training and for a finished run alike.

The one training loop (`trainer.TrainingRun`) asks its task, in order:

    read(cfg)                         the data files, read and checked before any model loads
    head(method)                      which head `aliases.load_backbone` loads
    prepare(backbone, tokenizer, cfg, max_length)
                                      the task type of the model, and the tokenized train and
                                      eval sets, at the run's fitted --max-length
    collate(encoded, indices, pad)    a training batch: inputs and the labels of the loss
    loss_terms(encoded, indices)      how many terms (examples, target tokens) its loss averages
    evaluate(model, encoded, ...)     the eval scores, `headline` first
    describe(scores)                  the scores in words, for the log
    record()                          what run.json keeps beside the TrainConfig

`eval` and `predict` rebuild the task of a finished run (`task_of_run`), then ask it:

    read_data(source, need_targets, id_column)   the file, checked before the model loads
    attach(model, tokenizer, info)               the loaded run
    encode(data)                                 the examples as training encoded them
    evaluate(...) / predict(...)                 scores, or a row per example

`ClassifyTask` (--task classify) labels a text with a new classification head;
`generate_task.GenerateTask` (--task generate) answers a prompt in words through the model's
own LM head. A new task is a class with these methods and one entry in `TASKS`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .data import (
    BUILTIN,
    Encoded,
    TextDataset,
    check_known_labels,
    collate,
    label_names,
    load_builtin,
    load_texts,
    load_train_eval,
    reads_segment_ids,
    tokenize,
)
from .evaluation import predict_probs_together
from .generate_task import GenerateTask
from .methods import Method
from .options import TrainConfig
from .report import classification_metrics


class Task(Protocol):
    """A kind of run (`--task`): its data, head, batches, evaluation and predictions."""

    name: str
    task_type: str | None       # PEFT's task name of the model: SEQ_CLS, CAUSAL_LM, ...
    headline: tuple[str, ...]   # the eval scores the log and the learning curve show
    best_metric: str            # the score early stopping judges by (--metric-for-best)
    labels: list[str]
    pad: int | None             # the pad token id, once a tokenizer is attached
    outputs: str                # what `predict` writes one row of per example, in words

    @property
    def num_labels(self) -> int: ...

    # ---- training
    def read(self, cfg: TrainConfig) -> None: ...
    def head(self, method: Method) -> str: ...
    def prepare(self, backbone, tokenizer, cfg: TrainConfig, max_length: int
                ) -> tuple[object, object]: ...
    def collate(self, encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]: ...
    def loss_terms(self, encoded, indices) -> int: ...
    def evaluate(self, model, encoded, pad_token_id: int, batch_size: int,
                 device: torch.device, states=None) -> dict: ...
    def describe(self, scores: dict) -> str: ...
    def outline(self) -> str: ...
    def record(self) -> dict: ...

    # ---- a finished run
    def read_data(self, source: str, need_targets: bool, id_column: str | None = None): ...
    def attach(self, model, tokenizer, info: dict) -> None: ...
    def encode(self, data): ...
    def predict(self, model, encoded, batch_size: int, device: torch.device
                ) -> tuple[list[str], list[list]]: ...
    def cut_note(self, encoded) -> str: ...


class ClassifyTask:
    """A label per text: accuracy, macro-F1, per-class scores and a confusion matrix.

    `settings`, for a finished run, is what run.json recorded (`info`), with the columns the
    eval or predict flags override. Sentence pairs carry segment ids when the backbone reads
    them (`data.tokenize`); run.json records that they did, and a finished run encodes its
    files as it was trained.
    """

    name = "classify"
    task_type = "SEQ_CLS"
    headline = ("accuracy", "macro_f1", "loss")
    best_metric = "macro_f1"
    outputs = "predictions"          # what `predict` writes a row of per example

    def __init__(self, settings: dict | None = None):
        self.settings = settings or {}
        self.labels = list(self.settings.get("labels", []))
        self.tokenizer = self.pad = None
        self.max_length = self.settings.get("max_length")
        self.segments = False          # sentence pairs carry their segment ids

    @classmethod
    def for_training(cls, cfg: TrainConfig) -> ClassifyTask:
        return cls()

    @classmethod
    def from_run(cls, info: dict, config=None) -> ClassifyTask:
        """The task of a finished run, reading files by `config`'s columns where given."""
        settings = dict(info)
        for name in ("text_column", "text_pair_column", "label_column"):
            if getattr(config, name, None):
                settings[name] = getattr(config, name)
        return cls(settings)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    # ---- training -------------------------------------------------------------------------------

    def read(self, cfg: TrainConfig) -> None:
        self.train_data, self.eval_data = load_train_eval(
            cfg.train, cfg.eval, cfg.text_column, cfg.label_column, cfg.seed,
            text_pair_column=cfg.text_pair_column)
        self.labels = label_names(self.train_data.labels)

    def head(self, method: Method) -> str:
        return method.head

    def prepare(self, backbone, tokenizer, cfg: TrainConfig, max_length: int
                ) -> tuple[Encoded, Encoded]:
        self.tokenizer, self.pad, self.max_length = tokenizer, tokenizer.pad_token_id, max_length
        train, evaluation = (tokenize(tokenizer, data, max_length, self.labels,
                                      segments=reads_segment_ids(backbone))
                             for data in (self.train_data, self.eval_data))
        self.segments = train.token_type_ids is not None
        return train, evaluation

    def collate(self, encoded: Encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
        return collate(encoded, indices, pad_token_id)

    @staticmethod
    def loss_terms(encoded: Encoded, indices) -> int:
        """What the loss of a batch of these examples is the mean of: one term per example."""
        return len(indices)

    def evaluate(self, model, encoded: Encoded, pad_token_id: int, batch_size: int,
                 device: torch.device, states=None) -> dict:
        return self.evaluate_together([model], encoded, pad_token_id, batch_size, device,
                                      states)[0]

    def evaluate_together(self, models: list, encoded: Encoded, pad_token_id: int,
                          batch_size: int, device: torch.device, states=None) -> list[dict]:
        """Each model's scores, from one pass: the backbone's states of a batch serve all."""
        probs = predict_probs_together(models, encoded, pad_token_id, batch_size, device, states)
        return [classification_metrics(p, encoded.labels, self.labels) for p in probs]

    @staticmethod
    def describe(scores: dict) -> str:
        return (f"accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}, loss "
                f"{scores['loss']:.4f}")

    def outline(self) -> str:
        return f"{len(self.labels)} classes"

    def record(self) -> dict:
        return {"token_type_ids": True} if self.segments else {}

    # ---- a finished run -------------------------------------------------------------------------

    def read_data(self, source: str, need_targets: bool, id_column: str | None = None
                  ) -> TextDataset:
        """A file (or a built-in set's held-out split) to evaluate or to label, its labels
        checked against the run's."""
        if source in BUILTIN:
            data = load_builtin(source)[1]
        else:
            data = load_texts(source, self.settings["text_column"],
                              self.settings["label_column"], need_labels=need_targets,
                              id_column=id_column,
                              text_pair_column=self.settings.get("text_pair_column"))
        if need_targets:
            check_known_labels(data.labels, self.labels, data.source)
        else:
            data.labels = []
        return data

    def attach(self, model, tokenizer, info: dict) -> None:
        self.tokenizer, self.pad, self.max_length = (tokenizer, tokenizer.pad_token_id,
                                                     info["max_length"])
        self.segments = info.get("token_type_ids", False)

    def encode(self, data: TextDataset) -> Encoded:
        return tokenize(self.tokenizer, data, self.max_length, self.labels, self.segments)

    def predict(self, model, encoded: Encoded, batch_size: int, device: torch.device
                ) -> tuple[list[str], list[list]]:
        """The columns (after the id), and per example the likeliest label and each class's
        probability."""
        probs = predict_probs_together([model], encoded, self.pad, batch_size, device)[0]
        names = self.labels
        rows = []
        for p in probs.tolist():
            best = max(range(len(names)), key=p.__getitem__)
            rows.append([names[best], *(f"{v:.6f}" for v in p)])
        return ["label", *(f"prob_{name}" for name in names)], rows

    def cut_note(self, encoded: Encoded) -> str:
        return f"{encoded.truncated} texts truncated to {self.max_length} tokens"


TASKS = {task.name: task for task in (ClassifyTask, GenerateTask)}


def make_task(cfg: TrainConfig) -> Task:
    """The task `cfg.task` names, for a run to train."""
    return TASKS[cfg.task].for_training(cfg)


def task_of_run(info: dict, config=None) -> Task:
    """The task of a finished run (run.json's `info`), with the columns and generation
    settings that `config` (eval, predict or generate flags) overrides."""
    return TASKS[info.get("task", ClassifyTask.name)].from_run(info, config)
