"""The headline demo's data: its learning rates are chosen on articles it neither trains nor
evaluates on."""

import csv
import json

import pytest

from laddertune.app import demo_headlines
from laddertune.app.data import load_bbc_news
from laddertune.app.demo_headlines import HEADLINES, write_headline_data
from laddertune.app.subprocess_run import ChildFailed


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


def test_each_method_trains_through_the_cli_in_a_process_of_its_own(monkeypatch, tmp_path):
    calls = []

    def run_module(module, args, capture=True):
        calls.append((module, args, capture))
        (tmp_path / "lst").mkdir(exist_ok=True)
        (tmp_path / "lst" / "metrics.json").write_text(json.dumps({"step_seconds": 1.0}))
        return ""
    monkeypatch.setattr(demo_headlines, "run_module", run_module)
    base = demo_headlines.headline_config(tmp_path / "t.csv", tmp_path / "e.csv", 1, "cpu")
    metrics = demo_headlines.train_in_subprocess(base, "lst", tmp_path / "lst")
    module, args, capture = calls[0]
    assert module == "laddertune.app.cli" and args[:3] == ["train", "--task", "generate"]
    assert args[args.index("--lr") + 1] == f"{demo_headlines.CHOSEN_LR['lst']:g}"
    assert "--lst-head-residual" in args and capture is False   # its output reaches the user
    assert metrics == {"step_seconds": 1.0}

    def failing(module, args, capture=True):
        raise ChildFailed("error: something", 2)
    monkeypatch.setattr(demo_headlines, "run_module", failing)
    with pytest.raises(SystemExit) as stopped:
        demo_headlines.train_in_subprocess(base, "lora", tmp_path / "lora")
    assert stopped.value.code == 2                  # the child's own exit status
