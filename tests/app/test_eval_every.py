"""--eval-every N: an evaluation every N optimizer steps besides each epoch's end, each a point
of metrics.json's history and of the learning curve."""

import json

import pytest
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main

FLAGS = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
         "--seed", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_every")
    save_tiny_text_model(folder / "tiny")
    write_csv(folder / "train.csv", topic_rows(40))     # 32 train rows: 4 steps per epoch
    return folder


def train(files, output, *extra) -> dict:
    assert main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(files / output), *FLAGS, *extra]) == 0
    return json.loads((files / output / "metrics.json").read_text())


def test_an_eval_every_three_steps_and_at_each_epoch_end(files):
    metrics = train(files, "every3", "--eval-every", "3")
    evals = metrics["history"]["eval"]
    assert [e["step"] for e in evals] == [3, 4, 6, 8]
    assert [e["epoch"] for e in evals] == [0.75, 1, 1.5, 2]
    assert all({"accuracy", "macro_f1", "loss"} <= set(e) for e in evals)
    assert metrics["eval"] == evals[-1]
    assert (files / "every3" / "learning_curve.png").stat().st_size > 0


def test_without_it_the_epochs_end_evaluates_and_the_training_is_the_same(files):
    plain = train(files, "plain")
    assert [e["step"] for e in plain["history"]["eval"]] == [4, 8]
    # evaluating draws no random numbers and changes no weight: the same training
    every = json.loads((files / "every3" / "metrics.json").read_text())
    assert plain["history"]["train_loss"] == every["history"]["train_loss"]


def test_eval_every_must_be_a_count(files, capsys):
    assert main(["train", "--train", str(files / "train.csv"), "--eval-every", "0",
                 "--output", str(files / "refused")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --eval-every must be a whole number >= 1, got 0"]
    assert not (files / "refused").exists()
