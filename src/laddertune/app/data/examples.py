"""What a data source holds once read: texts and their labels, or prompts and their targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class TextDataset:
    """Raw texts, their labels (as strings) and optional row ids from one source; for sentence
    pairs (`--text-pair-column`), each text's second text in `pairs`."""

    texts: list[str]
    labels: list[str]
    source: str
    ids: list[str] | None = None   # the file's id column, carried through to predictions
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int], source: str) -> TextDataset:
        """The rows at `indices`, labels and ids kept in step with the texts."""
        return TextDataset([self.texts[i] for i in indices],
                           [self.labels[i] for i in indices] if self.labels else [],
                           source,
                           [self.ids[i] for i in indices] if self.ids is not None else None,
                           [self.pairs[i] for i in indices] if self.pairs is not None else None)


@dataclass
class PairDataset:
    """Prompts and the targets a model learns to answer them with (`--task generate`), from one
    source. From a classification file, `labels` holds each row's class and the targets are
    its word (`words`: class name -> word)."""

    prompts: list[str]
    targets: list[str]
    source: str
    ids: list[str] | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int], source: str) -> PairDataset:
        def pick(values):
            return None if values is None else [values[i] for i in indices]
        return PairDataset(pick(self.prompts), pick(self.targets) if self.targets else [],
                           source, pick(self.ids), pick(self.labels))
