"""What a new user gets wrong, end to end through the CLI: each ends with exit status 2 and one
line naming the fix, or a correct result; never a traceback, never something silently wrong, and
nothing already written is lost."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cli_helpers import interrupt_at_step, one_line_error, train_cli
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main

FLAGS = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
         "--device", "cpu", "--no-progress", "--save-every", "2"]


def train(files, output, *extra):
    return train_cli(files, output, *FLAGS, *extra)


@pytest.fixture(scope="module")
def finished(files):
    out = files / "finished"
    assert train(files, out) == 0
    return out


def snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- flags out of range: refused before anything is written -------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--seed", "-1"], "--seed must be a whole number from 0"),
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1)"),
    (["--max-length", "1024"], "exceeds the 64 positions"),
    (["--resume", "--overwrite"], "contradict each other"),
])
def test_bad_training_flags_write_nothing(files, tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    assert train(files, out, *extra) == 2
    assert words in one_line_error(capsys)
    assert not out.exists()


def test_output_that_is_a_file_is_refused(files, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    assert train(files, target) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert target.read_text() == "keep me"


def test_model_folder_with_only_a_config_is_refused(files, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((files / "tiny" / "config.json").read_text())
    code = main(["train", "--model", str(bare), "--train", str(files / "train.csv"),
                 "--output", str(tmp_path / "run"), *FLAGS])
    assert code == 2
    line = one_line_error(capsys)
    assert str(bare) in line and "complete Hugging Face model folder" in line


# ---- a run folder in use -------------------------------------------------------------------------

def test_a_folder_holding_a_run_is_never_mixed_with_another(files, finished, capsys):
    before = snapshot(finished)
    assert train(files, finished, "--lr", "3e-3") == 2
    assert "already holds a run" in one_line_error(capsys)
    assert snapshot(finished) == before


def test_interrupted_overwrite_leaves_the_old_run_whole(files, finished, monkeypatch, capsys):
    before = snapshot(finished)
    interrupt_at_step(monkeypatch, 3)   # after the first checkpoint of the new run
    assert train(files, finished, "--overwrite", "--seed", "7") == 130
    assert "still holds the old run, unchanged" in capsys.readouterr().err
    assert snapshot(finished) == before
    assert [p.name for p in finished.parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert main(["eval", "--checkpoint", str(finished), "--data", str(files / "eval.csv")]) == 0


def test_finished_overwrite_replaces_the_whole_run(files, tmp_path):
    out = tmp_path / "run"
    assert train(files, out) == 0
    (out / "stray.txt").write_text("from the old run")
    assert train(files, out, "--overwrite", "--seed", "3") == 0
    assert not (out / "stray.txt").exists()
    assert json.loads((out / "run.json").read_text())["seed"] == 3
    assert json.loads((out / "metrics.json").read_text())["seed"] == 3


def test_kill_between_the_two_renames_of_an_overwrite_is_completed(files, tmp_path):
    from laddertune.app.run_folder import _recover_interrupted_swap
    out = tmp_path / "run"
    assert train(files, out) == 0
    new = tmp_path / ".run.overwrite"
    assert train(files, new) == 0              # a finished new run, as commit() leaves it
    out.rename(tmp_path / ".run.replaced")     # the first rename happened, then the kill
    _recover_interrupted_swap(out)
    assert (out / "metrics.json").is_file() and not new.exists()
    assert not (tmp_path / ".run.replaced").exists()


# ---- resume ----------------------------------------------------------------------------------

@pytest.fixture
def unfinished(files, tmp_path, monkeypatch):
    """A run stopped by Ctrl-C after its checkpoint at step 4 (of 6 steps in 1 epoch)."""
    out = tmp_path / "unfinished"
    interrupt_at_step(monkeypatch, 5)
    assert train(files, out, "--epochs", "2", "--lr", "5e-3") == 130
    monkeypatch.undo()
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    return out


@pytest.mark.parametrize("extra, flag", [(["--lr", "1e-3"], "--lr"),
                                         (["--reduction-factor", "4"], "--reduction-factor"),
                                         (["--epochs", "3"], "--epochs")])
def test_resume_refuses_a_flag_it_cannot_honour(files, unfinished, capsys, extra, flag):
    before = snapshot(unfinished)
    assert train(files, unfinished, "--epochs", "2", "--lr", "5e-3", *extra, "--resume") == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: {flag} ") and "cannot change it" in line
    assert snapshot(unfinished) == before


def test_resume_takes_the_flags_left_out_from_the_run(unfinished, capsys):
    stale = unfinished / "checkpoint" / ".state.safetensors.abc123.tmp"
    stale.write_bytes(b"half a file from a killed writer")
    assert main(["train", "--output", str(unfinished), "--resume", "--no-progress"]) == 0
    metrics = json.loads((unfinished / "metrics.json").read_text())
    assert metrics["lr"] == 5e-3 and metrics["epochs"] == 2 and metrics["steps"] == 12
    assert not stale.exists()
    assert list(unfinished.rglob("*.tmp")) == []


def test_resume_with_nothing_to_resume_is_refused(files, tmp_path, capsys):
    assert train(files, tmp_path / "nothing", "--resume") == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert not (tmp_path / "nothing").exists()


# ---- non-finite training ----------------------------------------------------------------------

def test_a_diverging_run_stops_with_its_step_and_writes_no_model(files, tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(out), "--method", "full", "--lr", "1e12", "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--no-progress"])
    assert code == 2
    line = one_line_error(capsys)
    assert "diverged at step" in line and "lower --lr (now 1e+12)" in line
    assert not out.exists()


def test_metrics_json_is_strict_json(tmp_path):
    from laddertune.checkpoint import save_json
    save_json({"loss": float("nan"), "nested": [float("inf"), 1.0]}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "nested": [None, 1.0]}


# ---- loading a run ---------------------------------------------------------------------------

def test_a_damaged_weights_file_is_caught_by_its_sha256(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(files, out) == 0
    weights = out / "lst_model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)       # the header still parses: only the digest can tell
    weights.write_bytes(bytes(data))
    assert main(["eval", "--checkpoint", str(out), "--data", str(files / "eval.csv")]) == 2
    line = one_line_error(capsys)
    assert "lst_model.safetensors" in line and "sha256" in line


def test_run_json_without_labels_is_refused(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(files, out) == 0
    info = json.loads((out / "run.json").read_text())
    del info["labels"]
    (out / "run.json").write_text(json.dumps(info))
    assert main(["eval", "--checkpoint", str(out), "--data", str(files / "eval.csv")]) == 2
    assert "lacks 'labels'" in one_line_error(capsys)


def test_eval_batch_size_zero_is_refused(files, finished, capsys):
    assert main(["eval", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                 "--batch-size", "0"]) == 2
    assert "--batch-size must be a whole number >= 1" in one_line_error(capsys)


def test_predict_output_that_is_a_folder_is_refused(files, finished, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                 "--output", str(tmp_path)]) == 2
    assert "is a folder; pass a file path" in one_line_error(capsys)


# ---- what is left on disk --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lst", "lora", "adapter", "full"])
def test_run_files_are_written_0644(files, tmp_path, method):
    old = os.umask(0o022)
    try:
        out = tmp_path / method
        assert train(files, out, "--method", method) == 0
    finally:
        os.umask(old)
    for path in out.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from laddertune import checkpoint

    def ctrl_c(fd):
        raise KeyboardInterrupt

    (tmp_path / "file.bin").write_bytes(b"old")
    monkeypatch.setattr(checkpoint.os, "fsync", ctrl_c)   # Ctrl-C in the middle of the write
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write_bytes(tmp_path / "file.bin", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    assert (tmp_path / "file.bin").read_bytes() == b"old"


# ---- found by review ---------------------------------------------------------------------------

def test_resume_from_another_folder_reads_the_same_files(files, tmp_path, monkeypatch):
    monkeypatch.chdir(files)
    interrupt_at_step(monkeypatch, 5)
    out = tmp_path / "moved"
    assert main(["train", "--model", "tiny", "--train", "train.csv", "--output", str(out),
                 *FLAGS, "--epochs", "2"]) == 130
    monkeypatch.undo()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                  # relative paths would now miss the files
    assert main(["train", "--output", str(out), "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str(files / "tiny")


def test_resume_on_another_backbone_is_refused(files, unfinished, tmp_path, capsys):
    other = tmp_path / "other-tiny"
    save_tiny_text_model(other, seed=1)            # same architecture, other weights
    assert main(["train", "--output", str(unfinished), "--resume", "--model", str(other)]) == 2
    assert "--model" in one_line_error(capsys)


def test_resume_when_the_training_file_changed_is_refused(files, unfinished, tmp_path, capsys):
    changed = tmp_path / "train.csv"
    write_csv(changed, topic_rows(48, seed=9))
    assert main(["train", "--output", str(unfinished), "--resume", "--train", str(changed)]) == 2
    assert "--train" in one_line_error(capsys)


def test_resume_and_overwrite_together_are_refused_on_an_existing_run(files, finished, capsys):
    before = snapshot(finished)
    assert train(files, finished, "--resume", "--overwrite") == 2
    assert "contradict each other" in one_line_error(capsys)
    assert snapshot(finished) == before


def test_resume_compares_the_effective_lst_settings(files, tmp_path, monkeypatch, capsys):
    interrupt_at_step(monkeypatch, 5)
    out = tmp_path / "lst"
    assert train(files, out, "--epochs", "2", "--lst-gate-temperature", "0.5") == 130
    monkeypatch.undo()
    assert main(["train", "--output", str(out), "--resume", "--lst-gate-temperature", "0.2"]) == 2
    assert one_line_error(capsys).startswith("error: --lst-gate-temperature 0.2 differs")
    # the default value, named explicitly, changes nothing: accepted
    assert main(["train", "--output", str(out), "--resume", "--lst-dropout", "0.1"]) == 0


def test_a_folder_of_other_files_is_not_trained_into(files, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert train(files, tmp_path) == 2
    assert "folder of other files" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_second_train_on_a_folder_in_use_is_refused(files, tmp_path, capsys):
    import fcntl
    out = tmp_path / "busy"
    with open(tmp_path / ".busy.lock", "a") as held:      # what a running `train` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        assert train(files, out) == 2
    assert "another `laddertune train` is writing to" in one_line_error(capsys)
    assert not out.exists()


def test_a_max_length_with_no_room_for_text_is_refused(files, tmp_path, capsys):
    assert train(files, tmp_path / "short", "--max-length", "2") == 2
    assert "leaves no room for text" in one_line_error(capsys)


def test_ctrl_c_before_the_first_checkpoint_keeps_nothing(files, tmp_path, monkeypatch, capsys):
    interrupt_at_step(monkeypatch, 1)
    out = tmp_path / "early"
    assert train(files, out) == 130
    assert "nothing was kept; run the same command again" in capsys.readouterr().err
    assert not out.exists()


def test_run_json_with_edited_labels_is_refused(files, finished, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    info = json.loads((copy / "run.json").read_text())
    info["labels"] = ["a"]
    (copy / "run.json").write_text(json.dumps(info))
    assert main(["predict", "--checkpoint", str(copy), "--data", str(files / "eval.csv"),
                 "--output", str(tmp_path / "p.csv")]) == 2
    assert "lists labels ['a']" in one_line_error(capsys)
    assert not (tmp_path / "p.csv").exists()


# ---- refusals leave nothing: no lock, no folder, no temporary file -----------------------------

def test_a_refusal_under_missing_folders_makes_none_of_them(files, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    assert train(files, out, "--resume") == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_destination_lets_its_lock_go_at_once(files, finished):
    """The refusal comes after the lock is taken; it must be released (and its file removed)
    before the error reaches the caller, not when the process ends."""
    from laddertune.app.options import TrainConfig, UsageError
    from laddertune.app.run_folder import Destination
    cfg = TrainConfig(train=str(files / "train.csv"), output=str(finished))
    for _ in range(2):                  # a lock still held would make the second one 'in use'
        with pytest.raises(UsageError, match="already holds a run"):
            Destination(cfg)
    assert [p.name for p in finished.parent.glob(".*.lock")] == []


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", ["train", "predict"])
def test_an_output_in_a_folder_that_takes_no_files_is_one_line(files, finished, capsys, command):
    if command == "train":
        code = train(files, "/proc/laddertune-run")
    else:
        code = main(["predict", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                     "--output", "/proc/predictions.csv"])
    assert code == 2
    line = one_line_error(capsys)
    assert "/proc takes no new files" in line and "a folder you can write to" in line


@pytest.mark.parametrize("command", ["train", "predict"])
def test_an_output_below_a_file_is_one_line(files, finished, tmp_path, capsys, command):
    (tmp_path / "afile").write_text("keep me")
    below = tmp_path / "afile" / "sub"
    if command == "train":
        code = train(files, below)
    else:
        code = main(["predict", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                     "--output", str(below / "p.csv")])
    assert code == 2
    assert "afile is a file, not a folder" in one_line_error(capsys)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_predict_makes_the_missing_folders_of_its_output_as_train_does(files, finished, tmp_path):
    out = tmp_path / "new" / "p.csv"
    assert main(["predict", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                 "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1 + 24


def test_predict_refuses_an_id_column_the_file_lacks(files, finished, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(finished), "--data", str(files / "eval.csv"),
                 "--id-column", "nope", "--output", str(out)]) == 2
    assert "has no column 'nope' (it has: text, label)" in one_line_error(capsys)
    assert not out.exists()


def test_a_refused_sweep_leaves_no_lock_and_no_folder(files, tmp_path, capsys):
    (tmp_path / "cols.csv").write_text("body,label\nmatch goal,sport\nbank price,money\n")
    code = main(["sweep", "--model", str(files / "tiny"), "--train", str(tmp_path / "cols.csv"),
                 "--output", str(tmp_path / "out" / "sweep"), "--grid", "lr=1e-3,3e-3",
                 "--no-progress", "--device", "cpu"])
    assert code == 2
    assert "has no column 'text'" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cols.csv"]
