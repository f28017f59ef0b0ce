"""Text-to-text classification, as the paper trains T5 on GLUE: the labels are words.

    verbalizer = Verbalizer(["negative", "positive"])     # class i -> its target string
    labels = verbalizer.target_ids([1, 0], tokenizer)     # (b, t) target token ids, -100 = padding
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    metrics = evaluate_text2text(model, batches, tokenizer, verbalizer)  # generates, compares

A prediction is right when the generated text, decoded and stripped of whitespace, equals the
target string of the example's class; text that names no class counts as wrong.

`tokenizer` is a Hugging Face tokenizer (which adds eos itself for T5) or anything with the same
two calls: ``tokenizer(text)["input_ids"]`` and ``tokenizer.decode(ids, skip_special_tokens=True)``.
`WordTokenizer` is such a thing for toy examples and tests: one id per whitespace-separated word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .errors import InputError
from .generation import special_tokens


class Verbalizer:
    """Class names <-> target strings.

    Args:
        class_names: one name per class, in label order (label i is class_names[i]).
        targets: the string the model learns to generate for each class: a list in label order
            or a dict by class name. Defaults to the class names themselves.

    Raises:
        InputError: targets are missing for a class, or two classes share a target string.
    """

    def __init__(self, class_names: Sequence[str], targets: Sequence[str] | dict | None = None):
        self.class_names = list(class_names)
        if targets is None:
            targets = self.class_names
        if isinstance(targets, dict):
            missing = [name for name in self.class_names if name not in targets]
            if missing:
                raise InputError(f"no target string for classes {missing}; add them to targets")
            targets = [targets[name] for name in self.class_names]
        if len(targets) != len(self.class_names):
            raise InputError(f"{len(targets)} target strings for {len(self.class_names)} "
                             "classes; give one target per class")
        self.targets = [str(t).strip() for t in targets]
        if len(set(self.targets)) != len(self.targets):
            raise InputError(f"two classes share a target string in {self.targets}; "
                             "make them distinct")

    def __len__(self) -> int:
        return len(self.class_names)

    def target(self, label: int) -> str:
        """The target string of class `label`."""
        return self.targets[int(label)]

    def label_of(self, text: str) -> int:
        """The class whose target string `text` is (after stripping whitespace), else -1."""
        text = text.strip()
        return self.targets.index(text) if text in self.targets else -1

    def target_ids(self, labels: Iterable[int], tokenizer, eos_token_id: int | None = None
                   ) -> torch.Tensor:
        """SEQ_2_SEQ_LM labels for a batch of class labels: (b, t), padded with -100."""
        return tokenize_targets([self.target(label) for label in labels], tokenizer, eos_token_id)


def tokenize_targets(texts: Sequence[str] | Sequence[Sequence[int]], tokenizer=None,
                     eos_token_id: int | None = None) -> torch.Tensor:
    """Target strings (or token id lists) as a (b, t) label tensor padded with -100.

    `eos_token_id` is appended to any target that does not already end with it, so the model
    learns to stop (a Hugging Face T5 tokenizer has already added it).
    """
    rows = []
    for target in texts:
        ids = list(target) if not isinstance(target, str) else _encode(tokenizer, target)
        if eos_token_id is not None and (not ids or ids[-1] != eos_token_id):
            ids.append(eos_token_id)
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, ids in enumerate(rows):
        labels[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return labels


def generated_texts(model, sequences: torch.Tensor, tokenizer, prompt_length: int = 0
                    ) -> list[str]:
    """Decode `generate` output: drop the decoder start token (or prompt), stop at eos."""
    eos, pad = special_tokens(model.backbone)
    start = 1 if model.config.task_type == "SEQ_2_SEQ_LM" else prompt_length
    texts = []
    for row in sequences[:, start:].tolist():
        ids = []
        for token in row:
            if token in eos.tolist():
                break
            if token != pad:
                ids.append(token)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


@torch.no_grad()
def evaluate_text2text(model, batches: Iterable[dict], tokenizer, verbalizer: Verbalizer,
                       max_new_tokens: int | None = None, num_beams: int = 1) -> dict:
    """Generate an answer for every example and compare it with its class's target string.

    Args:
        model: an LST model with task_type SEQ_2_SEQ_LM (or CAUSAL_LM, prompts left-padded).
        batches: dicts with input_ids, attention_mask (optionally pixel_values) and labels:
            class indices of shape (b,), or target token ids of shape (b, t) with -100 padding.
        tokenizer: decodes generated ids (see the module doc).
        verbalizer: the class names and their target strings.
        max_new_tokens: defaults to the longest target's length in tokens, plus one for eos.
        num_beams: 1 for greedy decoding.

    Returns:
        {"accuracy": fraction right, "predictions": generated strings,
         "predicted_labels": class index per prediction (-1 if it names no class)}
    """
    if max_new_tokens is None:
        max_new_tokens = max(len(_encode(tokenizer, t)) for t in verbalizer.targets) + 1
    predictions, right, predicted_labels = [], 0, []
    for batch in batches:
        labels = batch["labels"]
        if labels.dim() == 1:
            expected = [verbalizer.target(label) for label in labels.tolist()]
        else:
            expected = [tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)
                        .strip() for row in labels.tolist()]
        sequences = model.generate(batch["input_ids"], batch.get("attention_mask"),
                                   max_new_tokens=max_new_tokens, num_beams=num_beams,
                                   pixel_values=batch.get("pixel_values"))
        texts = generated_texts(model, sequences, tokenizer, batch["input_ids"].shape[1])
        right += sum(text == target for text, target in zip(texts, expected))
        predictions += texts
        predicted_labels += [verbalizer.label_of(text) for text in texts]
    accuracy = right / len(predictions) if predictions else 0.0
    return {"accuracy": accuracy, "predictions": predictions,
            "predicted_labels": predicted_labels}


class WordTokenizer:
    """A whitespace word tokenizer over a fixed vocabulary, for toy examples and tests.

    Ids 0, 1, 2 are pad, eos and unknown (T5's pad and eos ids); words follow in the order given.
    Calling it appends eos, as T5's tokenizer does.
    """

    pad_token_id, eos_token_id, unk_token_id = 0, 1, 2

    def __init__(self, words: Iterable[str]):
        self.vocab = ["<pad>", "</s>", "<unk>"] + list(dict.fromkeys(words))
        self.ids = {word: i for i, word in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, text: str) -> dict:
        ids = [self.ids.get(word, self.unk_token_id) for word in text.split()]
        return {"input_ids": ids + [self.eos_token_id]}

    def batch(self, texts: Sequence[str]) -> dict:
        """Right-padded input_ids and attention_mask for several texts."""
        rows = [self(text)["input_ids"] for text in texts]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        special = {self.pad_token_id, self.eos_token_id} if skip_special_tokens else set()
        words = (self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>" for i in ids
                 if i not in special)                      # a model's vocab may be larger
        return " ".join(words)


def _encode(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise InputError("target strings need a tokenizer; pass tokenizer=... or token id lists")
    encoded = tokenizer(text)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") \
        else encoded
    return list(ids)
