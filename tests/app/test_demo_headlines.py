"""The headline demo's data: its learning rates are chosen on articles it neither trains nor
evaluates on."""

import csv

from laddertune.app.bench import headline_lr
from laddertune.app.data import load_bbc_news
from laddertune.app.demo_headlines import CHOSEN_LR, HEADLINES, write_headline_data


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


def test_the_lr_check_report_marks_the_lowest_loss_and_a_stale_choice(tmp_path):
    rows = [{"lr": lr, "loss": loss, "rouge_l": 0.2, "exact_match": 0.0, "token_f1": 0.2}
            for lr, loss in ((3e-4, 4.7), (1e-3, 4.5), (3e-3, 6.8))]
    results = {"machine": {}, "rates": {"lst": rows}, "chosen": {"lst": 1e-3}}
    text = headline_lr.write(results, tmp_path).read_text()
    assert "| lst | 0.001 | 4.5000 | 0.2000 | 0.0000 | **yes** |" in text
    assert ("differs" in text) == (CHOSEN_LR["lst"] != 1e-3)


def test_the_rates_were_chosen_for_the_demos_default_epochs():
    from laddertune.app.demo_headlines import HEADLINE_EPOCHS
    from laddertune.app.options import DemoConfig
    assert DemoConfig(task="generate").epochs == HEADLINE_EPOCHS
