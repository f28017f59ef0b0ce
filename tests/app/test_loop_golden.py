"""The training loop pinned: golden losses of a seeded tiny `TrainingRun`, and gradient clipping
seen where it matters, in the gradients the optimizer steps on.

The goldens are the per-step training losses of one epoch (6 steps of 8 examples) and the eval
loss after it, for LST and for full fine-tuning. A change that moves the loop (data order,
initialisation, schedule, clipping, the optimizer's groups) moves them. When a change is meant
to move them, print the new values and paste them into GOLDEN after reviewing the diff:

    PYTHONPATH=src python tests/app/test_loop_golden.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # tiny_models, when run as a script

from cli_helpers import write_tiny_files  # noqa: E402

from laddertune.app.options import TrainConfig  # noqa: E402
from laddertune.app.trainer import TrainingRun  # noqa: E402

GOLDEN = {
    "full": {"train_loss": [1.099957, 1.102043, 1.108438, 1.105112, 1.100769, 1.093227],
             "eval_loss": 1.098228},
    "lst": {"train_loss": [0.958557, 1.248515, 1.340589, 1.343439, 1.082538, 1.05394],
            "eval_loss": 1.06171},
}
# what each method trains with: learning rates at which 6 steps move the losses clearly
SETTINGS = {"lst": {"lr": 1e-2, "reduction_factor": 2}, "full": {"lr": 3e-3}}
# float32 rounding differs by CPU kernel (ATEN_CPU_CAPABILITY) and AdamW carries it over steps;
# a change to the loop moves these numbers by far more
RTOL, ATOL = 1e-4, 1e-6


def tiny_run(files: Path, method: str, **settings) -> TrainingRun:
    """A seeded run on the tiny model, built in memory (no run folder)."""
    torch.set_num_threads(1)          # as tests/conftest.py, for the script that prints goldens
    cfg = TrainConfig(model=str(files / "tiny"), train=str(files / "train.csv"),
                      eval=str(files / "eval.csv"), method=method, epochs=1, batch_size=8,
                      device="cpu", progress=False, seed=0, **{**SETTINGS[method], **settings})
    return TrainingRun(cfg, log=lambda *args: None).setup(write=False)


def one_epoch(run: TrainingRun) -> None:
    """The first epoch's steps through the run's own `train_on`, as `run_epoch` takes them."""
    progress = run.begin_epoch(0, show=False)
    for indices in progress:
        run.train_on(0, indices, run.batch(indices), progress)
    progress.close()


def losses(files: Path, method: str) -> dict:
    run = tiny_run(files, method)
    one_epoch(run)
    return {"train_loss": [loss for _, loss in run.state.history["train_loss"]],
            "eval_loss": run.evaluate()["loss"]}


@pytest.mark.numerics
@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_a_seeded_tiny_run_matches_its_golden_losses(files, method):
    got = losses(files, method)
    assert len(got["train_loss"]) == 6                          # 48 examples / 8
    for name, golden in GOLDEN[method].items():
        torch.testing.assert_close(torch.tensor(got[name], dtype=torch.float64),
                                   torch.tensor(golden, dtype=torch.float64),
                                   rtol=RTOL, atol=ATOL, msg=f"{method} {name}")


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_the_goldens_would_catch_a_change_in_the_learning_rate(files, method):
    """Not trivially tolerant: a 10% larger learning rate moves the losses past the tolerance."""
    run = tiny_run(files, method, lr=1.1 * SETTINGS[method]["lr"])
    one_epoch(run)
    moved = [loss for _, loss in run.state.history["train_loss"]]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(torch.tensor(moved, dtype=torch.float64),
                                   torch.tensor(GOLDEN[method]["train_loss"], dtype=torch.float64),
                                   rtol=RTOL, atol=ATOL)


# ---- gradient clipping ------------------------------------------------------------------------

def gradient_norms_the_optimizer_steps_on(run: TrainingRun, steps: int) -> tuple[list, list]:
    """(the norm `train_on` reports, the norm of the gradients AdamW then reads) per step."""
    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad.reshape(-1) for group in optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        seen.append(float(torch.cat(grads).norm()))

    hook = run.optimization.optimizer.register_step_pre_hook(record)
    reported = []
    original = run.optimization.step

    def step():
        reported.append(original())
        return reported[-1]

    run.optimization.step = step
    progress = run.begin_epoch(0, show=False)
    for indices in itertools.islice(progress, steps):
        run.train_on(0, indices, run.batch(indices), progress)
    progress.close()
    hook.remove()
    return reported, seen


def assert_clipped(reported: list, seen: list, max_grad_norm: float) -> None:
    assert len(seen) == len(reported) > 0
    assert all(norm > 10 * max_grad_norm for norm in reported)      # far above the limit
    assert seen == pytest.approx([max_grad_norm] * len(seen), rel=1e-4)


@pytest.mark.parametrize("method", ["lst", "full"])
def test_the_optimizer_steps_on_gradients_clipped_to_max_grad_norm(files, method):
    run = tiny_run(files, method, max_grad_norm=1e-3)
    assert_clipped(*gradient_norms_the_optimizer_steps_on(run, steps=3), max_grad_norm=1e-3)


def test_gradients_under_max_grad_norm_are_left_as_they_are(files):
    run = tiny_run(files, "lst", max_grad_norm=1e6)
    reported, seen = gradient_norms_the_optimizer_steps_on(run, steps=2)
    assert seen == pytest.approx(reported, rel=1e-5)


def test_the_clipping_check_fails_when_max_grad_norm_is_ignored(files, monkeypatch):
    """The check above is not vacuous: with clipping turned into a mere norm, AdamW steps on the
    raw gradients and the check fails."""
    def norm_only(params, max_norm, *args, **kwargs):
        return torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None]).norm()

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", norm_only)
    run = tiny_run(files, "lst", max_grad_norm=1e-3)
    reported, seen = gradient_norms_the_optimizer_steps_on(run, steps=3)
    assert seen == pytest.approx(reported, rel=1e-5)
    with pytest.raises(AssertionError):
        assert_clipped(reported, seen, max_grad_norm=1e-3)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        root = write_tiny_files(Path(folder))
        print({method: losses(root, method) for method in sorted(GOLDEN)})
