"""What a training run learns: the task decides the data, the model's head and the evaluation.

The one training loop (`trainer.TrainingRun`) asks its task, in order:

    read(cfg)                         the data files, read and checked before any model loads
    head(method)                      which head `aliases.load_backbone` loads
    prepare(backbone, tokenizer, cfg) the task type of the model, and the tokenized train and
                                      eval sets (fitting --max-length to the model)
    collate(encoded, indices, pad)    a training batch: inputs and the labels of the loss
    evaluate(model, encoded, ...)     the eval scores, `headline` first
    describe(scores)                  the scores in words, for the log

`ClassifyTask` (--task classify) labels a text with a new classification head;
`generate_task.GenerateTask` (--task generate) answers a prompt in words through the model's
own LM head.
"""

from __future__ import annotations

import torch

from .data import Encoded, collate, label_names, load_train_eval, tokenize
from .methods import Method
from .options import DEFAULT_MAX_LENGTH, TrainConfig, UsageError


class ClassifyTask:
    """A label per text: accuracy, macro-F1, per-class scores and a confusion matrix."""

    name = "classify"
    task_type = "SEQ_CLS"
    headline = ("accuracy", "macro_f1", "loss")

    def read(self, cfg: TrainConfig) -> None:
        self.train_data, self.eval_data = load_train_eval(
            cfg.train, cfg.eval, cfg.text_column, cfg.label_column, cfg.seed)
        self.labels = label_names(self.train_data.labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def head(self, method: Method) -> str:
        return method.head

    def prepare(self, backbone, tokenizer, cfg: TrainConfig) -> tuple[Encoded, Encoded]:
        cfg.max_length = fit_max_length(backbone, cfg.max_length, cfg.model, tokenizer)
        return (tokenize(tokenizer, self.train_data, cfg.max_length, self.labels),
                tokenize(tokenizer, self.eval_data, cfg.max_length, self.labels))

    def collate(self, encoded: Encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
        return collate(encoded, indices, pad_token_id)

    def evaluate(self, model, encoded: Encoded, pad_token_id: int, batch_size: int,
                 device: torch.device, states=None) -> dict:
        from .inference import predict_probs
        from .report import classification_metrics
        probs = predict_probs(model, encoded, pad_token_id, batch_size, device, states)
        return classification_metrics(probs, encoded.labels, self.labels)

    @staticmethod
    def describe(scores: dict) -> str:
        return (f"accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}, loss "
                f"{scores['loss']:.4f}")


def make_task(cfg: TrainConfig):
    """The task `cfg.task` names."""
    if cfg.task == "generate":
        from .generate_task import GenerateTask
        return GenerateTask(cfg)
    return ClassifyTask()


def fit_max_length(backbone, max_length: int | None, model_name: str, tokenizer) -> int:
    """--max-length as given, refused beyond the backbone's learned positions or below what
    the tokenizer's special tokens take; when not given, `DEFAULT_MAX_LENGTH` or the
    backbone's limit, whichever is smaller."""
    from ..backbones import max_positions
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
