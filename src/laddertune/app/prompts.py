"""How `--task generate` turns prompts and targets into tokens, and batches them.

    prompt     head + prompt tokens + tail, where head and tail are the tokenizer's special
               tokens around a text (BOS; T5's EOS), or with --chat-template the tokenizer's
               chat template around a user turn, up to the start of the assistant's answer; a
               decoder-only model without a template reads a line break after the prompt
    target     the target's tokens, then the end-of-text token, so the model learns to stop
    too long   a decoder-only model reads prompt and target as one sequence of at most
               --max-length tokens; an encoder-decoder's encoder reads at most --max-length
               prompt tokens. A prompt is cut from the left (the end of a prompt, where its
               question or instruction usually is, stays), never the target; the cut prompts
               are counted in a warning and in metrics.json

Training batches are right-padded; the loss is on the target tokens only (labels -100 on the
prompt and the padding). Generation reads the prompts alone, left-padded for a decoder-only
model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DataError, LSTWarning
from .data import PairDataset
from .options import UsageError

_MARK = "\uE000laddertune-prompt\uE000"   # stands for the prompt inside the chat template


@dataclass
class PairEncoded:
    """Token ids of prompts and targets (target ids end with the end-of-text token), the
    target texts the answers are scored against, and how many prompts were cut."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]
    references: list[str]
    truncated: int
    seq2seq: bool

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def input_ids(self) -> list[list[int]]:
        """What the model's first stack reads in training: the prompt, then (decoder-only)
        the target."""
        if self.seq2seq:
            return self.prompt_ids
        return [p + t for p, t in zip(self.prompt_ids, self.target_ids)]

    @property
    def cache_ids(self) -> list[list[int]]:
        """Every token that decides an example's backbone states: prompt and target."""
        return [p + t for p, t in zip(self.prompt_ids, self.target_ids)]


def collate_pairs(encoded: PairEncoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded training batch; labels are -100 on the prompt and the padding."""
    indices = list(indices)
    if encoded.seq2seq:
        input_ids, mask = pad_rows([encoded.prompt_ids[i] for i in indices], pad_token_id)
        labels, _ = pad_rows([encoded.target_ids[i] for i in indices], -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    rows = [encoded.prompt_ids[i] + encoded.target_ids[i] for i in indices]
    input_ids, mask = pad_rows(rows, pad_token_id)                        # (b, t) each
    labels = input_ids.masked_fill(mask == 0, -100)
    for row, i in enumerate(indices):
        labels[row, :len(encoded.prompt_ids[i])] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pad_rows(rows: Sequence[Sequence[int]], pad: int, left: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), (b, t) each: `rows` padded on the right, or on the left."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class PromptFormat:
    """How one tokenizer, for one kind of model, turns prompts and targets into token ids."""

    def __init__(self, tokenizer, seq2seq: bool, chat_template: bool, eos_token_id: int,
                 model_name: str):
        self.tokenizer, self.seq2seq, self.eos = tokenizer, seq2seq, eos_token_id
        if chat_template and not getattr(tokenizer, "chat_template", None):
            warnings.warn(f"--chat-template: {model_name}'s tokenizer has no chat template; "
                          "prompts are used as they are", LSTWarning, stacklevel=3)
            chat_template = False
        if chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}],
                                                 tokenize=False, add_generation_prompt=True)
            if text.count(_MARK) != 1:
                raise UsageError(f"{model_name}'s chat template does not show the prompt once; "
                                 "drop --chat-template and write the template into the prompts")
            head, tail = text.split(_MARK)
            self.head, self.tail = self._plain(head), self._plain(tail)
        else:
            self.head, self.tail = self._specials()
            if not seq2seq:          # where the prompt ends and the answer begins
                self.tail = self.tail + self._plain("\n")

    def _plain(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _specials(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text."""
        plain = self._plain("a")
        full = list(self.tokenizer("a")["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        return [], []

    def prompt(self, text: str, budget: int) -> tuple[list[int], bool]:
        """The prompt's ids within `budget` tokens (template included), cut from the left."""
        content = self._plain(text)
        room = max(budget - len(self.head) - len(self.tail), 1)
        cut = len(content) > room
        return self.head + (content[len(content) - room:] if cut else content) + self.tail, cut

    def target(self, text: str) -> list[int]:
        return self._plain(text) + [self.eos]

    def encode(self, data: PairDataset, max_length: int, answer_room: int = 0) -> PairEncoded:
        """Tokenize `data`, cutting prompts from the left to fit `max_length` (see module doc).
        A decoder-only prompt without its target leaves `answer_room` tokens for the answer.

        Raises:
            DataError: a target leaves no room for the prompt within `max_length`.
        """
        targets = [self.target(text) for text in data.targets] if data.targets else []
        reserved = len(self.head) + len(self.tail) + 1      # one prompt token at least
        too_long = [i for i, ids in enumerate(targets)
                    if not self.seq2seq and len(ids) + reserved > max_length]
        if too_long:
            longest = max(len(targets[i]) for i in too_long)
            raise DataError(
                f"{data.source}: {len(too_long)} targets are too long for --max-length "
                f"{max_length} (the longest takes {longest} tokens, and the prompt needs "
                f"{reserved} at least; first at row {too_long[0] + 1}); targets are never cut: "
                f"pass --max-length {longest + reserved} or more, or shorten them")
        prompts, cut = [], 0
        for i, text in enumerate(data.prompts):
            budget = max_length - (0 if self.seq2seq else len(targets[i]) if targets
                                   else answer_room)
            ids, was_cut = self.prompt(text, budget)
            prompts.append(ids)
            cut += was_cut
        return PairEncoded(prompts, targets, list(data.targets), cut, self.seq2seq)
