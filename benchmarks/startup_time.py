"""How soon the CLI answers: `laddertune --version`, and a SmolLM2 `laddertune train` from its
start to its first checkpoint after training step 1 (the GGUF cache warmed by a first run).

    python benchmarks/startup_time.py            # results in benchmarks/results/startup/
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from laddertune.app.bench.report import machine
from laddertune.checkpoint import atomic_write_bytes

CLI = [sys.executable, "-m", "laddertune.app.cli"]


def version_seconds(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        subprocess.run([*CLI, "--version"], check=True, capture_output=True)
        times.append(round(time.perf_counter() - tick, 3))
    return times


def first_step_seconds(train_file: Path, folder: Path) -> float:
    """Seconds from the command's start to the checkpoint written after step 1."""
    command = [*CLI, "train", "--model", "smollm2", "--train", str(train_file), "--epochs", "1",
               "--max-length", "16", "--batch-size", "4", "--no-progress", "--save-every", "1",
               "--account-shape", "none", "--output", str(folder)]
    tick = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while child.poll() is None:
            if any(folder.rglob("trainer_state.json")):
                return round(time.perf_counter() - tick, 2)
            time.sleep(0.05)
        raise RuntimeError(f"training ended (exit {child.returncode}) before a checkpoint")
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="benchmarks/startup_train.csv",
                        help="a small labelled CSV for the SmolLM2 run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/startup")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        first_step_seconds(Path(args.train), Path(work) / "warm")      # fills the GGUF cache
        steps = [first_step_seconds(Path(args.train), Path(work) / f"run{i}") for i in range(3)]
    result = {"machine": machine(), "version_seconds": version_seconds(args.repeats),
              "smollm2_first_step_seconds": steps,
              "command": "python benchmarks/startup_time.py"}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    where = result["machine"]
    lines = ["# CLI start-up", "", f"Machine: {where['cpu']}, {where['cores']} cores, torch "
             f"{where['torch']}. Command: `{result['command']}`.",
             "", "| what | median s | runs |", "|---|---|---|",
             f"| `laddertune --version` | {statistics.median(result['version_seconds']):.2f} | "
             f"{result['version_seconds']} |",
             f"| SmolLM2 `train`, start to first checkpoint (GGUF cache warm) | "
             f"{statistics.median(steps):.2f} | {steps} |", ""]
    atomic_write_bytes(out / "results.md", "\n".join(lines).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
