"""The new-user probe's data cases: a file cut short, a file saved with another separator than
its name says, the label column passed as the text column, and macro-F1 on an eval split that
lacks a class. Each refusal is one line naming the fix, before anything is written."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from cli_helpers import one_line_error
from sklearn.metrics import f1_score
from tiny_models import topic_rows, write_csv

from laddertune.app.cli import main
from laddertune.app.data import load_texts
from laddertune.app.report import classification_metrics
from laddertune.errors import DataError, DataWarning

FLAGS = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
         "--device", "cpu", "--no-progress"]

# Rows as an export writes them: quoted texts holding commas and doubled quotes.
ROWS = [("goal match, said the \"coach\"", "sport"), ("bank, loan and tax", "money"),
        ("chip code, chip data", "tech"), ("team won the league", "sport")]


def _csv(rows=ROWS, separator=",", end="\n") -> str:
    def quoted(text):
        return '"' + text.replace('"', '""') + '"'
    return end.join([f"text{separator}label",
                     *(f"{quoted(text)}{separator}{label}" for text, label in rows)]) + end


def _write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def _error(path: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_texts(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- the readers ---------------------------------------------------------------------------------

def test_a_last_line_cut_mid_row_is_called_cut_short_not_a_comma_problem(tmp_path):
    cut = _write(tmp_path / "cut.csv", _csv() + "Elec")          # probe 14: no line end after it
    message = _error(cut)
    assert f"{cut} looks cut short: its last line (6) ends after 1 of the header's 2 fields" in (
        message)
    assert "export or download the file again, or delete that line" in message
    assert "commas" not in message
    quote = _write(tmp_path / "quote.csv", _csv() + '"Elec')     # cut inside a quoted text
    assert f"{quote} looks cut short: its last line (6) opens a quote the file never closes" in (
        _error(quote))


def test_a_short_row_or_open_quote_before_the_end_keeps_its_own_message(tmp_path):
    middle = _write(tmp_path / "middle.csv", "text,label\nhello, world,a\nbye,b\n")
    assert "line 2 has 3 fields but the header has 2 (text, label); quote texts that contain " \
           "commas" in _error(middle)
    # with a line break after it, a quote left open is as likely a typo as a cut
    typo = _write(tmp_path / "typo.csv", 'text,label\nhi,a\n"hello,b\n')
    assert "line 3: a quote opened in this row is never closed" in _error(typo)


@pytest.mark.parametrize("name, separator, end, message", [
    ("semicolon.csv", ";", "\n", "semicolon.csv separates its columns with ';', not commas; "
                                 "re-save it with commas (or with tabs, as .tsv)"),    # probe 16
    ("tabs_as.csv", "\t", "\r\n", "tabs_as.csv separates its columns with tabs, not commas; "
                                  "rename it tabs_as.tsv, or re-save it with commas"),  # probe 17
    ("commas.tsv", ",", "\n", "commas.tsv separates its columns with commas, not tabs; rename "
                              "it commas.csv, or re-save it with tabs"),
    ("pipes.csv", "|", "\n", "pipes.csv separates its columns with '|', not commas"),
])
def test_a_file_saved_with_another_separator_is_named_from_its_header(tmp_path, name, separator,
                                                                      end, message):
    path = _write(tmp_path / name, "\n" + _csv(separator=separator, end=end))  # a blank first line
    assert message in _error(path)


def test_a_single_column_file_is_no_separator_mistake(tmp_path):
    path = _write(tmp_path / "texts.csv", "text\nhello; world\nbye | now\n")   # to predict on
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert load_texts(path, need_labels=False).texts == ["hello; world", "bye | now"]


def test_the_label_column_as_the_text_column_is_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", topic_rows(12))
    expected = ("--text-column and --label-column both name 'label'; pass the column that holds "
                "the texts to --text-column")
    assert _error(path, text_column="label") == expected
    assert _error(path, text_column="label", need_labels=False) == expected    # predict too
    assert _error(path, text_column="topic", label_column="topic").startswith(
        "--text-column and --label-column both name 'topic'")


# ---- macro-F1 ------------------------------------------------------------------------------------

def _probs(predicted: list[int], num_labels: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), num_labels).float() * 0.9 + 0.025


def test_macro_f1_is_scikit_learns_over_the_classes_the_eval_data_holds_or_predicts():
    names = ["money", "sport", "tech", "weather"]
    truth, predicted = [0, 0, 1, 1, 1], [0, 2, 1, 1, 0]    # tech predicted, never true; no weather
    with pytest.warns(DataWarning, match=re.escape(
            "the eval data has no example of 2 of 4 classes (tech, weather); macro-F1 averages "
            "over the classes it holds or predicts")):
        scores = classification_metrics(_probs(predicted, 4), torch.tensor(truth), names)
    assert scores["macro_f1"] == round(f1_score(truth, predicted, average="macro"), 6)
    assert scores["macro_f1"] != round(f1_score(truth, predicted, average="macro",
                                                labels=[0, 1, 2, 3], zero_division=0), 6)
    assert scores["classes_absent_from_eval"] == ["tech", "weather"]
    assert scores["per_class"]["weather"] == {"precision": None, "recall": None, "f1": None,
                                              "support": 0, "absent_from_eval": True}
    assert scores["per_class"]["tech"] == {"precision": 0.0, "recall": None, "f1": 0.0,
                                           "support": 0, "absent_from_eval": True}
    assert scores["per_class"]["sport"]["support"] == 3 and scores["confusion_matrix"][3] == [0] * 4


def test_with_every_class_in_the_eval_data_nothing_changes(recwarn):
    truth, predicted = [0, 1, 2, 2], [0, 2, 2, 1]
    scores = classification_metrics(_probs(predicted, 3), torch.tensor(truth), ["a", "b", "c"])
    assert scores["macro_f1"] == round(f1_score(truth, predicted, average="macro"), 6)
    assert scores["classes_absent_from_eval"] == []
    assert all(set(row) == {"precision", "recall", "f1", "support"}
               for row in scores["per_class"].values())
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


# ---- through the command line --------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(files):
    write_csv(files / "no_tech.csv", topic_rows(16, seed=2, topics=["money", "sport"]))
    return files


@pytest.mark.parametrize("name, content, extra, words", [
    ("truncated.csv", _csv() + "Elec", [], "looks cut short"),
    ("semicolon.csv", _csv(separator=";"), [], "separates its columns with ';', not commas"),
    ("tabs_as.csv", _csv(separator="\t"), [], "rename it tabs_as.tsv"),
    ("good.csv", _csv(), ["--text-column", "label"], "--text-column and --label-column both "
                                                     "name 'label'"),
])
def test_train_refuses_before_writing_anything(files, tmp_path, capsys, name, content, extra,
                                               words):
    train = _write(tmp_path / name, content)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["train", "--model", str(files / "tiny"), "--train", train,
                 "--output", str(tmp_path / "run"), *FLAGS, *extra])
    assert code == 2
    assert words in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no run, lock or temp file


@pytest.fixture(scope="module")
def run_without_tech_in_eval(files):
    out = files / "run"
    assert main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--eval", str(files / "no_tech.csv"), "--output", str(out), *FLAGS]) == 0
    return out


def test_a_run_whose_eval_lacks_a_class_says_so_and_scores_as_scikit_learn(
        run_without_tech_in_eval):
    scores = json.loads((run_without_tech_in_eval / "metrics.json").read_text())["eval"]
    assert scores["classes_absent_from_eval"] == ["tech"]
    assert scores["per_class"]["tech"]["recall"] is None
    matrix = scores["confusion_matrix"]                      # rows: true, columns: predicted
    truth = [t for t, row in enumerate(matrix) for p, n in enumerate(row) for _ in range(n)]
    predicted = [p for row in matrix for p, n in enumerate(row) for _ in range(n)]
    assert scores["macro_f1"] == round(f1_score(truth, predicted, average="macro"), 6)
    report = (run_without_tech_in_eval / "report.md").read_text()
    assert "| tech |" in report and "n/a" in report and "No eval example of tech" in report


def test_eval_warns_in_one_line_when_the_data_lacks_a_class(files, run_without_tech_in_eval,
                                                            capsys):
    assert main(["eval", "--checkpoint", str(run_without_tech_in_eval),
                 "--data", str(files / "no_tech.csv")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["classes_absent_from_eval"] == ["tech"]
    assert [line for line in err.splitlines() if "no example of" in line] == [
        "warning: the eval data has no example of 1 of 3 classes (tech); macro-F1 averages over "
        "the classes it holds or predicts, as scikit-learn's does"]


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_refuse_the_label_column_as_text(files, run_without_tech_in_eval,
                                                         tmp_path, capsys, command):
    output = ["--output", str(tmp_path / "p.csv")] if command == "predict" else []
    assert main([command, "--checkpoint", str(run_without_tech_in_eval), "--data",
                 str(files / "eval.csv"), "--text-column", "label", *output]) == 2
    assert "--text-column and --label-column both name 'label'" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_text_to_text_macro_f1_is_scikit_learns_over_the_classes_present():
    """A generate run scored as a classifier averages F1 as classification_metrics does."""
    from types import SimpleNamespace

    from laddertune.app.generate_task import GenerateTask
    task = SimpleNamespace(labels=["money", "sport", "tech"],
                           words={"money": "money", "sport": "sport", "tech": "tech"})
    references = ["money", "money", "sport", "sport"]            # no tech in the eval data
    answers = ["money", "sport", "sport", "weather"]              # one answer names no class
    with pytest.warns(DataWarning, match=r"no example of 1 of 3 classes \(tech\)"):
        scores = GenerateTask.class_scores(task, answers, references)
    expected = f1_score([0, 0, 1, 1], [0, 1, 1, -1], labels=[0, 1], average="macro")
    assert scores["macro_f1"] == pytest.approx(expected, abs=1e-6)
    assert scores["classes_absent_from_eval"] == ["tech"]
    assert scores["unmatched"] == 1
