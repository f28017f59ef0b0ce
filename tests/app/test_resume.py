"""kill -9 in the middle of an epoch, then the same command with --resume: nothing is lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_text_model, topic_rows, write_csv

SRC = str(Path(__file__).resolve().parents[2] / "src")
# The real CLI, with every step slowed down so the test can kill it mid-epoch.
SLOW_CLI = ("import sys, time, laddertune.app.trainer as t; collate = t.collate; "
            "delay = float(sys.argv.pop(1)); "
            "t.collate = lambda *a: (time.sleep(delay), collate(*a))[1]; "
            "from laddertune.app.cli import main; sys.exit(main())")


def _command(workdir, output, delay):
    return [sys.executable, "-c", SLOW_CLI, str(delay), "train",
            "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
            "--output", str(workdir / output), "--epochs", "3", "--batch-size", "8",
            "--lr", "1e-2", "--reduction-factor", "2", "--save-every", "2", "--seed", "0",
            "--device", "cpu", "--no-progress"]


def _env():
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_resume_after_kill_9_mid_epoch_gives_identical_final_metrics(tmp_path):
    save_tiny_text_model(tmp_path / "tiny")
    write_csv(tmp_path / "train.csv", topic_rows(40))     # 32 train rows: 4 steps per epoch

    reference = subprocess.run(_command(tmp_path, "ref", 0.0), env=_env(), capture_output=True,
                               text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]

    victim = subprocess.Popen(_command(tmp_path, "run", 0.25), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "run" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        # Step 6 is mid-epoch 2 (steps 5..8); its checkpoint exists, step 7 is under way.
        if progress.is_file() and json.loads(progress.read_text())["step"] >= 6:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "training ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    state = json.loads(progress.read_text())
    assert state["epochs_done"] == 1 and 6 <= state["step"] < 8     # killed mid-epoch 2
    assert not (tmp_path / "run" / "metrics.json").exists()

    resumed = subprocess.run(_command(tmp_path, "run", 0.0) + ["--resume"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout

    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    run_metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert run_metrics["eval"] == ref_metrics["eval"]
    assert run_metrics["history"] == ref_metrics["history"]          # every step's loss
    ref_weights = load_file(str(tmp_path / "ref" / "lst_model.safetensors"))
    run_weights = load_file(str(tmp_path / "run" / "lst_model.safetensors"))
    assert set(ref_weights) == set(run_weights)
    for name, value in ref_weights.items():
        torch.testing.assert_close(run_weights[name], value, rtol=0, atol=0)


def test_checkpoint_is_safetensors_and_round_trips(tmp_path):
    """Weights, AdamW moments, schedule and RNG come back; nothing is pickled."""
    import random

    import pytest
    import torch
    from safetensors import safe_open
    from transformers import get_linear_schedule_with_warmup

    from laddertune.app.state import STATE_FILE, TrainState, load_checkpoint, save_checkpoint
    from laddertune.errors import CheckpointError

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, optimizer, get_linear_schedule_with_warmup(optimizer, 2, 10)

    model, optimizer, scheduler = setup()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=1))
    expected = (torch.rand(1), random.random())
    with safe_open(str(tmp_path / STATE_FILE), framework="pt") as handle:
        assert "optimizer.0.exp_avg" in handle.keys()

    fresh, fresh_optimizer, fresh_scheduler = setup()
    state = load_checkpoint(tmp_path, fresh, fresh_optimizer, fresh_scheduler)
    assert state.step == 1 and (torch.rand(1), random.random()) == expected
    torch.testing.assert_close(fresh.weight, model.weight)
    torch.testing.assert_close(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()

    (tmp_path / STATE_FILE).write_bytes((tmp_path / STATE_FILE).read_bytes()[:-50])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path, *setup())
