"""`laddertune train / eval / predict`: a tiny local model end to end, help texts, bad input."""

import csv
import json

import pytest
from cli_helpers import train_cli
from tiny_models import save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main

TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--reduction-factor", "2",
               "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def workdir(files):
    save_tiny_text_model(files / "other", seed=1)         # same architecture, other weights
    return files


@pytest.fixture(scope="module")
def lst_run(workdir):
    assert train_cli(workdir, workdir / "run", *TRAIN_FLAGS) == 0
    return workdir / "run"


def test_train_writes_a_complete_run_folder(lst_run):
    metrics = json.loads((lst_run / "metrics.json").read_text())
    assert metrics["method"] == "lst"
    assert metrics["trainable_params"] < metrics["all_params"]
    assert metrics["train_seconds"] > 0 and metrics["peak_memory_mb"] > 0
    assert 0 <= metrics["eval"]["accuracy"] <= 1 and 0 <= metrics["eval"]["macro_f1"] <= 1
    assert metrics["steps"] == 2 * 6 == len(metrics["history"]["train_loss"])  # 48 rows / 8
    assert [e["epoch"] for e in metrics["history"]["eval"]] == [1, 2]
    run = json.loads((lst_run / "run.json").read_text())
    assert run["labels"] == ["money", "sport", "tech"] and run["method"] == "lst"
    for name in ("lst_config.json", "lst_model.safetensors", "report.md", "learning_curve.png",
                 "confusion_matrix.png", "checkpoint/state.safetensors"):
        assert (lst_run / name).is_file(), name
    assert not (lst_run / "model.safetensors").exists()   # no backbone copy
    assert len(metrics["epoch_seconds"]) == 2 and all(s > 0 for s in metrics["epoch_seconds"])
    assert set(metrics["model_files_sha256"]) == {"lst_config.json", "lst_model.safetensors"}


def test_report_has_per_class_scores_and_a_confusion_matrix(lst_run):
    scores = json.loads((lst_run / "metrics.json").read_text())["eval"]
    matrix = scores["confusion_matrix"]
    assert len(matrix) == 3 and sum(map(sum, matrix)) == scores["examples"] == 24
    assert sum(matrix[i][i] for i in range(3)) == round(scores["accuracy"] * 24)
    for name, row in zip(["money", "sport", "tech"], matrix):
        assert scores["per_class"][name]["support"] == sum(row)
    report = (lst_run / "report.md").read_text()
    assert "| class | precision | recall | F1 | support |" in report
    assert "| sport |" in report and "![confusion matrix](confusion_matrix.png)" in report


def test_progress_off_a_terminal_is_a_line_per_epoch(workdir, capsys):
    code = main(["train", "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
                 "--output", str(workdir / "quiet"), "--epochs", "2", "--batch-size", "8",
                 "--reduction-factor", "2", "--device", "cpu"])     # progress on, but no tty
    assert code == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err
    epoch_lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("examples/s" in line and "eval accuracy" in line for line in epoch_lines)


