"""The text-to-text comparison: the same model and data trained with --task classify and
--task generate, each through `laddertune train`."""

import json

import text2text
from tiny_models import save_tiny_lm, topic_rows, write_csv


def test_settings_become_train_flags():
    assert text2text.flags({"max_length": 48, "cache_backbone": True, "lr": 0.01}) == [
        "--max-length", "48", "--cache-backbone", "--lr", "0.01"]


def test_text_to_text_classification_is_reported_beside_a_classification_head(tmp_path):
    save_tiny_lm(tmp_path / "gpt2", "gpt2")
    write_csv(tmp_path / "topics.csv", topic_rows(48, seed=0))
    results = text2text.compare(str(tmp_path / "gpt2"), str(tmp_path / "topics.csv"), None,
                                tmp_path / "side-by-side",
                                {"epochs": 1, "batch_size": 16, "lr": 1e-2,
                                 "reduction_factor": 2, "device": "cpu"}, in_process=True)
    classify, generate = results["runs"]
    assert classify["task"] == "classify" and generate["task"] == "generate"
    assert classify["exact_match"] is None and generate["exact_match"] is not None
    assert 0 <= classify["accuracy"] <= 1 and 0 <= generate["accuracy"] <= 1
    saved = json.loads((tmp_path / "side-by-side" / "results.json").read_text())
    assert [run["task"] for run in saved["runs"]] == ["classify", "generate"]
    assert saved["settings"]["reduction_factor"] == 2 and saved["runs"][0]["epochs"] == 1
