"""The training loop's pieces: the optimizer step every caller shares, and the data order."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tiny_models import save_tiny_text_model, tiny_backbone, tiny_inputs, topic_rows, write_csv

from laddertune import LSTConfig, get_lst_model
from laddertune.app.options import TrainConfig
from laddertune.app.trainer import Optimization, epoch_batches, train, train_step


def test_epoch_batches_are_a_permutation_fixed_by_seed_and_epoch():
    first = epoch_batches(10, 4, seed=3, epoch=1)
    assert first == epoch_batches(10, 4, seed=3, epoch=1)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(i for b in first for i in b) == list(range(10))
    assert first != epoch_batches(10, 4, seed=3, epoch=2)
    assert first != epoch_batches(10, 4, seed=4, epoch=1)


def test_the_schedule_warms_up_then_decays_linearly_to_zero():
    weight = torch.nn.Parameter(torch.ones(3))
    model = torch.nn.Module()
    model.weight = weight
    optimization = Optimization(model, lr=1.0, total_steps=10, warmup_ratio=0.2,
                                weight_decay=0.0)
    rates = []
    for _ in range(10):
        rates.append(optimization.scheduler.get_last_lr()[0])
        weight.sum().backward()
        optimization.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_the_norm_is_reported_before_clipping_and_a_non_finite_norm_leaves_the_weights():
    # that the optimizer steps on clipped gradients: test_loop_golden.py
    model = torch.nn.Linear(4, 1)
    optimization = Optimization(model, lr=0.1, total_steps=5, warmup_ratio=0.0,
                                max_grad_norm=0.5)
    (1000 * model(torch.ones(1, 4))).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    norm = optimization.step()
    assert norm > 0.5                          # reported before clipping
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.full((1, 4), math.inf))).sum().backward()
    assert not math.isfinite(optimization.step())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())   # cleared for the next step


def test_lst_gates_biases_and_norms_get_no_weight_decay():
    model = get_lst_model(tiny_backbone("bert"), LSTConfig(reduction_factor=4))
    optimization = Optimization(model, lr=1e-3, total_steps=4, weight_decay=0.1)
    groups = {group["weight_decay"]: group["params"] for group in
              optimization.optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in groups[0.0]}
    assert any("gate_alphas" in n for n in undecayed)
    assert all(n.endswith("bias") or "norm" in n.lower() or "gate" in n for n in undecayed)
    assert all(n.endswith("weight") for n in (names[id(p)] for p in groups[0.1]))


def test_train_step_changes_only_trainable_weights():
    backbone = tiny_backbone("bert")
    model = get_lst_model(backbone, LSTConfig(reduction_factor=4))
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    optimization = Optimization(model, lr=1e-2, total_steps=3, warmup_ratio=0.0)
    inputs = tiny_inputs("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, norm = train_step(model, {**inputs, "labels": torch.tensor([0, 1, 0, 1])},
                            optimization)
    assert math.isfinite(loss) and norm > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(torch.equal(frozen[k], v) for k, v in backbone.state_dict().items())


def test_a_run_leaves_its_config_as_given_and_records_the_fitted_max_length(tmp_path):
    save_tiny_text_model(tmp_path / "tiny")
    write_csv(tmp_path / "train.csv", topic_rows(16))
    cfg = TrainConfig(model=str(tmp_path / "tiny"), train=str(tmp_path / "train.csv"),
                      epochs=1, batch_size=8, reduction_factor=2, output=str(tmp_path / "run"),
                      device="cpu", progress=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_length = 8
    before = dataclasses.asdict(cfg)
    metrics = train(cfg, log=lambda *a: None)
    assert dataclasses.asdict(cfg) == before and cfg.max_length is None
    fitted = json.loads((tmp_path / "run" / "run.json").read_text())["max_length"]
    assert fitted == metrics["truncated"]["max_length"] == 64   # the tiny model's positions
