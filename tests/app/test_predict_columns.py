"""`predict` keeps the input's columns: all by default, those --keep-columns names, or none;
between the id (or row) column and the predicted ones, for classify and generate runs."""

import csv
import json

import pytest
from tiny_models import save_tiny_lm, save_tiny_text_model, symbol_pairs, topic_rows, write_csv

from laddertune.app.cli import main

FLAGS = ["--epochs", "1", "--batch-size", "16", "--reduction-factor", "2", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_columns")
    save_tiny_text_model(folder / "bert")
    save_tiny_lm(folder / "gpt2", "gpt2")
    write_csv(folder / "topics.csv", topic_rows(40))
    write_csv(folder / "pairs.csv", symbol_pairs(40, length=2))
    for name, model, data, extra in (("classify", "bert", "topics.csv", []),
                                     ("generate", "gpt2", "pairs.csv", ["--task", "generate"])):
        assert main(["train", "--model", str(folder / model), "--train", str(folder / data),
                     "--output", str(folder / name), *FLAGS, *extra]) == 0
    rows = [{"id": f"n{i}", "text": r["text"], "label": r["label"], "source": f"feed {i}"}
            for i, r in enumerate(topic_rows(5, seed=3))]
    write_csv(folder / "new.csv", rows)
    return folder


def predict(runs, run, data, *extra) -> list[list[str]]:
    out = runs / f"{run}-{len(extra)}.csv"
    assert main(["predict", "--checkpoint", str(runs / run), "--data", str(runs / data),
                 "--output", str(out), *extra]) == 0
    with open(out, newline="") as handle:
        return list(csv.reader(handle))


def test_every_column_is_kept_by_default_one_named_like_a_prediction_renamed(runs):
    header, *rows = predict(runs, "classify", "new.csv")
    assert header == ["id", "text", "input_label", "source", "label", "prob_money",
                      "prob_sport", "prob_tech"]
    with open(runs / "new.csv", newline="") as handle:
        given = list(csv.DictReader(handle))
    assert [r[:4] for r in rows] == [[g["id"], g["text"], g["label"], g["source"]]
                                     for g in given]


def test_keep_columns_chooses_them_in_its_order_and_none_keeps_none(runs):
    header, *rows = predict(runs, "classify", "new.csv", "--keep-columns", "source,text")
    assert header[:3] == ["id", "source", "text"] and header[3] == "label"
    assert rows[2][1] == "feed 2"
    header, *_ = predict(runs, "classify", "new.csv", "--keep-columns", "none", "--batch-size",
                         "2")
    assert header == ["id", "label", "prob_money", "prob_sport", "prob_tech"]


def test_a_generate_run_keeps_them_too(runs):
    rows = symbol_pairs(3, seed=4, length=2)
    write_csv(runs / "prompts.csv", [{**r, "tags": "x"} for r in rows])
    header, *out = predict(runs, "generate", "prompts.csv")
    assert header == ["row", "prompt", "target", "tags", "generated"]
    assert [r[1] for r in out] == [r["prompt"] for r in rows]


def test_json_values_are_written_as_json_and_missing_ones_empty(runs):
    records = [{"text": "goal match", "meta": {"n": 1}, "note": None},
               {"text": "bank money", "meta": [1, 2], "note": "b"}]
    (runs / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    header, *rows = predict(runs, "classify", "new.jsonl")
    assert header[:4] == ["row", "text", "meta", "note"]
    assert [r[2:4] for r in rows] == [['{"n": 1}', ""], ["[1, 2]", "b"]]


def test_an_unknown_column_is_refused_before_the_model_loads(runs, capsys):
    out = runs / "refused.csv"
    assert main(["predict", "--checkpoint", str(runs / "classify"), "--data",
                 str(runs / "new.csv"), "--output", str(out), "--keep-columns",
                 "text,sorce"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --keep-columns 'text,sorce' names no column sorce of {runs / 'new.csv'} (it "
        "has: id, text, label, source); pass some of those, or 'none'"]
    assert not out.exists()
