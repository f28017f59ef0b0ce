"""`--method probe`: a logistic regression on the frozen backbone's pooled final state, fitted
to convergence, its penalty chosen on the eval split, in the one training loop."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from cli_helpers import train_cli
from safetensors.torch import load_file
from tiny_models import save_tiny_text_model, tiny_backbone, topic_rows, write_csv

from laddertune.app.cli import main
from laddertune.app.options import TrainConfig, UsageError
from laddertune.app.probe import (
    C_GRID,
    GRAD_TOLERANCE,
    PROBE_WEIGHTS,
    ProbeModel,
    fit_logistic,
    pool,
)

FLAGS = ["--device", "cpu", "--no-progress", "--method", "probe"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    save_tiny_text_model(root / "tiny")
    write_csv(root / "train.csv", topic_rows(60, seed=0))
    write_csv(root / "eval.csv", topic_rows(45, seed=1))
    return root


def train(files, output, *extra):
    return train_cli(files, output, *FLAGS, *extra)


@pytest.fixture(scope="module")
def probe_run(files):
    assert train(files, files / "run", "--cache-backbone", "--cache-dtype", "float32",
                 "--cache-dir", str(files / "states")) == 0
    return files / "run"


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def _blobs(n: int = 300, d: int = 6, k: int = 3, seed: int = 0):
    """Overlapping Gaussian classes: not separable, so the unpenalised optimum is finite."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g)
    x = centres[y] + 1.5 * torch.randn(n, d, generator=g)
    return x, y


@pytest.mark.parametrize("c", [1e-3, 1.0, 100.0])
def test_the_fit_is_scikit_learns_multinomial_l2_logistic_regression(c):
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs()
    fit = fit_logistic(x, y, 3, c)
    assert fit["converged"] and fit["grad_norm"] <= GRAD_TOLERANCE
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(x.double().numpy(),
                                                                        y.numpy())
    ours = torch.softmax(x.double() @ fit["weight"].T + fit["bias"], -1)
    # both solve one strictly convex problem; the tolerance covers the solvers' stopping points
    torch.testing.assert_close(ours, torch.from_numpy(reference.predict_proba(x.double().numpy())),
                               rtol=0, atol=1e-5)


def test_a_warm_start_reaches_the_same_optimum_in_fewer_iterations():
    x, y = _blobs()
    cold = fit_logistic(x, y, 3, 10.0)
    near = fit_logistic(x, y, 3, 1.0)
    warm = fit_logistic(x, y, 3, 10.0, start=(near["weight"], near["bias"]))
    assert warm["converged"] and warm["iterations"] <= cold["iterations"]
    torch.testing.assert_close(warm["weight"], cold["weight"], rtol=0, atol=1e-4)


def test_the_run_records_the_grid_each_fit_converged_and_the_choice(probe_run):
    fit = metrics(probe_run)["fit"]
    assert [row["C"] for row in fit["grid"]] == list(C_GRID) and len(C_GRID) >= 7
    assert fit["all_converged"]
    assert metrics(probe_run)["backbone_seconds"] > 0   # the first run fills the cache
    for row in fit["grid"]:
        assert row["converged"] and row["grad_norm"] <= GRAD_TOLERANCE and row["iterations"] > 0
        assert 0 <= row["eval_accuracy"] <= 1 and 0 <= row["eval_macro_f1"] <= 1
    best = max(fit["grid"], key=lambda r: (r["eval_accuracy"], r["eval_macro_f1"],
                                           -r["eval_loss"]))
    assert fit["chosen_C"] == best["C"]
    # the saved probe (its standardisation kept beside the layer) scores what the grid recorded
    scores = metrics(probe_run)["eval"]
    assert scores["accuracy"] == best["eval_accuracy"]
    assert scores["loss"] == pytest.approx(best["eval_loss"], abs=1e-4)


def test_the_run_saves_safetensors_and_eval_and_predict_load_it(files, probe_run, capsys, tmp_path):
    assert (probe_run / PROBE_WEIGHTS).is_file()
    assert not list(probe_run.glob("*.bin")) and not list(probe_run.glob("*.pt"))
    state = load_file(str(probe_run / PROBE_WEIGHTS))
    assert set(state) == {"weight", "bias", "feature_mean", "feature_scale"}
    assert state["weight"].shape == (3, 32) and state["feature_scale"].shape == (32,)
    info = json.loads((probe_run / "run.json").read_text())
    assert info["method"] == "probe"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(probe_run), "--data", str(files / "eval.csv"),
                 "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == metrics(probe_run)["eval"]["accuracy"]
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(probe_run), "--data", str(files / "eval.csv"),
                 "--output", str(out), "--device", "cpu"]) == 0
    assert len(out.read_text().splitlines()) == 46


