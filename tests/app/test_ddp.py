
"""torchrun --nproc_per_node 2 runs `laddertune train` with DDP on CPU (gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_text_model, topic_rows, write_csv

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_side_weights_and_rank0_writes(tmp_path):
    save_tiny_text_model(tmp_path / "tiny")
    write_csv(tmp_path / "train.csv", topic_rows(40))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "laddertune.app.cli", "train", "--model", str(tmp_path / "tiny"),
               "--train", str(tmp_path / "train.csv"), "--output", str(out), "--epochs", "2",
               "--batch-size", "8", "--save-every", "3", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    rank0, rank1 = metrics["weights_sha256_per_rank"]
    assert rank0 == rank1                                  # both ranks hold the same side weights
    assert metrics["steps"] == 2 * 4                       # 32 rows / batch 8, split over ranks
    assert done.stdout.count("saved ") == 1                # one writer: rank 0
    assert done.stdout.count("epoch 1/2:") == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == ["checkpoint", "confusion_matrix.png", "learning_curve.png",
                       "lst_config.json", "lst_model.safetensors", "metrics.json", "report.md",
                       "run.json"]
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.safetensors",
                                                                      "trainer_state.json"]