def test_eval_reproduces_the_training_metrics_without_model_flag(lst_run, workdir, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(lst_run), "--data", str(workdir / "eval.csv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    trained = json.loads((lst_run / "metrics.json").read_text())["eval"]
    for key in ("accuracy", "macro_f1"):
        assert printed[key] == pytest.approx(trained[key], abs=1e-6)
    assert printed["loss"] == pytest.approx(trained["loss"], abs=1e-5)


@pytest.mark.parametrize("flags, expected", [([], 8), (["--batch-size", "3"], 3)])
def test_eval_and_predict_batch_as_the_run_evaluated_unless_told(lst_run, workdir, monkeypatch,
                                                                 tmp_path, flags, expected):
    """LST evaluates at its training batch (8 here): `eval` and `predict` do too, since their
    forward holds every layer's state at once as training's eval did."""
    from laddertune.app.tasks import ClassifyTask
    seen = []
    evaluate, predict = ClassifyTask.evaluate, ClassifyTask.predict

    def recording(real):
        def call(self, model, encoded, *args, **kwargs):
            batch = args[1] if real is evaluate else args[0]
            seen.append(batch)
            return real(self, model, encoded, *args, **kwargs)
        return call
    monkeypatch.setattr(ClassifyTask, "evaluate", recording(evaluate))
    monkeypatch.setattr(ClassifyTask, "predict", recording(predict))
    assert json.loads((lst_run / "run.json").read_text())["eval_batch_size"] == 8
    data = str(workdir / "eval.csv")
    assert main(["eval", "--checkpoint", str(lst_run), "--data", data, *flags]) == 0
    assert main(["predict", "--checkpoint", str(lst_run), "--data", data,
                 "--output", str(tmp_path / "p.csv"), *flags]) == 0
    assert seen == [expected, expected]


def test_predict_writes_a_label_and_every_class_probability_per_row(lst_run, workdir):
    rows = [{"text": r["text"]} for r in topic_rows(7, seed=5)]      # no label column
    write_csv(workdir / "new.csv", rows)
    out = workdir / "preds.csv"
    assert main(["predict", "--checkpoint", str(lst_run), "--data", str(workdir / "new.csv"),
                 "--output", str(out)]) == 0
    with open(out) as handle:
        preds = list(csv.DictReader(handle))
    assert [p["row"] for p in preds] == [str(i) for i in range(7)]
    assert list(preds[0]) == ["row", "text", "label", "prob_money", "prob_sport", "prob_tech"]
    for p in preds:
        probs = {name: float(p[f"prob_{name}"]) for name in ("money", "sport", "tech")}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(probs, key=probs.get)


def test_predict_passes_an_id_column_through(lst_run, workdir):
    rows = [{"id": f"doc-{i}", "text": r["text"]} for i, r in enumerate(topic_rows(5, seed=6))]
    write_csv(workdir / "with_ids.csv", rows)
    out = workdir / "id_preds.csv"
    assert main(["predict", "--checkpoint", str(lst_run), "--data",
                 str(workdir / "with_ids.csv"), "--output", str(out)]) == 0
    with open(out) as handle:
        preds = list(csv.DictReader(handle))
    assert [p["id"] for p in preds] == [f"doc-{i}" for i in range(5)]


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "prompt"])
def test_baselines_train_in_the_same_loop_and_reload(method, workdir, capsys):
    out = workdir / f"run-{method}"
    assert main(["train", "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
                 "--method", method, "--output", str(out), "--epochs", "1", "--batch-size", "16",
                 "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(workdir / "train.csv")]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_over_long_texts_are_truncated_and_counted_and_tensorboard_logs(workdir):
    out = workdir / "run-short"
    assert main(["train", "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
                 "--output", str(out), "--max-length", "5", "--epochs", "1", "--tensorboard",
                 "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truncated"]["train"] > 0 and metrics["truncated"]["max_length"] == 5
    assert "texts truncated to 5 tokens" in (out / "report.md").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def _bad(workdir, name, content: bytes):
    path = workdir / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("empty", "is empty"),
    ("missing_column", "has no column 'text' (it has: body, label); pass --text-column"),
    ("encoding", "is not UTF-8"),
    ("unseen_label", "'weather' never seen in training"),
    ("one_class", "one class only"),
    ("run_in_use", "already holds a run; pass --resume"),
    ("no_model", "neither an alias"),
])
def test_bad_input_is_one_line_naming_the_fix(case, expected, workdir, lst_run, capsys):
    train, model, output = str(workdir / "train.csv"), str(workdir / "tiny"), workdir / case
    extra = []
    if case == "empty":
        train = _bad(workdir, "empty.csv", b"")
    elif case == "missing_column":
        train = _bad(workdir, "cols.csv", b"body,label\nhi,a\nyo,b\n")
    elif case == "encoding":
        train = _bad(workdir, "latin.csv", "text,label\ncaf\u00e9,a\nb,b\n".encode("latin-1"))
    elif case == "unseen_label":
        extra = ["--eval", _bad(workdir, "weather.csv", b"text,label\nrain,weather\n")]
    elif case == "one_class":
        train = write_csv(workdir / "one.csv", topic_rows(8, topics=["sport"]))
    elif case == "run_in_use":
        output = lst_run
    elif case == "no_model":
        model = str(workdir / "no-such-model")
    capsys.readouterr()
    code = main(["train", "--model", model, "--train", train, "--output", str(output),
                 "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err


def test_eval_with_another_backbone_is_a_clear_error(lst_run, workdir, capsys):
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(lst_run), "--data", str(workdir / "eval.csv"),
                 "--model", str(workdir / "other")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another backbone" in err and "\n" not in err


@pytest.mark.parametrize("command, words", [
    ([], ["train", "eval", "predict", "demo", "bench", "Ladder Side-Tuning"]),
    (["train"], ["--model", "minilm", "smollm2", "--resume", "--overwrite", "lst 0.003",
                 "--max-length", "--tensorboard"]),
    (["eval"], ["--checkpoint", "--data", "JSON"]),
    (["predict"], ["--checkpoint", "--output", "probability"]),
    (["demo"], ["BBC News", "LoRA"]),
])
def test_help_reads_well(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in words:
        assert word in text, word


def test_lst_flags_reach_the_side_network_and_presets_apply(workdir):
    out = workdir / "paper"
    assert main(["train", "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
                 "--output", str(out), "--epochs", "1", "--batch-size", "16",
                 "--reduction-factor", "2", "--no-progress", "--device", "cpu",
                 "--lst-preset", "paper", "--lst-prune-samples", "8",
                 "--lst-side-layers", "1,3", "--lst-gate-temperature", "0.5"]) == 0
    saved = json.loads((out / "lst_config.json").read_text())
    assert saved["side_init"] == "fisher" and saved["backbone_dropout"] is True   # the preset
    assert saved["prune_samples"] == 8 and saved["gate_temperature"] == 0.5      # the flags
    assert saved["side_layers"] == [1, 3]
    assert json.loads((out / "run.json").read_text())["lst"] == {
        "prune_samples": 8, "side_layers": [1, 3], "gate_temperature": 0.5}


def test_a_bad_lst_value_is_one_line_before_anything_loads(workdir, capsys):
    assert main(["train", "--model", str(workdir / "tiny"), "--train", str(workdir / "train.csv"),
                 "--output", str(workdir / "never"), "--lst-ladder-last-layer", "sideways"]) == 2
    assert "ladder_last_layer='sideways' is unknown" in capsys.readouterr().err
    assert not (workdir / "never").exists()
