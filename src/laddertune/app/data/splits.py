"""Holding out an eval split: stratified by class for classification, at random for pairs."""

from __future__ import annotations

from ...errors import DataError
from .examples import PairDataset, TextDataset
from .labels import check_classes


def stratified_split(data: TextDataset, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Hold out `test_fraction` of each class (at least one example of each class per side);
    both sides keep the file order, and ids stay with their rows.

    Raises:
        DataError: a class has a single example, so it cannot appear on both sides.
    """
    from sklearn.model_selection import train_test_split
    check_classes(data.labels, data.source)
    counts = {label: data.labels.count(label) for label in set(data.labels)}
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        raise DataError(f"{data.source}: class {rare[0]!r} has one example, too few to hold out "
                        "an eval split; add examples or pass --eval FILE")
    n_test = max(round(len(data) * test_fraction), len(counts))
    if len(data) - n_test < len(counts):
        raise DataError(f"{data.source} has {len(data)} rows, too few to split into train and "
                        f"eval for {len(counts)} classes; add examples or pass --eval FILE")
    indices = list(range(len(data)))
    train_idx, test_idx = train_test_split(indices, test_size=n_test, stratify=data.labels,
                                           random_state=seed)
    return (data.select(sorted(train_idx), f"{data.source} (train split)"),
            data.select(sorted(test_idx), f"{data.source} (eval split)"))


def random_split(data: PairDataset, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[PairDataset, PairDataset]:
    """Hold out `test_fraction` of the pairs (at least one), chosen by `seed`; both sides keep
    the file order.

    Raises:
        DataError: fewer than two pairs.
    """
    if len(data) < 2:
        raise DataError(f"{data.source} has {len(data)} row, too few to hold out an eval split; "
                        "add examples or pass --eval FILE")
    import torch  # here: the CLI imports this package at start-up
    n_test = min(max(round(len(data) * test_fraction), 1), len(data) - 1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    test = set(order[:n_test])
    return (data.select([i for i in range(len(data)) if i not in test],
                        f"{data.source} (train split)"),
            data.select(sorted(test), f"{data.source} (eval split)"))
