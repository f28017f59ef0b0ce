"""The CLI starts at once: --version, --help and flag or path errors come before torch and
transformers are imported (seconds on a small machine), and --help shows every default."""

import dataclasses
import subprocess
import sys

import pytest

from laddertune.app import adapters, options
from laddertune.app.options import TrainConfig

HEAVY = ("torch", "transformers")


def imported_modules(*argv: str) -> tuple[int, set[str], str]:
    """(exit status, top-level modules imported, stderr) of `laddertune ARGV` in a fresh
    Python, read off -X importtime rather than timed: a loaded machine makes timings noise."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "laddertune.app.cli",
                           *argv], capture_output=True, text=True, timeout=120)
    modules = {line.split("|")[-1].strip().split(".")[0]
               for line in done.stderr.splitlines() if line.startswith("import time:")}
    errors = "\n".join(line for line in done.stderr.splitlines()
                       if not line.startswith("import time:"))
    return done.returncode, modules, errors


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"],
                                  ["predict", "--help"]])
def test_version_and_help_import_neither_torch_nor_transformers(argv):
    status, modules, _ = imported_modules(*argv)
    assert status == 0
    assert not modules & set(HEAVY), argv


def test_a_flag_error_comes_before_torch(tmp_path):
    status, modules, errors = imported_modules("train", "--epochs", "0",
                                               "--output", str(tmp_path / "run"))
    assert status == 2 and errors.splitlines() == [
        "error: --epochs must be a whole number >= 1, got 0"]
    assert not modules & set(HEAVY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train --train", "eval --checkpoint x --data",
                                     "predict --checkpoint x --data"])
def test_a_missing_data_file_is_refused_before_torch(tmp_path, command):
    missing = tmp_path / "missing.csv"
    status, modules, errors = imported_modules(*command.split(), str(missing))
    assert status == 2
    assert errors.splitlines() == [f"error: {missing} does not exist; pass a .csv, .tsv, "
                                   ".jsonl, .json or .parquet file or a built-in data set "
                                   "(bbc-news, tweet-sentiment, bbc-headlines)"]
    assert not modules & set(HEAVY)


def test_help_shows_every_default(capsys):
    from laddertune.app.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("seed", "max_grad_norm", "num_beams", "temperature", "top_p", "epochs"):
        default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
        assert f"(default: {default})" in text, name
    assert "--lst-gate VALUE 'learnable' trains the gates; 'fixed' keeps them at their start " \
           "value. (default: learnable)" in text


def test_the_adapter_kinds_named_for_the_cli_are_the_adapters_own():
    assert options.ADAPTER_KINDS == adapters.ADAPTER_KINDS


def test_main_version_in_process_leaves_torch_unimported_when_it_was():
    """In-process as well: when nothing had imported torch, `main(["--version"])` does not."""
    code = ("import sys\nfrom laddertune.app.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'transformers') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]"
