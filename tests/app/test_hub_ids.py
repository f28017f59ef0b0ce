"""--model ORG/NAME: a Hugging Face Hub model, fetched by huggingface_hub.snapshot_download at
--revision, both recorded in run.json; offline (HF_HUB_OFFLINE) without a cached copy, one line
that names HF_HUB_OFFLINE and the local-folder alternative.

No test makes a request: snapshot_download is replaced by a stand-in that serves a tiny model
folder laid out as the Hub's cache does (…/snapshots/<commit>)."""

import json

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FLAGS = ["--epochs", "1", "--batch-size", "16", "--reduction-factor", "2", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    folder = root / "models--acme--tiny-bert" / "snapshots" / COMMIT
    save_tiny_text_model(folder)
    write_csv(root / "train.csv", topic_rows(40))
    return folder


@pytest.fixture
def hub(snapshot, monkeypatch):
    """The calls made to snapshot_download; it serves `snapshot` when online or when the
    test marks it cached, and fails as the real one does offline otherwise."""
    calls, cached = [], []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False,
                          **_):
        calls.append({"repo_id": repo_id, "revision": revision,
                      "local_files_only": local_files_only})
        if local_files_only and not cached:
            raise LocalEntryNotFoundError("cannot find the requested files in the disk cache")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls, cached


def test_a_hub_id_trains_and_run_json_records_it_and_its_revision(snapshot, hub, tmp_path):
    calls, _ = hub
    output = tmp_path / "run"
    assert main(["train", "--model", "acme/tiny-bert", "--revision", "v1.0", "--train",
                 str(snapshot.parents[2] / "train.csv"), "--output", str(output), *FLAGS]) == 0
    assert calls == [{"repo_id": "acme/tiny-bert", "revision": "v1.0",
                      "local_files_only": False}]
    run = json.loads((output / "run.json").read_text())
    assert (run["model"], run["revision"], run["model_commit"]) == (
        "acme/tiny-bert", "v1.0", COMMIT)
    assert run["model_path"] == str(snapshot)
    # eval loads the files the run recorded: no second trip to the Hub
    assert main(["eval", "--checkpoint", str(output), "--data",
                 str(snapshot.parents[2] / "train.csv")]) == 0
    assert len(calls) == 1


def test_offline_with_a_cached_copy_loads_it(snapshot, hub, monkeypatch):
    from laddertune.app.aliases import resolve_model
    calls, cached = hub
    cached.append(True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_model("acme/tiny-bert")
    assert source.path == str(snapshot) and source.commit == COMMIT
    assert calls[-1]["local_files_only"] is True


def test_offline_without_a_copy_is_one_line_naming_the_way_out(snapshot, hub, monkeypatch,
                                                                tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "run"
    assert main(["train", "--model", "acme/tiny-bert", "--train",
                 str(snapshot.parents[2] / "train.csv"), "--output", str(output), *FLAGS]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: cannot load Hugging Face Hub model 'acme/tiny-bert': HF_HUB_OFFLINE is set and "
        "the Hub cache has no copy; go online with HF_HUB_OFFLINE unset, or pass a local model "
        "folder instead (--model DIR")
    assert not output.exists()


def test_no_network_is_one_line_too(hub, monkeypatch):
    from laddertune.app import aliases

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(aliases.DataError) as err:
        aliases.resolve_model("acme/tiny-bert", "main")
    assert "at revision 'main': the Hub cannot be reached (ConnectionError); go online with " \
           "HF_HUB_OFFLINE unset, or pass a local model folder" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_local_folder_is_never_looked_up_and_revision_is_refused_for_it(snapshot, hub,
                                                                          capsys):
    calls, _ = hub
    assert main(["train", "--model", str(snapshot), "--revision", "v1", "--train",
                 str(snapshot.parents[2] / "train.csv")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --revision is for a Hugging Face Hub id, and --model {snapshot} is a local "
        "model; drop --revision"]
    from laddertune.app.aliases import resolve_model
    assert resolve_model(str(snapshot)).path == str(snapshot) and calls == []
