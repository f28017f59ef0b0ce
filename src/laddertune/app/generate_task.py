"""`--task generate`: text to text through the model's own frozen LM head.

The data are prompt -> target pairs, or a classification file whose labels become words (the
paper's text-to-text classification: each label answers with its own text, or the word
--verbalizer gives it). `prompts.py` turns them into tokens and batches. Generation reads the
prompts alone, with key/value caches (`laddertune.generation` for LST, transformers' `generate`
for the baselines), and evaluation scores the answers by exact match, token F1 and ROUGE-L
(`text_metrics`) beside the loss on the targets.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..backbones import DECODER, ENCODER_DECODER, detect_family, max_positions
from ..errors import DataError, DataWarning
from ..held import HeldModules
from ..model import LSTModel
from ..text2text import Verbalizer
from .data import (
    BUILTIN,
    PairDataset,
    TextDataset,
    has_columns,
    label_names,
    load_builtin,
    load_pairs,
    load_texts,
    load_train_eval,
    random_split,
)
from .evaluation import eval_batches, evaluating
from .options import TrainConfig, UsageError
from .prompts import PairEncoded, PromptFormat, collate_pairs, pad_rows
from .report import warn_absent_classes
from .text_metrics import generation_scores

SAMPLES = 5            # answers kept in the metrics, for the report

# The settings of a generate run, as run.json records them; eval, predict and generate may
# override the last five.
SETTINGS = ("prompt_column", "target_column", "text_column", "label_column", "chat_template",
            "max_length", "max_new_tokens", "num_beams", "temperature", "top_p", "seed")


class GenerateTask:
    """Prompt -> target, scored by exact match, token F1, ROUGE-L and the loss on the targets.

    `settings` holds the run's `SETTINGS` (a TrainConfig, or run.json's record of one).
    """

    name = "generate"
    headline = ("rouge_l", "exact_match", "token_f1", "loss")
    best_metric = "rouge_l"
    outputs = "answers"              # what `predict` writes a row of per example

    def __init__(self, settings, words: dict[str, str] | None = None,
                 labels: list[str] | None = None):
        get = settings.get if isinstance(settings, dict) else lambda k: getattr(settings, k)
        self.settings = {name: get(name) for name in SETTINGS}
        self.words, self.labels = words, labels or []
        self.task_type = None
        self.tokenizer = self.format = None
        self.eos = self.pad = None

    @classmethod
    def for_training(cls, cfg: TrainConfig) -> GenerateTask:
        return cls(cfg)

    @classmethod
    def from_run(cls, info: dict, config=None) -> GenerateTask:
        """The task of a finished run (run.json's `info`), with the generation settings that
        `config` (eval, predict or generate flags) overrides."""
        settings = {**info}
        for name in ("prompt_column", "target_column", "max_new_tokens", "num_beams",
                     "temperature", "top_p", "seed"):
            value = getattr(config, name, None)
            if value is not None:
                settings[name] = value
        return cls(settings, info.get("label_words"), info["labels"])

    @property
    def num_labels(self) -> int:
        return 2                   # unused by language models; LSTConfig wants a count

    # ---- data -----------------------------------------------------------------------------------

    def read(self, cfg: TrainConfig) -> None:
        """The pairs, or a classification file's texts with their label words as targets."""
        if cfg.train in BUILTIN or (not has_columns(cfg.train, cfg.prompt_column)
                                    and has_columns(cfg.train, cfg.text_column,
                                                    cfg.label_column)):
            self._read_classification(cfg)
            return
        train = load_pairs(cfg.train, cfg.prompt_column, cfg.target_column)
        if cfg.eval is None:
            self.train_data, self.eval_data = random_split(train, 0.2, cfg.seed)
        else:
            self.train_data = train
            self.eval_data = load_pairs(cfg.eval, cfg.prompt_column, cfg.target_column)

    def _read_classification(self, cfg: TrainConfig) -> None:
        train, evaluation = load_train_eval(cfg.train, cfg.eval, cfg.text_column,
                                            cfg.label_column, cfg.seed)
        self.labels = label_names(train.labels)
        self.words = (parse_verbalizer(cfg.verbalizer) if cfg.verbalizer
                      else {label: label for label in self.labels})
        for data in (train, evaluation):
            missing = sorted({label for label in data.labels} - set(self.words))
            if missing:
                raise DataError(f"{data.source} has label {missing[0]!r} with no --verbalizer "
                                f"entry ({len(missing)} labels lack one); add {missing[0]}=WORD "
                                "to --verbalizer")
        Verbalizer(self.labels, self.words)      # two labels answered with one word: refused
        self.train_data, self.eval_data = (self.as_pairs(data) for data in (train, evaluation))

    def as_pairs(self, data: TextDataset) -> PairDataset:
        """A classification data set as text -> label word pairs."""
        targets = [self.words[label] for label in data.labels] if data.labels else []
        return PairDataset(data.texts, targets, data.source, data.ids, data.labels or None)

    def read_data(self, source: str, need_targets: bool, id_column: str | None = None
                  ) -> PairDataset:
        """Data to evaluate (`need_targets`) or to generate for, read as the run's data was."""
        s = self.settings
        if self.words is not None:
            if source in BUILTIN:
                data = load_builtin(source)[1]
            else:
                data = load_texts(source, s["text_column"], s["label_column"], need_targets,
                                  id_column)
            if need_targets:
                missing = sorted(set(data.labels) - set(self.words))
                if missing:
                    raise DataError(f"{source} has label {missing[0]!r}, which the run never "
                                    f"answered (it knows {', '.join(self.words)}); fix the label")
            return self.as_pairs(data)
        return load_pairs(source, s["prompt_column"], s["target_column"], need_targets,
                          id_column)

    # ---- the model ------------------------------------------------------------------------------

    def head(self, method) -> str:
        return "lm"

    def prepare(self, backbone, tokenizer, cfg: TrainConfig, max_length: int
                ) -> tuple[PairEncoded, PairEncoded]:
        """Tokenize both sets within the run's fitted `max_length`, resolve --max-new-tokens."""
        self.attach_backbone(backbone, tokenizer, cfg.model)
        self.settings["max_length"] = max_length
        train, evaluation = (self.format.encode(data, max_length)
                             for data in (self.train_data, self.eval_data))
        for data, encoded in ((self.train_data, train), (self.eval_data, evaluation)):
            if encoded.truncated:
                what = "prompts plus targets" if not encoded.seq2seq else "prompts"
                warnings.warn(f"{data.source}: {encoded.truncated} of {len(encoded)} {what} are "
                              f"longer than --max-length {max_length} tokens; their prompts "
                              "were cut from the left, the targets kept whole", DataWarning,
                              stacklevel=2)
        if self.settings["max_new_tokens"] is None:
            self.settings["max_new_tokens"] = max(len(ids) for ids in train.target_ids)
        self.check_room(backbone, max(len(ids) for ids in evaluation.prompt_ids), cfg.model)
        return train, evaluation

    def attach(self, model, tokenizer, info: dict) -> None:
        """A finished run's `model` and `tokenizer` (`inference.load_run`), ready to encode and
        generate."""
        backbone = (model.held_backbone() if isinstance(model, HeldModules)    # LST's own
                    else model.get_base_model() if hasattr(model, "get_base_model") else model)
        self.attach_backbone(backbone, tokenizer, info["model"], info.get("eos_token_id"))

    def attach_backbone(self, backbone, tokenizer, model_name: str,
                        eos_token_id: int | None = None) -> None:
        """Read the model kind and special tokens off `backbone` and `tokenizer`.

        Raises:
            UsageError: the model does not write text (an encoder), or names no end token.
        """
        kind = detect_family(backbone).kind
        if kind not in (DECODER, ENCODER_DECODER):
            raise UsageError(f"--task generate needs a model that writes text, decoder-only or "
                             f"encoder-decoder; {model_name} is an {kind} model: pass --model "
                             "smollm2 (or a GPT-, Llama- or T5-style folder), or --task classify")
        seq2seq = kind == ENCODER_DECODER
        self.task_type = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            eos_token_id = getattr(backbone.config, "eos_token_id", None)
        if isinstance(eos_token_id, list):
            eos_token_id = eos_token_id[0]
        if eos_token_id is None:
            raise UsageError(f"{model_name}'s tokenizer and config name no end-of-text token, so "
                             "answers could not end; set eos_token in its tokenizer_config.json")
        self.tokenizer, self.eos, self.pad = tokenizer, int(eos_token_id), tokenizer.pad_token_id
        self.format = PromptFormat(tokenizer, seq2seq, bool(self.settings["chat_template"]),
                                   self.eos, model_name)

    def check_room(self, backbone, longest_prompt: int, model_name: str) -> None:
        """A decoder-only model's positions hold the longest prompt and the answer."""
        limit = max_positions(backbone)
        new = self.settings["max_new_tokens"]
        if self.task_type == "CAUSAL_LM" and limit and longest_prompt + new > limit:
            raise UsageError(f"a prompt of {longest_prompt} tokens plus --max-new-tokens {new} "
                             f"exceeds the {limit} positions of {model_name}; lower "
                             "--max-new-tokens or --max-length")

    def record(self) -> dict:
        """What run.json keeps so that eval, predict and generate read data as training did."""
        return {"task_type": self.task_type, "eos_token_id": self.eos, "label_words": self.words,
                "max_new_tokens": self.settings["max_new_tokens"]}

    def outline(self) -> str:
        return f"{self.task_type}" + (f", {len(self.labels)} classes as words"
                                      if self.labels else "")

    def collate(self, encoded: PairEncoded, indices, pad_token_id: int) -> dict:
        return collate_pairs(encoded, indices, pad_token_id)

    @staticmethod
    def loss_terms(encoded: PairEncoded, indices) -> int:
        """What the loss of a batch of these examples is the mean of: their target tokens (a
        decoder-only model predicts a token from the one before, so a target with no prompt
        before it has its first token unscored)."""
        return sum(len(encoded.target_ids[i])
                   - (not encoded.seq2seq and not encoded.prompt_ids[i]) for i in indices)

    def encode(self, data: PairDataset) -> PairEncoded:
        """A finished run's data, encoded as training did, leaving room for the answers."""
        return self.format.encode(data, self.settings["max_length"],
                                  self.settings["max_new_tokens"])

    def predict(self, model, encoded: PairEncoded, batch_size: int, device: torch.device
                ) -> tuple[list[str], list[list]]:
        """The columns (after the id), and per example the answer and, for a run trained on a
        classification file, the `label` the answer names (blank when it names none)."""
        answers = self.generate_texts(model, encoded.prompt_ids, device, batch_size)
        by_word = {word: label for label, word in (self.words or {}).items()}
        labelled = bool(self.words)
        return (["generated", *(["label"] if labelled else [])],
                [[answer, *([by_word.get(answer, "")] if labelled else [])]
                 for answer in answers])

    def cut_note(self, encoded: PairEncoded) -> str:
        return f"{encoded.truncated} prompts cut to fit {self.settings['max_length']} tokens"

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluate(self, model, encoded: PairEncoded, pad_token_id: int, batch_size: int,
                 device: torch.device, states=None) -> dict:
        """The loss on the targets, then an answer generated for every prompt, scored."""
        with evaluating(model):
            loss = self.target_loss(model, encoded, pad_token_id, batch_size, device, states)
            answers = self.generate_texts(model, encoded.prompt_ids, device, batch_size)
        return {**self.score(answers, encoded.references), "loss": round(loss, 6)}

    def score(self, answers: list[str], references: list[str]) -> dict:
        """Exact match, token F1, ROUGE-L (and class scores), with a few answers to read."""
        scores = {**generation_scores(answers, references), "examples": len(answers)}
        if self.words is not None:
            scores.update(self.class_scores(answers, references))
        scores["samples"] = [{"reference": r, "generated": a}
                             for r, a in zip(references[:SAMPLES], answers[:SAMPLES])]
        return scores

    def class_scores(self, answers: list[str], references: list[str]) -> dict:
        """Text-to-text classification: the class each answer names, scored as a classifier is
        (an answer that names no class is wrong)."""
        from sklearn.metrics import f1_score  # here, as in report.py: slow to import
        word_class = {word: i for i, word in enumerate(self.words[label] for label in self.labels)}
        truth = [word_class[r] for r in references]
        predicted = [word_class.get(a.strip(), -1) for a in answers]
        # scikit-learn's macro-F1: over the classes the references or the answers hold (an
        # answer naming no class, -1, still counts against its reference's recall)
        present = sorted(set(truth) | {p for p in predicted if p >= 0})
        absent = [name for i, name in enumerate(self.labels) if i not in set(truth)]
        warn_absent_classes(absent, len(self.labels))
        return {"accuracy": round(sum(t == p for t, p in zip(truth, predicted))
                                  / max(len(truth), 1), 6),
                "macro_f1": round(float(f1_score(truth, predicted, labels=present,
                                                 average="macro", zero_division=0)), 6),
                "unmatched": sum(p == -1 for p in predicted),
                "classes_absent_from_eval": absent}

    def target_loss(self, model, encoded: PairEncoded, pad_token_id: int, batch_size: int,
                    device: torch.device, states=None) -> float:
        """Mean cross-entropy per target token, teacher-forced."""
        total, count = 0.0, 0
        for indices, batch in eval_batches(encoded, batch_size, pad_token_id, device, states,
                                           collate_pairs):
            tokens = sum(len(encoded.target_ids[i]) for i in indices)
            total += float(model(**batch).loss) * tokens
            count += tokens
        return total / max(count, 1)

    def generate_texts(self, model, prompt_ids: Sequence[Sequence[int]], device: torch.device,
                       batch_size: int, on_token: Callable[[torch.Tensor], None] | None = None
                       ) -> list[str]:
        """An answer to each prompt, in order, generated with the run's settings."""
        texts = []
        for start in range(0, len(prompt_ids), batch_size):
            rows = prompt_ids[start:start + batch_size]
            ids, mask = pad_rows(rows, self.pad, left=self.task_type == "CAUSAL_LM")
            new = self.generate_ids(model, ids.to(device), mask.to(device), on_token)
            texts += [self.decode(row) for row in new.tolist()]
        return texts

    def generate_ids(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     on_token=None) -> torch.Tensor:
        """The new tokens, (b, n): LST through laddertune's generator, the baselines through
        transformers' (both with key/value caches)."""
        s = self.settings
        if isinstance(model, LSTModel):
            out = model.generate(input_ids, attention_mask, max_new_tokens=s["max_new_tokens"],
                                 num_beams=s["num_beams"], eos_token_id=self.eos,
                                 pad_token_id=self.pad, temperature=s["temperature"],
                                 top_p=s["top_p"], seed=s["seed"], on_token=on_token)
        else:
            out = _hf_generate(model, input_ids, attention_mask, s, self.eos, self.pad, on_token)
        return out[:, 1 if self.task_type == "SEQ_2_SEQ_LM" else input_ids.shape[1]:]

    def decode(self, ids: list[int]) -> str:
        """An answer's text: its tokens up to the end token."""
        if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
        return self.tokenizer.decode([t for t in ids if t != self.pad],
                                     skip_special_tokens=True).strip()

    @staticmethod
    def describe(scores: dict) -> str:
        text = (f"ROUGE-L {scores['rouge_l']:.4f}, exact match {scores['exact_match']:.4f}, "
                f"token F1 {scores['token_f1']:.4f}, loss {scores['loss']:.4f}")
        if "accuracy" in scores:
            text += f", accuracy {scores['accuracy']:.4f}"
        return text


def parse_verbalizer(text: str) -> dict[str, str]:
    """--verbalizer as {label: word}: ``LABEL=WORD,LABEL=WORD`` or a .json file of an object.

    Raises:
        UsageError: an entry is not LABEL=WORD, or the file is not a JSON object of strings.
    """
    path = Path(text).expanduser()
    if text.endswith(".json") and path.is_file():
        try:
            words = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise UsageError(f"--verbalizer {text} is not valid JSON ({err}); fix it") from None
        if not isinstance(words, dict) or not all(isinstance(w, str) for w in words.values()):
            raise UsageError(f'--verbalizer {text} must hold one object {{"label": "word", ...}}'
                             "; rewrite it so")
        return {str(k).strip(): w.strip() for k, w in words.items()}
    words = {}
    for entry in (part for part in text.split(",") if part.strip()):
        label, sign, word = entry.partition("=")
        if not sign or not label.strip() or not word.strip():
            raise UsageError(f"--verbalizer entry {entry.strip()!r} is not LABEL=WORD; write e.g. "
                             "--verbalizer 0=negative,1=positive")
        words[label.strip()] = word.strip()
    return words


def _hf_generate(model, input_ids, attention_mask, settings: dict, eos: int, pad: int,
                 on_token) -> torch.Tensor:
    """transformers' own `generate` (peft models pass it through), with the same settings."""
    sample = settings["temperature"] > 0
    options = {"max_new_tokens": settings["max_new_tokens"], "num_beams": settings["num_beams"],
               "do_sample": sample, "eos_token_id": eos, "pad_token_id": pad}
    if sample:
        options.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=0)
        torch.manual_seed(settings["seed"])
    else:                          # a checkpoint's sampling defaults would only draw warnings
        options.update(temperature=None, top_p=None, top_k=None)
    if on_token is not None:
        options["streamer"] = _CallbackStreamer(on_token)
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    finally:
        logger.setLevel(level)


class _CallbackStreamer:
    """transformers' streamer protocol: `put` gets the prompt first, then each new token."""

    def __init__(self, on_token):
        self.on_token, self.started = on_token, False

    def put(self, value: torch.Tensor) -> None:
        if self.started:
            self.on_token(value.reshape(-1))
        self.started = True

    def end(self) -> None:
        pass
