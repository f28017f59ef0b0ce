"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[0], "README.md", "exec"), {"__name__": "readme"})
    assert "trainable params:" in capsys.readouterr().out
    assert (tmp_path / "side" / "lst_model.safetensors").is_file()


def test_readme_t5_example_trains_and_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[1], "README.md", "exec"), {"__name__": "readme"})
    assert "['positive', 'negative']" in capsys.readouterr().out
