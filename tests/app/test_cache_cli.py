"""`laddertune train --cache-backbone`: the backbone runs once, and the result does not change."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import interrupt_at_step, train_cli
from safetensors.torch import load_file
from tiny_models import topic_rows, write_csv

from laddertune.app import trainer

FLAGS = ["--epochs", "3", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
         "--device", "cpu", "--no-progress", "--save-every", "2"]


@pytest.fixture(scope="module")
def files(files):
    write_csv(files / "eval.csv", topic_rows(600, seed=1))
    return files


def train(files, output, *extra):
    return train_cli(files, output, *FLAGS, *extra)


@pytest.fixture(scope="module")
def uncached(files):
    assert train(files, files / "plain") == 0
    return files / "plain"


def side_weights(run):
    return load_file(str(run / "lst_model.safetensors"))


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_a_float32_cache_trains_the_same_weights(files, uncached, tmp_path, capsys):
    out = tmp_path / "cached"
    assert train(files, out, "--cache-backbone", "--cache-dtype", "float32",
                 "--cache-dir", str(tmp_path / "states")) == 0
    assert "caching the training set's backbone states" in capsys.readouterr().out
    plain, cached = side_weights(uncached), side_weights(out)
    assert plain.keys() == cached.keys()
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-5)
    assert metrics(out)["eval"]["accuracy"] == metrics(uncached)["eval"]["accuracy"]


def test_a_float16_cache_moves_accuracy_by_at_most_0_3_points(files, uncached, tmp_path):
    out = tmp_path / "half"
    assert train(files, out, "--cache-backbone", "--cache-dir", str(tmp_path / "states")) == 0
    gap = abs(metrics(out)["eval"]["accuracy"] - metrics(uncached)["eval"]["accuracy"])
    assert 100 * gap <= 0.3


def test_later_runs_on_the_same_data_never_run_the_backbone(files, tmp_path, capsys):
    states = str(tmp_path / "states")
    assert train(files, tmp_path / "first", "--cache-backbone", "--cache-dir", states) == 0
    first = metrics(tmp_path / "first")
    assert first["backbone_seconds"] > 0
    capsys.readouterr()
    assert train(files, tmp_path / "second", "--cache-backbone", "--cache-dir", states,
                 "--lr", "3e-3", "--seed", "1") == 0
    assert "reading the training set's backbone states from" in capsys.readouterr().out
    assert metrics(tmp_path / "second")["backbone_seconds"] == 0


def test_a_changed_key_builds_a_new_cache(files, tmp_path, capsys):
    states = tmp_path / "states"
    assert train(files, tmp_path / "a", "--cache-backbone", "--cache-dir", str(states)) == 0
    assert train(files, tmp_path / "b", "--cache-backbone", "--cache-dir", str(states),
                 "--max-length", "6") == 0                        # other token ids: other key
    assert "caching the training set's" in capsys.readouterr().out
    assert len([p for p in states.iterdir() if p.is_dir()]) == 4   # train + eval, twice


def test_a_cache_killed_mid_epoch_is_completed_on_resume(files, tmp_path, monkeypatch, capsys):
    states = str(tmp_path / "states")
    interrupt_at_step(monkeypatch, 4)   # after the checkpoint at step 2, before any shard
    out = tmp_path / "killed"
    assert train(files, out, "--cache-backbone", "--cache-dir", states) == 130
    monkeypatch.undo()
    assert train(files, out, "--cache-backbone", "--cache-dir", states, "--resume") == 0
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "states").glob("*/manifest.json")]
    assert manifests and all(m["complete"] for m in manifests)
    assert sorted(i for m in manifests if m["size"] == 48 for s in m["shards"]
                  for i in s["examples"]) == list(range(48))


@pytest.mark.parametrize("extra, words", [
    (["--method", "lora"], "--cache-backbone is for --method lst"),
    (["--lst-backbone-dropout", "true"], "changes them every step"),
])
def test_what_cannot_be_cached_is_refused(files, tmp_path, capsys, extra, words):
    assert train(files, tmp_path / "x", "--cache-backbone", *extra) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_disk_too_small_for_the_cache_is_refused_before_writing(files, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(trainer, "free_bytes", lambda path: 1000)
    assert train(files, tmp_path / "full-disk", "--cache-backbone",
                 "--cache-dir", str(tmp_path / "states")) == 2
    err = capsys.readouterr().err
    assert "MiB free" in err and "--cache-dir" in err
    assert not (tmp_path / "full-disk").exists() and not (tmp_path / "states").exists()
