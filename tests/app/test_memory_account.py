"""The memory account in metrics.json: one reference shape for every method, frozen weights
apart, taken after training without moving the run's results."""

import json
from unittest import mock

import pytest
import torch
from tiny_models import save_tiny_text_model, tiny_config, topic_rows, write_csv

from laddertune.app.cli import main
from laddertune.app.memory import reference_account

FLAGS = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu"]
PARTS = ("saved_for_backward_bytes", "gradient_bytes", "optimizer_bytes",
         "trainable_weight_bytes")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("account")
    # wide enough that LoRA's rank-8 matrices are a small share of each weight, as in real models
    save_tiny_text_model(root / "tiny", hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2)
    write_csv(root / "train.csv", topic_rows(24))
    return root


def _train(workdir, name, *extra) -> dict:
    code = main(["train", "--model", str(workdir / "tiny"), "--train",
                 str(workdir / "train.csv"), "--output", str(workdir / name), *FLAGS, *extra])
    assert code == 0
    return json.loads((workdir / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(workdir):
    return {method: _train(workdir, method, "--method", method, "--account-shape", "4x32")
            for method in ("lst", "lora", "full")}


def test_lst_keeps_less_than_lora_than_full_at_one_shape(runs):
    accounts = {method: metrics["memory_account"] for method, metrics in runs.items()}
    assert all(account["shape"] == [4, 32] for account in accounts.values())
    assert (accounts["lst"]["training_bytes"] < accounts["lora"]["training_bytes"]
            < accounts["full"]["training_bytes"])


def test_frozen_weights_are_counted_apart_from_what_training_adds(runs):
    for metrics in runs.values():
        account = metrics["memory_account"]
        assert account["training_bytes"] == sum(account[part] for part in PARTS)
        assert account["trainable_weight_bytes"] == 4 * metrics["trainable_params"]   # float32
        assert account["gradient_bytes"] == account["trainable_weight_bytes"]
        assert account["optimizer_bytes"] == 2 * account["trainable_weight_bytes"]   # AdamW
        assert account["frozen_weight_bytes"] == 4 * (metrics["all_params"]
                                                      - metrics["trainable_params"])
    assert runs["full"]["memory_account"]["frozen_weight_bytes"] == 0
    lst = runs["lst"]["memory_account"]
    assert lst["frozen_weight_bytes"] > lst["training_bytes"] - lst["saved_for_backward_bytes"]


def test_the_report_shows_the_account(workdir, runs):
    report = (workdir / "lst" / "report.md").read_text()
    assert "training memory, device-independent, at 4 x 32 tokens" in report
    assert "frozen weights" in report


def test_the_tokens_are_clamped_to_the_model_positions_and_none_skips(workdir, runs):
    long = _train(workdir, "long", "--account-shape", "2x1000")
    assert long["memory_account"]["shape"] == [2, 64]   # the tiny model's 64 positions
    skipped = _train(workdir, "skipped", "--account-shape", "none")
    assert skipped["memory_account"] is None
    assert "device-independent" not in (workdir / "skipped" / "report.md").read_text()
    # taking the account moves nothing the run trained or measured
    assert skipped["model_files_sha256"] == runs["lst"]["model_files_sha256"]
    assert skipped["eval"] == runs["lst"]["eval"]


def test_a_bad_shape_is_one_line_before_anything_loads(workdir, capsys):
    code = main(["train", "--model", str(workdir / "tiny"), "--train",
                 str(workdir / "train.csv"), "--output", str(workdir / "bad"),
                 "--account-shape", "32by256", *FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--account-shape '32by256'" in err
    assert not (workdir / "bad").exists()


class _Task:
    task_type, num_labels = "SEQ_CLS", 3


class _Tokenizer:
    vocab_size = 64


def test_the_model_is_left_as_it_was():
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=3))
    model.eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rng = torch.get_rng_state()
    account = reference_account(model, (2, 8), _Task(), _Tokenizer())
    assert account["shape"] == [2, 8] and account["saved_for_backward_bytes"] > 0
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_the_account_at_a_large_batch_is_the_one_measured_there(family):
    """Saved bytes are measured at 2 and 4 examples and extended along their line; a batch of
    12 measured directly keeps the same bytes (every term grows with the batch)."""
    from transformers import AutoModelForSequenceClassification

    from laddertune.app import memory
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels=3,
                                                                        pad_token_id=0))
    extended = reference_account(model, (12, 16), _Task(), _Tokenizer())
    with mock.patch.object(memory, "SMALL_BATCHES", (12,)):
        measured = reference_account(model, (12, 16), _Task(), _Tokenizer())
    assert extended["shape"] == measured["shape"] == [12, 16]
    assert extended["saved_for_backward_bytes"] == measured["saved_for_backward_bytes"]
    assert extended["training_bytes"] == measured["training_bytes"]
