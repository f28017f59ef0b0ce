"""`--task generate`: tokenization and masking, training from the CLI with every method, eval,
predict and `laddertune generate` on the runs, and bad input."""

import csv
import io
import json

import pytest
import torch
from cli_helpers import interrupt_at_step
from tiny_models import save_tiny_lm, save_tiny_text_model, symbol_pairs, topic_rows, write_csv
from transformers import AutoTokenizer

from laddertune.app.cli import TextStream, main
from laddertune.app.data import PairDataset
from laddertune.app.generate_task import parse_verbalizer
from laddertune.app.options import UsageError
from laddertune.app.prompts import PromptFormat, collate_pairs
from laddertune.app.text_metrics import exact_match, generation_scores, normalize_answer, token_f1
from laddertune.errors import DataError

FLAGS = ["--task", "generate", "--batch-size", "16", "--reduction-factor", "2", "--no-progress",
         "--device", "cpu"]
# Llama has no bias terms for BitFit, which trains on GPT-2; peft's prompt tuning cannot
# generate on GPT-2 (its learned positions overflow), so the others train on Llama
METHODS = [("lst", "llama"), ("full", "llama"), ("lora", "llama"), ("prompt", "llama"),
           ("ia3", "llama"), ("adapter", "llama"), ("bitfit", "gpt2")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    save_tiny_lm(root / "gpt2", "gpt2")
    save_tiny_lm(root / "llama", "llama")
    save_tiny_lm(root / "t5", "t5", d_model=64, d_kv=16)
    save_tiny_lm(root / "chat", "gpt2", chat_template=True)
    write_csv(root / "train.csv", symbol_pairs(256, seed=0, length=2))
    write_csv(root / "eval.csv", symbol_pairs(32, seed=1, length=2))
    write_csv(root / "topics.csv", topic_rows(48, seed=0))
    return root


def _train(workdir, output, *extra, model="gpt2", train="train.csv", epochs="1"):
    return main(["train", "--model", str(workdir / model), "--train", str(workdir / train),
                 "--output", str(workdir / output), "--epochs", epochs, *FLAGS, *extra])


# ---- tokens: the prompt is masked, a long prompt loses its start, never the target ----------

def _format(workdir, model="gpt2", seq2seq=False, chat=False):
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / model))
    return tokenizer, PromptFormat(tokenizer, seq2seq, chat, tokenizer.eos_token_id, model)


def test_decoder_labels_are_minus_100_exactly_on_the_prompt_and_the_padding(workdir):
    tokenizer, fmt = _format(workdir)
    data = PairDataset(["copy red green", "copy blue"], ["red green", "blue"], "mem")
    encoded = fmt.encode(data, max_length=32)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert encoded.prompt_ids[0] == [tokenizer.bos_token_id] + ids("copy red green")
    assert encoded.target_ids[1] == ids("blue") + [tokenizer.eos_token_id]
    batch = collate_pairs(encoded, [0, 1], tokenizer.pad_token_id)
    prompt0, prompt1 = len(encoded.prompt_ids[0]), len(encoded.prompt_ids[1])
    target0, target1 = encoded.target_ids
    assert batch["labels"][0].tolist() == [-100] * prompt0 + target0
    row1 = [-100] * prompt1 + target1
    assert batch["labels"][1].tolist() == row1 + [-100] * (batch["labels"].shape[1] - len(row1))
    assert batch["attention_mask"][1].tolist() == [1] * len(row1) + [0] * (
        batch["labels"].shape[1] - len(row1))                       # right-padded for training


