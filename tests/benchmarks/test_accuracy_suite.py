"""The accuracy suite's own logic: data splits, learning-rate choice on dev, the report."""

from __future__ import annotations

import csv
import json

import accuracy_suite as suite
import data
import pytest
import suite_report


def test_data_files_are_disjoint_stratified_and_written_once(tmp_path):
    spec = data.DataSpec("bbc-news", 100, 50, None, 64)
    paths = data.write_data(spec, tmp_path)
    rows = {split: list(csv.DictReader(open(path))) for split, path in paths.items()}
    assert (len(rows["train"]), len(rows["dev"]), len(rows["test"])) == (100, 50, 445)
    ids = [{r["id"] for r in rows[split]} for split in ("train", "dev", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len({r["label"] for r in rows["dev"]}) == 5          # every class on every side
    stamp = paths["train"].stat().st_mtime_ns
    data.write_data(spec, tmp_path)
    assert paths["train"].stat().st_mtime_ns == stamp           # reused, not rewritten
    data.write_data(data.DataSpec("bbc-news", 60, 50, None, 64), tmp_path)
    assert len(list(csv.DictReader(open(paths["train"])))) == 60  # another spec: rewritten


def fake_training(scores: dict):
    """A Suite.train that returns `scores[lr]` as dev accuracy, recording what was trained."""
    trained = []

    def train(self, dataset, model, method, lr, seed, variant="", flags=()):
        trained.append(lr)
        accuracy = scores.get(lr, 0.0)
        return {"eval": {"accuracy": accuracy, "macro_f1": accuracy, "loss": 1 - accuracy}}
    return train, trained


def test_the_best_dev_rate_is_chosen_inside_the_grid(monkeypatch, tmp_path):
    train, trained = fake_training({3e-4: 0.5, 1e-3: 0.9, 3e-3: 0.7, 1e-2: 0.6})
    monkeypatch.setattr(suite.Suite, "train", train)
    swept = suite.Suite(tmp_path).sweep("bbc-news", "minilm", "lst")
    assert swept["chosen_lr"] == 1e-3 and trained == list(suite.LR_GRIDS["lst"])


def test_a_rate_winning_at_an_end_of_the_grid_gets_one_more_beyond(monkeypatch, tmp_path):
    train, trained = fake_training({1e-5: 0.1, 3e-5: 0.2, 1e-4: 0.3, 3e-4: 0.8, 1e-3: 0.9})
    monkeypatch.setattr(suite.Suite, "train", train)
    swept = suite.Suite(tmp_path).sweep("bbc-news", "minilm", "full")
    assert trained == [*suite.LR_GRIDS["full"], 1e-3]
    assert swept["chosen_lr"] == 1e-3


def test_ties_on_accuracy_go_to_macro_f1_then_loss():
    a = {"eval": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.3}}
    b = {"eval": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.2}}
    c = {"eval": {"accuracy": 0.9, "macro_f1": 0.7, "loss": 0.1}}
    assert max([a, b, c], key=suite._dev_rank) is b


def _summary(acc, mem):
    return {"accuracy_mean": acc, "accuracy_std": 0.5, "macro_f1_mean": acc,
            "peak_memory_mb": mem, "train_seconds": 1.0, "trainable_params": 10, "n": 3}


def _entry(model, method, acc, mem):
    return {"dataset": "d", "model": model, "method": method, "chosen_lr": 1e-3,
            "dev_by_lr": {"0.001": {"accuracy": 0.9, "macro_f1": 0.9, "loss": 0.1}},
            "seeds": [], "summary": _summary(acc, mem)}


def test_report_states_each_target_with_its_numbers(tmp_path):
    results = {"settings": {}, "ablations": {}, "methods": {
        "d/minilm/full": _entry("minilm", "full", 90.0, 900),
        "d/minilm/lora": _entry("minilm", "lora", 88.0, 700),
        "d/minilm/lst": _entry("minilm", "lst", 89.5, 200),
        "d/mpnet/lst": _entry("mpnet", "lst", 91.0, 800),
    }}
    (tmp_path / "suite-d.json").write_text(json.dumps(results))
    suite_report.write_report(tmp_path)
    checks = {c["target"]: c for c in json.loads((tmp_path / "targets.json").read_text())}
    assert checks["LST on MiniLM within 1.0 point of full fine-tuning"] == {
        "dataset": "d", "target": "LST on MiniLM within 1.0 point of full fine-tuning",
        "met": True, "detail": "full 90.00 ± 0.50, LST 89.50 ± 0.50: gap +0.50"}
    assert checks["LST at least as accurate as LoRA on minilm"]["met"] is True
    assert checks["LST on MPNet more accurate than every MiniLM method"]["met"] is True
    memory = checks["LST on MPNet below LoRA-on-MiniLM's peak memory"]
    assert memory["met"] is False and memory["detail"] == "800 vs 700 MiB"
    assert (tmp_path / "memory_vs_accuracy_d.png").stat().st_size > 1000
    rows = suite_report._rows(suite_report.load(tmp_path), "d")     # the report's row order
    assert [(r["model"], r["method"]) for r in rows] == [
        ("minilm", "full"), ("minilm", "lora"), ("minilm", "lst"), ("mpnet", "lst")]


