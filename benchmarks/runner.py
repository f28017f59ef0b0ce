"""How every script here runs the product and keeps what it measured.

- `laddertune(...)`: one `laddertune` command in a fresh process (so its peak memory is its
  own), through the product's own subprocess runner; a failure is one line, `RunFailed`.
- `laddertune_json(...)`: the same, for a command that prints its result as JSON (`eval`).
- `write_json` / `write_text`: a result file written atomically (a temporary file, then a
  rename) and commit-friendly (two-space indent, keys in the order they were made, a final
  newline), so a script stopped half-way leaves whole files only.
- `ResultFiles`: one JSON file per finished run, written as the run finishes; a report is rebuilt
  from these files, so an interrupted script loses nothing and a rerun skips what is there.

The scripts are run from the repository root as ``python benchmarks/NAME.py``; nothing in the
installed package imports them.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

from laddertune.app.bench.report import machine
from laddertune.app.subprocess_run import CLI, ChildFailed, run_module
from laddertune.checkpoint import atomic_write_bytes

__all__ = ["RunFailed", "ResultFiles", "comma_list", "laddertune", "laddertune_json",
           "machine", "read_json", "timed_laddertune", "write_json", "write_text"]


class RunFailed(RuntimeError):
    """A `laddertune` command failed; the message is one line naming the command."""


def laddertune(*args, threads: int | None = None, timeout: float | None = None,
               in_process: bool = False) -> str:
    """``laddertune *args`` in a fresh process with `threads` OMP threads; its stdout.
    `in_process`: the same command through `laddertune.app.cli.main` in this process, for
    tests, where a run's own peak memory does not matter and starting Python would dominate."""
    args = [str(a) for a in args]
    shown = " ".join(args[:5])
    if in_process:
        return _in_process(args, shown)
    try:
        return run_module(CLI, args, threads=threads, timeout=timeout)
    except ChildFailed as failed:
        raise RunFailed(f"laddertune {shown} ... failed: {failed}") from None


def _in_process(args: list[str], shown: str) -> str:
    from laddertune.app.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit:       # argparse refuses a flag or a choice this way
            code = exit.code if isinstance(exit.code, int) else 1
    if code:
        last = (err.getvalue().strip().splitlines() or [f"exit status {code}"])[-1]
        raise RunFailed(f"laddertune {shown} ... failed: {last}")
    return out.getvalue()


def laddertune_json(*args, threads: int | None = None, timeout: float | None = None,
                    in_process: bool = False) -> dict:
    """The JSON a `laddertune` command prints (all of its stdout)."""
    return json.loads(laddertune(*args, threads=threads, timeout=timeout, in_process=in_process))


def timed_laddertune(*args, threads: int | None = None) -> float:
    """Run one `laddertune` command; its wall time in seconds, process start included."""
    start = time.perf_counter()
    laddertune(*args, threads=threads)
    return time.perf_counter() - start


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, data) -> Path:
    """`data` as JSON at `path`, atomically, in a form that diffs well."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write_bytes(Path(path), text.encode())
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(Path(path), (text.rstrip("\n") + "\n").encode())
    return Path(path)


class ResultFiles:
    """One JSON file per finished run in `folder`, named by the run's key."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key.replace('/', '_').replace(' ', '_')}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        return read_json(path) if path.is_file() else None

    def put(self, key: str, result: dict) -> dict:
        write_json(self.path(key), result)
        return result

    def all(self) -> list[dict]:
        """Every result in the folder, in the order of their names."""
        return [read_json(path) for path in sorted(self.folder.glob("*.json"))]


def comma_list(text: str | None) -> tuple[str, ...]:
    """"a,b,,c" -> ("a", "b", "c")."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())
