"""The one subprocess runner of the application: output back, failures as one line."""

import pytest

from laddertune.app.subprocess_run import ChildFailed, last_json_line, run_module


def test_a_childs_stdout_comes_back_and_its_last_json_line_is_read():
    out = run_module("json.tool", ["--help"])
    assert "usage" in out
    assert last_json_line('progress\n{"a": 1}\n') == {"a": 1}


def test_a_failing_child_is_one_line_naming_what_went_wrong():
    with pytest.raises(ChildFailed) as failed:
        run_module("no_such_module_of_laddertune", [])
    assert "No module named" in str(failed.value) and "\n" not in str(failed.value)
    assert failed.value.returncode == 1


def test_a_child_past_its_time_is_stopped():
    with pytest.raises(ChildFailed, match="timed out after 0s") as failed:
        run_module("laddertune.app.cli", ["--help"], timeout=0.01)
    assert failed.value.returncode is None
