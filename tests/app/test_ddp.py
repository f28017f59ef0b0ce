"""torchrun --nproc_per_node 2 runs `laddertune train` with DDP on CPU (gloo); each rank trains
on its own examples of a batch (`rank_shard`)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.trainer import rank_shard

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(tmp_path, out, *flags) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "laddertune.app.cli", "train", "--model", str(tmp_path / "tiny"),
               "--output", str(out), "--device", "cpu", "--no-progress", *flags]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_each_rank_gets_only_its_own_examples(size):
    indices = list(range(100, 100 + size))
    shards = [rank_shard(indices, rank, 3) for rank in range(3)]
    taken = [i for shard, weight in shards if weight > 0 for i in shard]
    assert sorted(taken) == indices                     # every example once, on one rank
    for shard, weight in shards:
        assert shard and set(shard) <= set(indices)     # every rank joins the all-reduce
        if weight == 0:                                 # no example of its own: adds nothing
            assert len(indices) < 3 and shard == indices[:1]
    assert sum(weight for _, weight in shards) == pytest.approx(3.0)


@pytest.mark.parametrize("size", [1, 3, 4])
def test_the_ranks_average_gradient_is_the_whole_batch_gradient(size):
    """What DDP computes (the mean over ranks of each rank's weighted shard gradient) against
    one process on the whole batch: equal up to float rounding, for a batch that divides
    evenly, one that does not, and one that leaves a rank without an example."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(size, 4), torch.randint(0, 3, (size,))

    def grad(rows, weight=1.0):
        model.zero_grad()
        (torch.nn.functional.cross_entropy(model(x[rows]), y[rows]) * weight).backward()
        return model.weight.grad.clone()

    world = 2
    ranks = [grad(*rank_shard(list(range(size)), rank, world)) for rank in range(world)]
    # float sums in another order differ in the last bits: compare with a tolerance
    torch.testing.assert_close(sum(ranks) / world, grad(list(range(size))))


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_side_weights_and_rank0_writes(tmp_path):
    save_tiny_text_model(tmp_path / "tiny")
    write_csv(tmp_path / "train.csv", topic_rows(40))
    out = tmp_path / "run"
    done = _torchrun(tmp_path, out, "--train", str(tmp_path / "train.csv"), "--epochs", "2",
                     "--batch-size", "8", "--save-every", "3")
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


@pytest.mark.slow
def test_a_last_batch_of_one_example_leaves_rank1_without_one_and_training_goes_on(tmp_path):
    save_tiny_text_model(tmp_path / "tiny")
    write_csv(tmp_path / "train.csv", topic_rows(17))          # batches of 8, 8 and 1
    write_csv(tmp_path / "eval.csv", topic_rows(8, seed=1))
    out = tmp_path / "run"
    done = _torchrun(tmp_path, out, "--train", str(tmp_path / "train.csv"), "--eval",
                     str(tmp_path / "eval.csv"), "--epochs", "2", "--batch-size", "8")
    assert done.returncode == 0, done.stderr[-3000:]          # rank 1 joined every all-reduce
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 3
    rank0, rank1 = metrics["weights_sha256_per_rank"]
    assert rank0 == rank1
