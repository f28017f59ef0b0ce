"""Texts to model inputs: token ids (truncated, with a count), class indices, padded batches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where it is used, so the CLI starts at once
    import torch

from .examples import TextDataset
from .labels import check_known_labels


@dataclass
class Encoded:
    """Token ids (unpadded), labels, and how many texts were cut to `max_length` tokens."""

    input_ids: list[list[int]]
    labels: torch.Tensor | None
    truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_labels(labels: list[str], names: list[str], source: str) -> torch.Tensor:
    """Class indices of `labels` under `names`.

    Raises:
        DataError: a label was never seen in training.
    """
    import torch
    check_known_labels(labels, names, source)
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def tokenize(tokenizer, data: TextDataset, max_length: int, names: list[str] | None) -> Encoded:
    """Tokenize with truncation to `max_length`, counting the texts that were cut.

    Sentence pairs (`data.pairs`) are read with the tokenizer's pair encoding, truncating the
    longer of the two first ('longest_first'). A tokenizer that marks no boundary between
    the two (a decoder's, which only concatenates) gets a line break before the second text;
    the last token, which a decoder's classifier pools, stays the pair's last.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = (data.texts,) if data.pairs is None else (data.texts, _separated(tokenizer,
                                                                            data.pairs))
    # One token longer than allowed tells which texts the real call truncates.
    probe = tokenizer(*texts, truncation=True, max_length=max_length + 1)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in probe)
    ids = tokenizer(*texts, truncation="longest_first", max_length=max_length)["input_ids"]
    labels = encode_labels(data.labels, names, data.source) if names and data.labels else None
    return Encoded(ids, labels, truncated)


def _separated(tokenizer, pairs: list[str]) -> list[str]:
    """The second texts, each after a line break when the tokenizer adds no token between."""
    if tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add():
        return pairs
    return ["\n" + pair for pair in pairs]


def collate(encoded: Encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of the examples at `indices`."""
    import torch
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)   # (b, t)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)           # (b, t)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.labels is not None:
        batch["labels"] = encoded.labels[list(indices)]
    return batch
