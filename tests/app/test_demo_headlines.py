"""The headline demo's data: its learning rates are chosen on articles it neither trains nor
evaluates on."""

import csv

from laddertune.app.data import load_bbc_news
from laddertune.app.demo_headlines import HEADLINES, write_headline_data


def _ids(path):
    with open(path, encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def test_the_dev_articles_are_neither_trained_on_nor_the_eval_articles(tmp_path):
    train, evaluation = map(_ids, write_headline_data(tmp_path / "demo"))
    same_train, dev = map(_ids, write_headline_data(tmp_path / "check", dev=True))
    assert same_train == train and len(train) == HEADLINES["train_articles"]
    assert len(dev) == HEADLINES["eval_articles"]
    assert not set(dev) & set(train) and not set(dev) & set(evaluation)
    assert set(dev) <= set(load_bbc_news()[0].ids)            # of the training split


def test_the_rates_were_chosen_for_the_demos_default_epochs():
    from laddertune.app.demo_headlines import HEADLINE_EPOCHS
    from laddertune.app.options import DemoConfig
    assert DemoConfig(task="generate").epochs == HEADLINE_EPOCHS
