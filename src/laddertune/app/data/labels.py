"""Class names: their order, and the checks that training and eval data agree on them."""

from __future__ import annotations

from ...errors import DataError
from .values import WHOLE_NUMBER, listing


def label_names(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is a whole number."""
    unique = set(labels)
    if all(WHOLE_NUMBER.fullmatch(label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def check_classes(labels: list[str], source: str) -> None:
    if len(set(labels)) < 2:
        only = labels[0] if labels else "none"
        raise DataError(f"{source} has one class only ({only!r}); a classifier needs at least "
                        "two labels")


def check_known_labels(labels: list[str], names: list[str], source: str) -> None:
    """Raise a DataError naming the first label not in `names`, and its likely spelling."""
    known = set(names)
    unseen = sorted({label for label in labels if label not in known})
    if not unseen:
        return
    same_but_case = [name for name in names if name.casefold() == unseen[0].casefold()]
    fix = (f"did you mean {same_but_case[0]!r}? labels are case-sensitive" if same_but_case
           else "fix the label or add it to the training data")
    raise DataError(f"{source} has label {unseen[0]!r} never seen in training (known: "
                    f"{listing(names)}); {fix}")
