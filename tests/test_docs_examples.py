"""The first Python example of docs/t5_example.md and docs/vision_language.md runs as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize("name, printed", [("t5_example.md", "['positive', 'negative']"),
                                           ("vision_language.md", "trainable params:")])
def test_docs_example_runs(name, printed, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], name, "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert printed in out
    if name == "t5_example.md":
        assert "accuracy: 1.00" in out
        assert (tmp_path / "t5-side" / "lst_model.safetensors").is_file()
    else:
        assert (tmp_path / "clip-t5-side" / "visual_projection.safetensors").is_file()
