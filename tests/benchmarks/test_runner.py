"""The scripts' shared runner: one-line failures, whole result files, one file per run."""

import json

import pytest
import runner


@pytest.mark.slow
def test_a_failed_laddertune_command_is_one_line_naming_the_command():
    with pytest.raises(runner.RunFailed) as failed:
        runner.laddertune("train", "--epochs", "0", "--train", "nowhere.csv", threads=1)
    message = str(failed.value)
    assert message.startswith("laddertune train --epochs 0 --train nowhere.csv ... failed: ")
    assert "error:" in message and "\n" not in message


def test_in_process_fails_the_same_way(capsys):
    with pytest.raises(runner.RunFailed, match="error:"):
        runner.laddertune("train", "--epochs", "0", "--train", "nowhere.csv", in_process=True)
    with pytest.raises(runner.RunFailed, match="invalid choice"):   # argparse exits instead
        runner.laddertune("train", "--method", "no-such-method", in_process=True)


def test_result_files_are_whole_and_one_per_run(tmp_path):
    kept = runner.ResultFiles(tmp_path / "rows")
    assert kept.get("minilm/lst b16") is None
    kept.put("minilm/lst b16", {"peak": 1.5, "model": "minilm"})
    kept.put("minilm/lora b16", {"peak": 2.0, "model": "minilm"})
    assert kept.get("minilm/lst b16") == {"peak": 1.5, "model": "minilm"}
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == [
        "minilm_lora_b16.json", "minilm_lst_b16.json"]        # no temporary file left
    assert [r["peak"] for r in kept.all()] == [2.0, 1.5]
    text = runner.write_json(tmp_path / "r.json", {"b": 1, "a": [1, 2]}).read_text()
    assert text.endswith("\n") and json.loads(text) == {"b": 1, "a": [1, 2]}
