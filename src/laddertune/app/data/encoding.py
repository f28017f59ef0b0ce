"""Texts to model inputs: token ids (truncated, with a count), class indices, padded batches."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # torch is imported where it is used, so the CLI starts at once
    import torch

from .examples import TextDataset
from .labels import check_known_labels


@dataclass
class Encoded:
    """Token ids (unpadded), labels, and how many texts were cut to `max_length` tokens; for
    sentence pairs read with segment ids, those too (`token_type_ids`, else None)."""

    input_ids: list[list[int]]
    labels: torch.Tensor | None
    truncated: int
    token_type_ids: list[list[int]] | None = None

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


def tokenize(tokenizer, data: TextDataset, max_length: int, names: list[str] | None,
             segments: bool = False) -> Encoded:
    """Tokenize with truncation to `max_length`, counting the texts that were cut.

    Sentence pairs (`data.pairs`) are read with the tokenizer's pair encoding, truncating the
    longer of the two first ('longest_first'). A tokenizer that marks no boundary between
    the two (a decoder's, which only concatenates) gets a line break before the second text;
    the last token, which a decoder's classifier pools, stays the pair's last. With
    `segments` (the model reads them: `reads_segment_ids`), a pair keeps the segment ids of a
    tokenizer that marks the boundary and returns them (BERT's: 0 on the first text, 1 on the
    second); single texts never carry them.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    marked = _marks_pairs(tokenizer)
    texts = (data.texts,) if data.pairs is None else (
        data.texts, data.pairs if marked else ["\n" + pair for pair in data.pairs])
    # One token longer than allowed tells which texts the real call truncates.
    probe = tokenizer(*texts, truncation=True, max_length=max_length + 1)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in probe)
    encoding = tokenizer(*texts, truncation="longest_first", max_length=max_length)
    labels = encode_labels(data.labels, names, data.source) if names and data.labels else None
    keep = segments and marked and data.pairs is not None and "token_type_ids" in encoding
    return Encoded(encoding["input_ids"], labels, truncated,
                   encoding["token_type_ids"] if keep else None)


def reads_segment_ids(model) -> bool:
    """Whether `model`'s forward takes `token_type_ids` (BERT's does; Llama's, MPNet's and
    T5's do not, and must never be given them)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def _marks_pairs(tokenizer) -> bool:
    """Whether the tokenizer's pair encoding adds tokens between or around the two texts (an
    encoder's); a decoder's only concatenates them."""
    return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add()


def collate(encoded: Encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of the examples at `indices`, with their segment ids (padded
    with 0) when they have them."""
    import torch
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)   # (b, t)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)           # (b, t)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.token_type_ids is not None:
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)       # (b, t)
        for i, index in enumerate(indices):
            types = encoded.token_type_ids[index]
            token_type_ids[i, :len(types)] = torch.tensor(types, dtype=torch.long)
        batch["token_type_ids"] = token_type_ids
    if encoded.labels is not None:
        batch["labels"] = encoded.labels[list(indices)]
    return batch
