"""The data a classifier trains and is evaluated on, from a built-in data set or files."""

from __future__ import annotations

from .corpora import BUILTIN, load_builtin
from .examples import TextDataset
from .labels import check_classes, check_known_labels, label_names
from .readers import load_texts
from .splits import stratified_split


def load_train_eval(train: str, eval_source: str | None = None, text_column: str = "text",
                    label_column: str = "label", seed: int = 0,
                    id_column: str | None = "id", text_pair_column: str | None = None
                    ) -> tuple[TextDataset, TextDataset]:
    """The training data and the data to evaluate on (a stratified 20% split without `eval`).

    Raises:
        DataError: as `load_texts`, or the training data has one class, or the eval data has a
            label the training data lacks.
    """
    if train in BUILTIN:
        train_data, eval_data = load_builtin(train)
    else:
        train_data = load_texts(train, text_column, label_column, id_column=id_column,
                                text_pair_column=text_pair_column)
        check_classes(train_data.labels, train)
        eval_data = None
    if eval_source is not None:
        eval_data = load_texts(eval_source, text_column, label_column, id_column=id_column,
                               text_pair_column=text_pair_column)
        check_known_labels(eval_data.labels, label_names(train_data.labels), eval_source)
    elif train not in BUILTIN:
        train_data, eval_data = stratified_split(train_data, 0.2, seed)
    return train_data, eval_data