def test_encoder_decoder_labels_are_the_target_alone(workdir):
    tokenizer, fmt = _format(workdir, "t5", seq2seq=True)
    data = PairDataset(["copy red green", "copy blue"], ["red green", "blue"], "mem")
    batch = collate_pairs(fmt.encode(data, 32), [0, 1], tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    red, green, blue = (tokenizer.convert_tokens_to_ids(w) for w in ("red", "green", "blue"))
    assert batch["labels"].tolist() == [[red, green, eos], [blue, eos, -100]]
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id


def test_a_long_prompt_is_cut_from_the_left_and_the_target_kept_whole(workdir):
    tokenizer, fmt = _format(workdir)
    words = "red green blue gold pink gray".split()
    data = PairDataset([" ".join(words * 3)], ["gold pink gray red"], "mem")
    encoded = fmt.encode(data, max_length=10)
    assert encoded.truncated == 1
    assert len(encoded.prompt_ids[0]) + len(encoded.target_ids[0]) == 10
    target = tokenizer.decode(encoded.target_ids[0], skip_special_tokens=True)
    assert target == "gold pink gray red"
    assert encoded.prompt_ids[0][0] == tokenizer.bos_token_id       # the head stays
    prompt = tokenizer.decode(encoded.prompt_ids[0], skip_special_tokens=True)
    assert prompt == "blue gold pink gray"


def test_a_target_with_no_room_for_the_prompt_is_a_one_line_error(workdir):
    _, fmt = _format(workdir)
    data = PairDataset(["copy red"], ["red " * 20], "pairs.csv")
    with pytest.raises(DataError, match=r"1 targets are too long for --max-length 10 .*"
                                        r"pass --max-length 23 or more"):
        fmt.encode(data, max_length=10)


def test_the_chat_template_wraps_the_prompt_and_cuts_only_its_content(workdir):
    tokenizer, fmt = _format(workdir, "chat", chat=True)
    ids, cut = fmt.prompt("copy red green", budget=64)
    assert not cut and tokenizer.decode(ids) == "user copy red green [SEP] bot"
    ids, cut = fmt.prompt("copy red green blue gold", budget=6)
    assert cut and tokenizer.decode(ids) == "user green blue gold [SEP] bot"
    with pytest.warns(UserWarning, match="has no chat template"):
        _format(workdir, "gpt2", chat=True)


# ---- metrics --------------------------------------------------------------------------------

def test_answers_are_compared_as_squad_does():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0 and exact_match("cat", "dog") == 0.0
    assert token_f1("cat sat on mat", "the cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("cat", "") == 0.0
    scores = generation_scores(["police arrest man", "x"], ["Police arrested a man", "x"])
    assert scores["exact_match"] == 0.5
    # stemmed, "arrest" matches "arrested": the longest common subsequence is all 3 predicted
    # words of the reference's 4, so P = 1, R = 3/4, F = 6/7
    assert scores["rouge_l"] == pytest.approx((6 / 7 + 1) / 2, abs=1e-6)


def test_verbalizer_maps_are_read_from_text_or_json(tmp_path):
    assert parse_verbalizer("0=negative, 1=positive") == {"0": "negative", "1": "positive"}
    (tmp_path / "words.json").write_text('{"sport": "goal", "tech": "chip"}')
    assert parse_verbalizer(str(tmp_path / "words.json")) == {"sport": "goal", "tech": "chip"}
    with pytest.raises(UsageError, match="is not LABEL=WORD"):
        parse_verbalizer("0:negative")


# ---- the command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def copy_run(workdir):
    """A tiny T5 that learns to copy two symbols, with LST."""
    assert _train(workdir, "copy", "--eval", str(workdir / "eval.csv"), "--lr", "1e-2",
                  "--lst-side-init", "random", model="t5", epochs="12") == 0
    return workdir / "copy"


@pytest.mark.slow
def test_a_tiny_model_learns_to_copy_from_the_cli(copy_run):
    metrics = json.loads((copy_run / "metrics.json").read_text())
    history = metrics["history"]["eval"]
    assert set(metrics["eval"]) >= {"exact_match", "token_f1", "rouge_l", "loss"}
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert metrics["eval"]["token_f1"] > 0.9          # chance: about 1/3
    assert metrics["eval"]["exact_match"] > 0.4       # chance: 1/36
    run = json.loads((copy_run / "run.json").read_text())
    assert run["task"] == "generate" and run["task_type"] == "SEQ_2_SEQ_LM"
    assert run["max_new_tokens"] == 3                  # two symbols and the end token
    report = (copy_run / "report.md").read_text()
    assert "| reference | generated |" in report and "ROUGE-L" in report


@pytest.mark.slow
def test_predict_writes_the_generated_answers(copy_run, workdir):
    pairs = symbol_pairs(6, 7, length=2)
    rows = [{"id": f"q{i}", "prompt": r["prompt"]} for i, r in enumerate(pairs)]
    write_csv(workdir / "questions.csv", rows)
    out = workdir / "answers.csv"
    assert main(["predict", "--checkpoint", str(copy_run), "--data",
                 str(workdir / "questions.csv"), "--output", str(out)]) == 0
    with open(out) as handle:
        answers = list(csv.DictReader(handle))
    # the input's columns are kept, between the id and the answer
    assert list(answers[0]) == ["id", "prompt", "generated"] and [a["id"] for a in answers] == [
        f"q{i}" for i in range(6)]
    expected = [r["target"] for r in symbol_pairs(6, 7, length=2)]
    right = sum(a["generated"] == e for a, e in zip(answers, expected))
    assert right >= 3 and all(a["generated"] for a in answers)


@pytest.mark.slow
def test_eval_prints_the_four_metrics_as_training_measured_them(copy_run, workdir, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(copy_run), "--data", str(workdir / "eval.csv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    trained = json.loads((copy_run / "metrics.json").read_text())["eval"]
    for key in ("exact_match", "token_f1", "rouge_l", "loss"):
        assert printed[key] == pytest.approx(trained[key], abs=1e-5), key
    assert printed["examples"] == 32


@pytest.mark.slow
def test_generate_streams_one_completion(copy_run, capsys):
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(copy_run), "--prompt", "copy gold pink"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and set(out.split()) <= {"red", "green", "blue", "gold", "pink",
                                                       "gray"} and out.strip()
    assert main(["generate", "--checkpoint", str(copy_run), "--prompt", "copy gold pink",
                 "--temperature", "1.0", "--seed", "1"]) == 0


def test_text_stream_writes_each_token_as_it_comes():
    out = io.StringIO()
    writes = []
    out.write = lambda text: writes.append(text)                  # type: ignore[method-assign]
    vocab = {5: "red", 6: " green", 7: " blue"}
    stream = TextStream(lambda ids: "".join(vocab[i] for i in ids), out)
    for token in (5, 6, 7):
        stream(torch.tensor([token]))
    stream.end()
    assert writes == ["red", " green", " blue", "\n"]


@pytest.mark.parametrize("method, model", METHODS)
def test_every_method_trains_with_task_generate_and_reloads(method, model, workdir, capsys):
    out = f"method-{method}"
    assert _train(workdir, out, "--method", method, "--lr", "1e-3", "--eval",
                  str(workdir / "eval.csv"), model=model) == 0
    metrics = json.loads((workdir / out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["task"] == "generate"
    assert metrics["history"]["train_loss"] and "rouge_l" in metrics["eval"]
    assert metrics["step_seconds"] > 0 and metrics["training_peak_rss_mb"] is not None
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(workdir / out), "--data",
                 str(workdir / "eval.csv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["loss"] == pytest.approx(metrics["eval"]["loss"], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("method", ["lst", "lora", "full"])
def test_encoder_decoder_models_train_with_every_kind_of_method(method, workdir):
    assert _train(workdir, f"t5-{method}", "--method", method, model="t5") == 0
    run = json.loads((workdir / f"t5-{method}" / "run.json").read_text())
    assert run["task_type"] == "SEQ_2_SEQ_LM"


def test_resume_of_a_generate_run_ends_as_an_uninterrupted_one(workdir, monkeypatch):
    args = ("--save-every", "3", "--lr", "1e-2")
    assert _train(workdir, "whole", *args, epochs="2") == 0
    interrupt_at_step(monkeypatch, 21)                      # Ctrl-C after step 20
    assert _train(workdir, "halves", *args, epochs="2") == 130
    monkeypatch.undo()
    assert main(["train", "--output", str(workdir / "halves"), "--resume"]) == 0
    whole, halves = (json.loads((workdir / name / "metrics.json").read_text())
                     for name in ("whole", "halves"))
    assert halves["history"] == whole["history"] and halves["eval"] == whole["eval"]
    assert _train(workdir, "halves", *args, "--overwrite") == 0


# ---- the paper's text-to-text classification --------------------------------------------------

def test_a_classification_file_trains_its_label_words(workdir):
    assert _train(workdir, "t2t", "--lr", "1e-2", train="topics.csv", epochs="2") == 0
    run = json.loads((workdir / "t2t" / "run.json").read_text())
    assert run["labels"] == ["money", "sport", "tech"]
    assert run["label_words"] == {"money": "money", "sport": "sport", "tech": "tech"}
    scores = json.loads((workdir / "t2t" / "metrics.json").read_text())["eval"]
    assert {"accuracy", "macro_f1", "exact_match", "unmatched"} <= set(scores)
    assert all(s["reference"] in ("money", "sport", "tech") for s in scores["samples"])
    assert "classes answered as words" in (workdir / "t2t" / "report.md").read_text()


def test_a_verbalizer_maps_labels_to_other_words(workdir, capsys):
    assert _train(workdir, "t2t-words", "--verbalizer", "money=bank,sport=goal,tech=chip",
                  "--lr", "1e-2", train="topics.csv", epochs="2") == 0
    scores = json.loads((workdir / "t2t-words" / "metrics.json").read_text())["eval"]
    assert {s["reference"] for s in scores["samples"]} <= {"bank", "goal", "chip"}
    rows = [{"text": r["text"]} for r in topic_rows(4, seed=9)]
    write_csv(workdir / "unlabelled.csv", rows)
    out = workdir / "t2t-preds.csv"
    assert main(["predict", "--checkpoint", str(workdir / "t2t-words"), "--data",
                 str(workdir / "unlabelled.csv"), "--output", str(out)]) == 0
    with open(out) as handle:
        preds = list(csv.DictReader(handle))
    assert list(preds[0]) == ["row", "text", "generated", "label"]
    for p in preds:     # a label is named exactly when the answer is one of the words
        assert p["label"] == {"bank": "money", "goal": "sport", "chip": "tech"}.get(
            p["generated"], "")


# ---- bad input: one line each ------------------------------------------------------------------

def _error(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_long_prompts_are_cut_with_a_counted_warning(workdir, capsys):
    rows = [{"prompt": "copy " + " ".join(["red", "green"] * 20), "target": "red green"}] * 5
    rows += symbol_pairs(20, seed=3, length=2)
    write_csv(workdir / "long.csv", rows)
    capsys.readouterr()
    assert _train(workdir, "long", "--max-length", "16", train="long.csv") == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "cut from the left" in line]
    assert len(warning) >= 1 and "prompts plus targets are longer than --max-length 16" in \
        warning[0]
    metrics = json.loads((workdir / "long" / "metrics.json").read_text())
    assert metrics["truncated"]["train"] + metrics["truncated"]["eval"] == 5


def test_empty_targets_are_dropped_with_a_count(workdir, capsys):
    rows = symbol_pairs(20, seed=4, length=2)
    rows[3]["target"] = rows[7]["target"] = "  "
    write_csv(workdir / "holes.csv", rows)
    capsys.readouterr()
    assert _train(workdir, "holes", train="holes.csv") == 0
    assert "holes.csv: 2 of 20 targets are empty (first at line 5); dropped those rows" in \
        capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "has no column 'target' (it has: prompt, answer); pass --target-column"),
    ("all_empty", "every target in column 'target' is empty"),
    ("no_word", "has label 'tech' with no --verbalizer entry"),
    ("shared_word", "two classes share a target string"),
    ("encoder", "needs a model that writes text"),
    ("target_too_long", "targets are too long for --max-length 8"),
    ("beams_and_sampling", "do not combine"),
])
def test_bad_generate_input_is_one_line(case, expected, workdir, capsys):
    path = workdir / f"bad-{case}.csv"
    extra, train, model = [], str(path), "gpt2"
    if case == "missing_column":
        write_csv(path, [{"prompt": "copy red", "answer": "red"}] * 4)
    elif case == "all_empty":
        write_csv(path, [{"prompt": "copy red", "target": ""}] * 4)
    elif case in ("no_word", "shared_word"):
        train = str(workdir / "topics.csv")
        extra = ["--verbalizer", "money=bank,sport=goal" if case == "no_word"
                 else "money=bank,sport=bank,tech=chip"]
    elif case == "encoder":
        save_tiny_text_model(workdir / "bert")
        model, train = "bert", str(workdir / "train.csv")
    elif case == "target_too_long":
        write_csv(path, [{"prompt": "copy red", "target": "red " * 12}] * 4)
        extra = ["--max-length", "8"]
    else:
        train, extra = str(workdir / "train.csv"), ["--num-beams", "2", "--temperature", "0.5"]
    capsys.readouterr()
    code = main(["train", "--model", str(workdir / model), "--train", train, "--output",
                 str(workdir / f"out-{case}"), *FLAGS, *extra])
    assert expected in _error(capsys, code)
    assert not (workdir / f"out-{case}").exists()


def test_generation_commands_refuse_the_other_task(workdir, capsys):
    assert main(["train", "--model", str(workdir / "gpt2"), "--train",
                 str(workdir / "topics.csv"), "--output", str(workdir / "classifier"),
                 "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    code = main(["generate", "--checkpoint", str(workdir / "classifier"), "--prompt", "hi"])
    assert "needs a --task generate run" in _error(capsys, code)
    code = main(["sweep", "--task", "generate", "--model", str(workdir / "gpt2"), "--train",
                 str(workdir / "train.csv"), "--grid", "lr=1e-3,1e-2"])
    assert "sweep trains --task classify runs" in _error(capsys, code)
    with pytest.warns(UserWarning, match="--max-new-tokens set, but --task classify does not"):
        from laddertune.app.options import TrainConfig
        TrainConfig(max_new_tokens=5)