def test_cached_features_fit_the_same_probe_as_the_backbone_run_live(files, probe_run):
    live = files / "live"
    assert train(files, live) == 0
    cached = load_file(str(probe_run / PROBE_WEIGHTS))
    uncached = load_file(str(live / PROBE_WEIGHTS))
    assert metrics(live)["fit"]["chosen_C"] == metrics(probe_run)["fit"]["chosen_C"]
    for name in cached:   # float32 cache: the same features, up to the order of float sums
        torch.testing.assert_close(cached[name], uncached[name], rtol=1e-3, atol=1e-3)


def test_a_probe_saved_with_its_standardisation_folded_in_still_loads(probe_run, tmp_path):
    """Probes saved before the standardisation was kept apart hold W / s and b - (W / s) m."""
    from safetensors.torch import save_file

    from laddertune.app.probe import load_probe
    state = load_file(str(probe_run / PROBE_WEIGHTS))
    folded = state["weight"].double() / state["feature_scale"].double()
    old = {"weight": folded.float(),
           "bias": (state["bias"].double() - folded @ state["feature_mean"].double()).float()}
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / PROBE_WEIGHTS))
    backbone = tiny_backbone("bert")
    new, legacy = load_probe(backbone, probe_run), load_probe(backbone, tmp_path / "old")
    ids = torch.randint(3, 60, (4, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(legacy(**inputs).logits, new(**inputs).logits, rtol=1e-4,
                               atol=1e-4)   # float32 folding of well-spread features


def test_a_feature_with_no_spread_in_training_cannot_blow_up_the_logits():
    """A feature nearly constant in training (1e-6 of spread) but off by 1e-3 elsewhere
    (another split, a float16 cache) is scaled by the floor, not by its own spread."""
    from types import SimpleNamespace

    from laddertune.app import probe as probe_module
    torch.manual_seed(0)
    model = ProbeModel(tiny_backbone("bert"), 2)
    x = torch.randn(64, model.width)
    y = (x[:, 1] > 0).long()
    x[:, 0] = 0.5 + 1e-6 * (2 * y - 1)         # no spread, yet it tells the label apart
    features = {"train": x, "eval": x.clone()}
    with mock.patch.object(probe_module, "_features",
                           lambda m, encoded, run, states: (features[encoded], y)):
        probe_module.fit_probe(SimpleNamespace(model=model, train_set="train", eval_set="eval",
                                               train_states=None, eval_states=None,
                                               labels=["a", "b"]))
    shifted = x.clone()
    shifted[:, 0] += 1e-3
    logits = model.classifier((shifted - model.feature_mean) / model.feature_scale)
    assert logits.abs().max() < 100
    assert (logits.argmax(-1) == y).float().mean() > 0.9


def test_the_probe_reads_only_the_final_state_and_trains_only_its_layer():
    backbone = tiny_backbone("bert")
    probe = ProbeModel(backbone, 3)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == [
        "classifier.weight", "classifier.bias"]
    assert not any(p.requires_grad for p in backbone.parameters())
    ids = torch.randint(3, 60, (2, 5))
    states = probe.backbone_states(input_ids=ids, attention_mask=torch.ones_like(ids))[0]
    assert probe.ladder_inputs() == [4] and states[:4] == (None,) * 4
    torch.testing.assert_close(states[4], backbone(input_ids=ids).last_hidden_state)


def test_pooling_follows_the_family():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert pool(hidden, mask, "mean").flatten().tolist() == [1.0, 5.5]
    assert pool(hidden, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, mask, "first").flatten().tolist() == [0.0, 4.0]
    assert ProbeModel(tiny_backbone("llama"), 2).family.pooling == "last"
    assert ProbeModel(tiny_backbone("bert"), 2).family.pooling == "mean"


def test_a_probe_cannot_generate(capsys):
    with pytest.raises(UsageError, match="--task classify"):
        TrainConfig(method="probe", task="generate")
    assert main(["train", "--method", "probe", "--task", "generate", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_a_sweep_refuses_the_probe_in_one_line(files, tmp_path, capsys):
    code = main(["sweep", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(tmp_path / "sweep"), *FLAGS, "--grid", "lr=1e-3,1e-2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "laddertune train" in err and "\n" not in err
    assert not (tmp_path / "sweep").exists()


def test_step_settings_given_to_a_probe_draw_one_warning_naming_them():
    """The probe is fitted to convergence: --lr and --epochs do nothing, and the user hears so."""
    from laddertune.errors import LSTWarning
    with pytest.warns(LSTWarning, match=r"--lr, --epochs set, but --method probe, fitted to "
                                        r"convergence, does not use them"):
        TrainConfig(method="probe", lr=1e-3, epochs=5)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", LSTWarning)
        TrainConfig(method="probe")                 # defaults: nothing to warn about
