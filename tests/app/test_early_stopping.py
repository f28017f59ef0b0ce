"""--early-stopping-patience P: the run stops once P evals in a row have not beaten the best
--metric-for-best; it keeps (and eval, predict and generate load) the best eval's weights;
metrics.json names the best step; a resumed run stops exactly where an uninterrupted one does.

The evals are scripted (a macro-F1 per step) so that the test decides when the run stops; the
training itself is real."""

import json

import pytest
import torch
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main
from laddertune.app.inference import load_run
from laddertune.app.state import trained_state
from laddertune.app.trainer import TrainingRun

FLAGS = ["--epochs", "4", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
         "--seed", "0", "--device", "cpu", "--no-progress", "--eval-every", "1",
         "--save-every", "100"]
# macro-F1 after each step (4 steps per epoch): with patience 2 the best is step 3 and step 5
# stops the run; with patience 3 step 6 beats it, the best is step 8 and step 11 stops the run
SCRIPT = {1: 0.2, 2: 0.5, 3: 0.7, 4: 0.6, 5: 0.7, 6: 0.9, 7: 0.95, 8: 0.99,
          9: 0.5, 10: 0.9, 11: 0.99, 12: 1.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("early")
    save_tiny_text_model(folder / "tiny")
    write_csv(folder / "train.csv", topic_rows(40))     # 32 train rows: 4 steps per epoch
    return folder


@pytest.fixture
def scripted(monkeypatch):
    """Evals scored by SCRIPT; the trained weights at each eval, by step. `interrupt_at`: a
    step whose eval is a Ctrl-C (once)."""
    weights, interrupt = {}, []
    real = TrainingRun.evaluate

    def evaluate(run, encoded=None):
        step = run.state.step
        if interrupt and interrupt[0] == step:
            interrupt.clear()
            raise KeyboardInterrupt
        weights[step] = trained_state(run.model)
        return {**real(run, encoded), "accuracy": SCRIPT[step], "macro_f1": SCRIPT[step],
                "loss": 1 - SCRIPT[step]}

    monkeypatch.setattr(TrainingRun, "evaluate", evaluate)
    return weights, interrupt


def train(files, output, *extra) -> int:
    return main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(files / output), *FLAGS, *extra])


def test_the_run_stops_after_patience_evals_and_keeps_the_best(files, scripted):
    weights, _ = scripted
    assert train(files, "stopped", "--early-stopping-patience", "2") == 0
    metrics = json.loads((files / "stopped" / "metrics.json").read_text())
    assert [e["step"] for e in metrics["history"]["eval"]] == [1, 2, 3, 4, 5]
    assert metrics["steps"] == 5 and metrics["stopped_early"] is True
    assert metrics["best"] == {"metric": "macro_f1", "value": 0.7, "step": 3, "epoch": 0.75}
    assert metrics["eval"]["step"] == 3           # the scores of the weights kept
    model, _, _ = load_run(files / "stopped", "cpu")
    loaded = {n: p.detach() for n, p in model.named_parameters()}   # loaded: none trainable
    assert weights[3].keys() <= loaded.keys()
    for name, value in weights[3].items():
        assert torch.equal(loaded[name], value), name
    assert any(not torch.equal(loaded[n], weights[5][n]) for n in weights[5])


def test_resume_continues_the_early_stopping_state_exactly(files, scripted):
    weights, interrupt = scripted
    assert train(files, "whole", "--early-stopping-patience", "3") == 0
    interrupt.append(5)                           # Ctrl-C at step 5, after step 4's checkpoint
    assert train(files, "resumed", "--early-stopping-patience", "3") == 130
    state = json.loads((files / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert train(files, "resumed", "--resume") == 0
    whole, resumed = (json.loads((files / name / "metrics.json").read_text())
                      for name in ("whole", "resumed"))
    # step 4: no better (1), step 5: equal, no better (2), step 6: better, ..., step 11: stop
    assert whole["stopped_early"] is True and whole["best"]["step"] == 8
    assert whole["steps"] == 11
    for key in ("history", "best", "stopped_early", "steps", "eval", "model_files_sha256"):
        assert resumed[key] == whole[key], key


def test_resume_restores_a_count_of_evals_without_improvement(files, scripted):
    _, interrupt = scripted
    assert train(files, "stop-whole", "--early-stopping-patience", "2") == 0
    interrupt.append(5)
    assert train(files, "stop-resumed", "--early-stopping-patience", "2") == 130
    assert train(files, "stop-resumed", "--resume") == 0
    whole, resumed = (json.loads((files / name / "metrics.json").read_text())
                      for name in ("stop-whole", "stop-resumed"))
    assert resumed["steps"] == whole["steps"] == 5     # one eval without better before the kill
    for key in ("history", "best", "stopped_early", "eval", "model_files_sha256"):
        assert resumed[key] == whole[key], key


def test_metric_for_best_loss_is_lower_is_better(files, scripted):
    assert train(files, "by-loss", "--early-stopping-patience", "2",
                 "--metric-for-best", "loss") == 0
    metrics = json.loads((files / "by-loss" / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "loss" and metrics["best"]["step"] == 3


def test_an_unknown_metric_is_refused_before_anything_is_written(files, capsys):
    assert train(files, "refused", "--metric-for-best", "rouge_l") == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --metric-for-best rouge_l is not a --task classify eval score; use one of "
        "accuracy, macro_f1, loss"]
    assert not (files / "refused").exists()


def test_a_sweep_refuses_early_stopping(files, capsys):
    assert main(["sweep", "--train", str(files / "train.csv"), "--grid", "lr=1e-3,1e-2",
                 "--early-stopping-patience", "2", "--output", str(files / "sweep")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: laddertune sweep trains every configuration for all --epochs; drop "
        "--early-stopping-patience, or train the best with `laddertune train`"]
    assert not (files / "sweep").exists()
