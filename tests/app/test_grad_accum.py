"""--grad-accum-steps K: K micro-batches of B examples make the optimizer step one batch of
K*B makes, in the memory of B. The loss is the mean over the whole effective batch: over its
examples (classify), over all its target tokens (generate), so micro-batches holding different
numbers of target tokens are weighted by them, not alike.

Micro-batches pad to their own longest example and sum in another order than one batch, so
the two are compared within float tolerance, never bitwise."""

import random

import pytest
import torch
from tiny_models import SYMBOLS, save_tiny_lm, save_tiny_text_model, topic_rows, write_csv

from laddertune.app.options import TrainConfig
from laddertune.app.trainer import Optimization, TrainingRun

STEPS = 3   # the last is a partial step: 36 train rows in steps of 16
OPTIMIZER_STEP = Optimization.step


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accum")
    save_tiny_text_model(folder / "bert")
    save_tiny_lm(folder / "gpt2", "gpt2")
    write_csv(folder / "topics.csv", topic_rows(45))          # 36 train rows
    rng = random.Random(0)
    rows = []
    for _ in range(45):       # targets of 1 to 6 words: micro-batches of unequal token counts
        words = [rng.choice(SYMBOLS) for _ in range(rng.randint(1, 6))]
        rows.append({"prompt": "copy " + " ".join(words), "target": " ".join(words)})
    write_csv(folder / "pairs.csv", rows)
    return folder


def first_steps(monkeypatch, **settings) -> tuple[list[float], list[dict]]:
    """The loss and the gradient (before clipping) of each of the first STEPS optimizer steps
    of the training loop."""
    run = TrainingRun(TrainConfig(**settings, epochs=1, reduction_factor=2, seed=0,
                                  device="cpu", progress=False, lst={"dropout": 0.0}),
                      log=lambda *a: None)
    gradients = []

    def step(optimization):
        gradients.append({n: p.grad.clone() for n, p in run.model.named_parameters()
                          if p.grad is not None})
        return OPTIMIZER_STEP(optimization)

    monkeypatch.setattr(Optimization, "step", step)
    run.setup(write=False)
    progress = run.begin_epoch(0, show=False)
    for indices in progress:
        run.train_on(0, indices, run.batch(indices), progress)
    return [loss for _, loss in run.state.history["train_loss"]], gradients


@pytest.mark.parametrize("task, model, data", [("classify", "bert", "topics.csv"),
                                               ("generate", "gpt2", "pairs.csv")])
def test_k_micro_batches_of_b_step_as_one_batch_of_k_times_b(files, monkeypatch, task, model,
                                                             data):
    common = dict(task=task, model=str(files / model), train=str(files / data))
    one_losses, one_grads = first_steps(monkeypatch, **common, batch_size=16)
    k_losses, k_grads = first_steps(monkeypatch, **common, batch_size=4, grad_accum_steps=4)
    assert len(one_losses) == len(k_losses) == len(one_grads) == len(k_grads) == STEPS
    # the loss: within 1e-5 relative (the history keeps 6 decimals, well inside it)
    torch.testing.assert_close(torch.tensor(k_losses), torch.tensor(one_losses),
                               rtol=1e-5, atol=0.0)
    for one, k in zip(one_grads, k_grads):
        assert one.keys() == k.keys() and one
        for name in one:
            # float32 sums of other lengths and orders: a few ulps of the largest entries
            torch.testing.assert_close(k[name], one[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_batch_s_loss_terms_are_the_labels_its_loss_averages(files):
    """What each micro-batch is weighted by: its examples (classify), or exactly the target
    tokens its loss scores (generate: labels not -100, after the decoder's shift)."""
    for task, model, data in (("classify", "bert", "topics.csv"),
                              ("generate", "gpt2", "pairs.csv")):
        run = TrainingRun(TrainConfig(task=task, model=str(files / model),
                                      train=str(files / data), reduction_factor=2,
                                      device="cpu", progress=False), log=lambda *a: None)
        run.setup(write=False)
        counts = set()
        for indices in ([0, 1, 2], [3], list(range(4, 20))):
            labels = run.task.collate(run.train_set, indices, run.pad)["labels"]
            scored = len(indices) if task == "classify" else int((labels[:, 1:] != -100).sum())
            assert run.task.loss_terms(run.train_set, indices) == scored
            counts.add(scored / len(indices))
        assert len(counts) > 1 or task == "classify"    # generate: tokens per example vary


def test_steps_per_epoch_count_optimizer_steps(files):
    run = TrainingRun(TrainConfig(model=str(files / "bert"), train=str(files / "topics.csv"),
                                  batch_size=4, grad_accum_steps=4, reduction_factor=2,
                                  device="cpu", progress=False), log=lambda *a: None)
    run.setup(write=False)
    assert run.steps_per_epoch == STEPS          # 9 micro-batches of 4: 4 + 4 + 1


def test_grad_accum_steps_must_be_a_count():
    with pytest.raises(ValueError, match="--grad-accum-steps must be a whole number >= 1"):
        TrainConfig(grad_accum_steps=0)