def test_each_suspect_is_tried_alone_and_reported_against_the_defaults(monkeypatch, tmp_path):
    train, trained = fake_training({3e-4: 0.70, 1e-3: 0.72})
    monkeypatch.setattr(suite.Suite, "train", train)
    found = suite.Suite(tmp_path).explore("d", "minilm", 3e-4, 6)
    assert list(found) == list(suite.SUSPECTS) and trained == [3e-4, 1e-3] * len(suite.SUSPECTS)
    defaults = {"0.0003": {"accuracy": 0.71, "macro_f1": 0.7, "loss": 0.5}}
    results = {"settings": {}, "ablations": {}, "methods": {
        "d/minilm/lst": _entry("minilm", "lst", 89.5, 200)},
        "explore": {"d/minilm": {"dataset": "d", "model": "minilm", "lr": 3e-4,
                                 "defaults": defaults, "flags": suite.SUSPECTS,
                                 "suspects": found}}}
    (tmp_path / "suite-d.json").write_text(json.dumps(results))
    suite_report.write_report(tmp_path)
    explored = suite_report.load(tmp_path)["explore"]["d/minilm"]  # what the table is built from
    assert explored["suspects"]["r=4"] == {
        "0.0003": {"accuracy": 0.70, "macro_f1": 0.70, "loss": pytest.approx(0.30)},
        "0.001": {"accuracy": 0.72, "macro_f1": 0.72, "loss": pytest.approx(0.28)}}
    assert explored["flags"]["r=4"] == ["--reduction-factor", "4"]
    assert explored["defaults"] == defaults
    first = suite_report.explored(explored)[0]        # each suspect against the defaults
    assert first["suspect"] == "r=4" and first["flags"] == ["--reduction-factor", "4"]
    assert first["rates"] == [
        {"lr": 3e-4, "accuracy": pytest.approx(70.0), "defaults": pytest.approx(71.0),
         "vs_defaults": pytest.approx(-1.0)},
        {"lr": 1e-3, "accuracy": pytest.approx(72.0), "defaults": None, "vs_defaults": None}]


def test_finished_only_trains_nothing_and_lists_what_is_missing(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(suite.Suite, "_run", lambda self, command: calls.append(command))
    monkeypatch.setattr(suite, "write_data", lambda spec, folder: {
        split: folder / f"{split}.csv" for split in ("train", "dev", "test")})
    results = suite.run_suite(tmp_path, ("bbc-news",), ("minilm",), ("lora",),
                              out=tmp_path / "out" / "suite-bbc-news.json", finished_only=True)
    assert calls == [] and results["methods"] == {}
    assert results["missing"] == ["methods bbc-news/minilm/lora: bbc-news/minilm-lora-lr1e-4-s0 "
                                  "has not finished"]
    suite_report.write_report(tmp_path / "out")
    assert suite_report.load(tmp_path / "out")["missing"] == results["missing"]


@pytest.mark.parametrize("method", sorted(suite.LR_GRIDS))
def test_every_grid_is_four_log_spaced_rates(method):
    grid = suite.LR_GRIDS[method]
    assert len(grid) == 4
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(abs(r - suite.GRID_STEP) / suite.GRID_STEP < 0.06 for r in ratios), ratios


def test_next_rate_walks_the_one_three_ladder():
    assert [suite.next_rate(x, up=True) for x in (3e-4, 1e-3, 0.3)] == [1e-3, 3e-3, 1.0]
    assert [suite.next_rate(x, up=False) for x in (1e-5, 3e-4, 1e-2)] == [3e-6, 1e-4, 3e-3]


def test_texts_with_carriage_returns_survive_the_csv_files(tmp_path):
    from laddertune.app.data import load_texts
    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:   # as write_data writes
        writer = csv.writer(handle)
        writer.writerows([["id", "text", "label"], ["1", "a\rb", "x"], ["2", "c\nd, e", "y"]])
    assert load_texts(str(path)).texts == ["a\rb", "c\nd, e"]


def test_a_run_saved_before_a_field_existed_is_reused_only_at_that_fields_default():
    from laddertune.config import LSTConfig
    today = LSTConfig(num_labels=5).to_dict()
    before = {k: v for k, v in today.items() if k != "head_residual"}
    assert suite._same_lst(before, today)
    assert not suite._same_lst(before, {**today, "head_residual": True})
    assert not suite._same_lst({**before, "reduction_factor": 4}, today)
    assert not suite._same_lst({**today, "retired_field": 1}, today)
