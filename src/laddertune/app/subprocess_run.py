"""Run a laddertune module in a fresh Python process: the one way the application does it.

A process's peak resident memory only ever grows, so a training run or a measurement whose
memory is compared with another's needs a process of its own. `run_module` starts
``python -m MODULE ARGS...`` with this interpreter, and a failure comes back as `ChildFailed`
carrying one line: the child's last line on stderr, or how long it ran before it was stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CLI = "laddertune.app.cli"      # `run_module(CLI, ["train", ...])` is `laddertune train ...`


class ChildFailed(RuntimeError):
    """A child process exited non-zero or ran past its time; `str()` is one line."""

    def __init__(self, message: str, returncode: int | None):
        super().__init__(message)
        self.returncode = returncode      # None when it was stopped for running too long


def run_module(module: str, args: list[str], *, capture: bool = True,
               timeout: float | None = None, threads: int | None = None) -> str:
    """``python -m module *args`` to the end; its stdout (empty when not `capture`d: the child
    then writes to this process's terminal). `threads` sets the child's OMP_NUM_THREADS.

    Raises:
        ChildFailed: the child exited non-zero, or ran longer than `timeout` seconds.
    """
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", module, *map(str, args)]
    try:
        done = subprocess.run(command, capture_output=capture, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timed out after {timeout:.0f}s", None) from None
    if done.returncode != 0:
        last = ((done.stderr or "").strip().splitlines() or
                [f"exit status {done.returncode}"])[-1]
        raise ChildFailed(last, done.returncode)
    return done.stdout or ""


def last_json_line(stdout: str) -> dict:
    """The JSON object a child printed as its last line of output."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise ValueError("the child printed nothing; expected a JSON line")
    return json.loads(lines[-1])
