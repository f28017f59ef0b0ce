"""`laddertune sweep`: K configurations on one backbone pass per batch, each a run of its own."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import topic_rows, write_csv

from laddertune import LSTModel
from laddertune.app.cli import main

FLAGS = ["--epochs", "2", "--batch-size", "8", "--reduction-factor", "2", "--device", "cpu",
         "--no-progress", "--lst-dropout", "0"]


@pytest.fixture(scope="module")
def files(files):
    write_csv(files / "dev.csv", topic_rows(24, seed=1))
    return files


def common(files):
    return ["--model", str(files / "tiny"), "--train", str(files / "train.csv"),
            "--eval", str(files / "dev.csv"), *FLAGS]


@pytest.fixture(scope="module")
def swept(files):
    out = files / "sweep"
    assert main(["sweep", *common(files), "--output", str(out), "--grid", "lr=3e-3,1e-2",
                 "--grid", "lst-gate=learnable,fixed"]) == 0
    return out


def test_every_configuration_is_a_run_eval_can_load(swept, files, capsys):
    summary = json.loads((swept / "sweep.json").read_text())
    names = {r["name"] for r in summary["runs"]}
    assert names == {"lr-0.003_gate-learnable", "lr-0.003_gate-fixed", "lr-0.01_gate-learnable",
                     "lr-0.01_gate-fixed"}
    for name in names:
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(swept / name), "--data",
                     str(files / "dev.csv")]) == 0
        scores = json.loads(capsys.readouterr().out)
        recorded = next(r for r in summary["runs"] if r["name"] == name)["eval"]
        assert scores["accuracy"] == pytest.approx(recorded["accuracy"])
    best = max(summary["runs"], key=lambda r: (r["eval"]["accuracy"], r["eval"]["macro_f1"],
                                               -r["eval"]["loss"]))
    assert summary["best"] == best["name"]
    assert f"**{best['name']}**" in (swept / "summary.md").read_text()
    assert (swept / "sweep.png").stat().st_size > 1000


def test_a_configuration_trains_exactly_as_it_would_alone(swept, files):
    alone = files / "alone"
    assert main(["train", *common(files), "--output", str(alone), "--lr", "1e-2",
                 "--lst-gate", "fixed"]) == 0
    ours = load_file(str(swept / "lr-0.01_gate-fixed" / "lst_model.safetensors"))
    theirs = load_file(str(alone / "lst_model.safetensors"))
    assert ours.keys() == theirs.keys()
    # float rounding apart: the states are computed once, not per model, and 2 epochs of
    # AdamW carry it into the weights (1.9e-6 seen on one parameter near zero); another
    # configuration differs by 1e-2
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_the_backbone_runs_once_per_batch_for_all_configurations(files, monkeypatch):
    calls = []
    real = LSTModel.backbone_states

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LSTModel, "backbone_states", counted)
    assert main(["sweep", *common(files), "--output", str(files / "counted"),
                 "--grid", "lr=1e-3,3e-3,1e-2"]) == 0
    # 48 rows / 8 per epoch; 24 eval rows / 8 (LST evaluates at its training batch)
    steps, eval_batches = 2 * 6, 2 * 3
    assert len(calls) == steps + eval_batches   # not three times that


@pytest.mark.parametrize("grid, words", [
    ("max-length=32,64", "cannot vary in a sweep"),
    ("lst-side-layers=1,2", "cannot vary in a sweep"),
    ("lr=fast", "is not a float"),
    ("lr=", "lists no values"),
])
def test_a_grid_a_sweep_cannot_share_is_refused(files, tmp_path, capsys, grid, words):
    assert main(["sweep", *common(files), "--output", str(tmp_path / "x"),
                 "--grid", grid]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
