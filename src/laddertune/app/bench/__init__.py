"""Benchmarks: memory, speed, checkpoint size and accuracy of LST against the usual baselines.

Run ``laddertune bench --quick`` (or ``python -m laddertune.app.bench --quick``); see
benchmarks/README.md for what each number means.
"""

from .cli import add_arguments, run

__all__ = ["add_arguments", "run"]
