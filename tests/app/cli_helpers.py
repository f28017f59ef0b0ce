"""Helpers the CLI tests share: the tiny files they train on, an in-process `laddertune train`,
the one-line error check, and a simulated Ctrl-C. Fixtures built from them are in conftest.py."""

from __future__ import annotations

from pathlib import Path

from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app import trainer
from laddertune.app.cli import main


def write_tiny_files(root: Path) -> Path:
    """The tiny BERT folder `tiny`, `train.csv` (48 rows) and `eval.csv` (24 rows) under root."""
    save_tiny_text_model(root / "tiny")
    write_csv(root / "train.csv", topic_rows(48, seed=0))
    write_csv(root / "eval.csv", topic_rows(24, seed=1))
    return root


def train_cli(files: Path, output, *flags: str) -> int:
    """`laddertune train` on the tiny model and CSVs in `files`, in process; its exit status."""
    return main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--eval", str(files / "eval.csv"), "--output", str(output), *flags])


def one_line_error(capsys) -> str:
    """The one `error: ...` line on stderr (warnings may surround it), never a traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err), err
    return errors[0]


def interrupt_at_step(monkeypatch, n: int) -> None:
    """Make the n-th call of `trainer.train_step` raise KeyboardInterrupt, as Ctrl-C there would;
    `monkeypatch.undo()` gives the real step back."""
    real_step, calls = trainer.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", interrupted_step)
