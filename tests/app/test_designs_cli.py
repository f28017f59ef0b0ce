"""Each side-network design through `laddertune train`: its --lst-... flag (derived from the
LSTConfig field) reaches the saved side network, and the run trains, evaluates and accounts its
memory. The designs themselves are tested in tests/test_designs.py."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import train_cli
from safetensors.torch import load_file
from tiny_models import save_tiny_lm, symbol_pairs, write_csv

from laddertune.app.cli import main


@pytest.mark.parametrize("flags, saved", [
    (["--lst-head-gate", "true", "--lst-up-init", "default"],
     {"head_gate": True, "up_init": "default"}),
    (["--lst-ladder-rank", "4", "--lst-gate-per-channel", "true"],
     {"ladder_rank": 4, "gate_per_channel": True}),
    (["--lst-preset", "late"], {"late_layers": 2, "late_tuning": "full"}),
    (["--lst-late-layers", "1", "--lst-late-tuning", "lora", "--lst-late-lora-rank", "2"],
     {"late_layers": 1, "late_tuning": "lora", "late_lora_rank": 2}),
    (["--lst-xladder-depth", "1"], {"xladder_depth": 1}),
])
def test_each_design_trains_from_the_command_line(files, tmp_path, flags, saved):
    out = tmp_path / "run"
    assert train_cli(files, out, "--epochs", "1", "--batch-size", "16", "--account-shape",
                     "4x16", *flags) == 0
    (config,) = out.rglob("lst_config.json")
    meta = json.loads(config.read_text())
    assert {name: meta[name] for name in saved} == saved
    assert json.loads((out / "metrics.json").read_text())["eval"]


def test_the_late_preset_trains_a_language_model_and_generates(tmp_path):
    """--task generate on a tiny Llama: the late route's copies keep no key/value cache, so
    each generated token reruns the sequence; the run still evaluates with generated answers."""
    save_tiny_lm(tmp_path / "llama", "llama")
    write_csv(tmp_path / "train.csv", symbol_pairs(32, seed=0, length=2))
    write_csv(tmp_path / "eval.csv", symbol_pairs(8, seed=1, length=2))
    out = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "llama"), "--train",
                 str(tmp_path / "train.csv"), "--eval", str(tmp_path / "eval.csv"), "--output",
                 str(out), "--task", "generate", "--epochs", "1", "--batch-size", "8",
                 "--max-new-tokens", "3", "--account-shape", "none", "--device", "cpu",
                 "--no-progress", "--lst-preset", "late", "--lst-late-layers", "1"]) == 0
    assert "rouge_l" in json.loads((out / "metrics.json").read_text())["eval"]


@pytest.mark.parametrize("design", [
    ["--lst-head-gate", "true"],          # the cache stores the final state the head reads
    ["--lst-head-residual", "true"],
    ["--lst-xladder-depth", "2", "--lst-side-layers", "0", "--lst-ladder-rank", "4",
     "--lst-gate-per-channel", "true"],   # xLadder's top layers are stored with the kept ones
])
def test_the_designs_that_read_frozen_states_train_the_same_from_a_float32_cache(files, tmp_path,
                                                                                  design):
    common = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--account-shape", "none",
              *design]
    assert train_cli(files, tmp_path / "plain", *common) == 0
    assert train_cli(files, tmp_path / "cached", *common, "--cache-backbone", "--cache-dtype",
                     "float32", "--cache-dir", str(tmp_path / "states")) == 0
    plain = load_file(str(tmp_path / "plain" / "lst_model.safetensors"))
    cached = load_file(str(tmp_path / "cached" / "lst_model.safetensors"))
    assert plain.keys() == cached.keys()
    for name in plain:   # the same states, stored then read in float32: rounding only
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-5)
