"""Every input of the new-user probe (../shared/new-user-probe/, 2026-12-06), one row each, by its
probe id: the command runs through `laddertune.app.cli.main` in-process on tiny models and files
of the probe's shape, made here. A refusal must be exit 2 and one line `error: ...` naming the
fix, with nothing written; a good case must give the right result. After every case no lock file
and no temporary file is left anywhere.

Stand-ins for what needs a real model or data set: the tiny BERT for minilm, the tiny GPT-2 for
smollm2, a small file for each built-in data set, `--max-length` past the tiny model's 64
positions for case 24.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import interrupt_at_step
from tiny_models import save_tiny_lm, save_tiny_text_model, symbol_pairs, topic_rows, write_csv

from laddertune.app.cli import main

T = ["--epochs", "1", "--max-length", "32", "--no-progress", "--batch-size", "16",
     "--reduction-factor", "2", "--device", "cpu"]
UNICODE = "dir with spaces/données ü"
RECORDED = None   # the case's command ran in the `probe` fixture; its row checks what it gave


def train(*args, model="{tiny}"):
    return ["train", "--model", model, *T, *args]


# ---- the probe's input files, small -----------------------------------------------------------

def write_inputs(folder: Path) -> None:
    rows = topic_rows(36, seed=0)

    def text(name, content):
        (folder / name).write_text(content, encoding="utf-8")

    def csv_text(rows, delimiter=",", header=("text", "label")):
        handle = io.StringIO()
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return handle.getvalue()

    pairs = [(r["text"], r["label"]) for r in rows]
    text("good.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    lines = [json.dumps(r) for r in rows]
    lines[19] = '{"text": "oops", "label": '
    text("bad.jsonl", "\n".join(lines) + "\n")
    (folder / "bom.csv").write_bytes(csv_text(pairs).encode("utf-8-sig"))
    text("caseclash.csv", csv_text([(t, "Sport" if label == "sport" and i < 18 else label)
                                    for i, (t, label) in enumerate(pairs)]))
    text("data.txt", "text,label\nhello,a\n")
    (folder / "data.xlsx").write_bytes(b"PK\x03\x04fake")
    text("dupcols.csv", csv_text([(t, t, label) for t, label in pairs],
                                 header=("text", "text", "label")))
    text("empty.csv", "")
    text("headeronly.csv", "text,label\n")
    text("emptylabels.csv", csv_text([(t, "" if i == 0 else label)
                                      for i, (t, label) in enumerate(pairs)]))
    text("emptytexts.csv", csv_text([("" if i < 3 else t, label)
                                     for i, (t, label) in enumerate(pairs)]))
    text("floatlabels.csv", csv_text([(t, "2.5" if i == 0 else "1") for i, (t, _) in
                                      enumerate(pairs)]))
    (folder / "latin1.csv").write_bytes(csv_text(pairs[:-1] + [("café match", "sport")])
                                        .encode("latin-1"))
    text("longtext.csv", csv_text([(" ".join([t] * 12), label) for t, label in pairs]))
    text("mixed.jsonl", "".join(json.dumps({"text": t, "label": i % 3 if i % 2 else str(i % 3)})
                                + "\n" for i, (t, _) in enumerate(pairs)))
    text("nested.json", json.dumps([{"text": t, "label": {"name": label}} for t, label in pairs]))
    text("numlabels.csv", csv_text([(t, str(i % 3)) for i, (t, _) in enumerate(pairs)]))
    text("numlabels_float.csv", csv_text([(t, f"{i % 3}.0") for i, (t, _) in
                                          enumerate(pairs[:12])]))
    text("numtext.csv", csv_text([(f"{i * 3.14:g}", label) for i, (_, label) in
                                  enumerate(pairs)]))
    text("oneclass.csv", csv_text([(t, "sport") for t, _ in pairs]))
    text("ragged.csv", csv_text(pairs).replace(pairs[5][0], pairs[5][0].replace(" ", ", ", 1)
                                               .strip('"'), 1))
    quoted = [(f'{t} "big" news', label) for t, label in pairs]
    text("semicolon.csv", csv_text(quoted, delimiter=";"))
    text("tabs_as.csv", csv_text(quoted, delimiter="\t"))
    text("truncated.csv", csv_text(pairs) + "matc")
    text("unseen_eval.csv", csv_text(pairs[:8] + [("rain today", "weather")]))
    (folder / "utf16.csv").write_bytes(csv_text(pairs).encode("utf-16"))
    text("wrongcols.csv", csv_text(pairs, header=("body", "category")))
    text("tweets.csv", csv_text([(t, "negative" if i % 2 else "positive")
                                 for i, (t, _) in enumerate(pairs[:8])]))
    text("twoclass.csv", csv_text([(t, label) for t, label in pairs if label != "money"]))
    write_csv(folder / "pairs.csv", symbol_pairs(32, seed=0, length=2))
    empty_target = symbol_pairs(32, seed=0, length=2)
    empty_target[0]["target"] = ""
    write_csv(folder / "pairs_emptytarget.csv", empty_target)
    write_csv(folder / "pairs_eval.csv", symbol_pairs(8, seed=1, length=2))
    (folder / UNICODE).mkdir(parents=True)
    shutil.copy(folder / "good.jsonl", folder / UNICODE / "trâin data.jsonl")


# ---- shared runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The inputs, the tiny models, and the runs several cases read: `a` (classify, like the
    probe's runs/a), `gen` (the W-gen-train case) and `num` (case 11, which case 80 reads)."""
    root = tmp_path_factory.mktemp("probe")
    inputs = root / "inputs"
    inputs.mkdir()
    write_inputs(inputs)
    save_tiny_text_model(root / "tiny")
    save_tiny_lm(root / "lm", "gpt2", chat_template=True)
    (root / "afile").write_text("a file, not a folder")
    paths = dict(I=str(inputs), tiny=str(root / "tiny"), lm=str(root / "lm"),
                 RA=str(root / "runs" / "a"), GEN=str(root / "runs" / "gen"),
                 NUM=str(root / "runs" / "num"), afile=str(root / "afile"))
    recorded = {}
    for case, argv in [
        (None, train("--train", "{I}/good.jsonl", "--output", "{RA}")),
        ("11-numlabels", train("--train", "{I}/numlabels.csv", "--output", "{NUM}")),
        ("W-gen-train", ["train", "--task", "generate", "--model", "{lm}", "--train",
                         "{I}/pairs.csv", "--eval", "{I}/pairs_eval.csv", "--chat-template",
                         "--output", "{GEN}", "--epochs", "1", "--max-length", "48",
                         "--batch-size", "8", "--no-progress", "--device", "cpu"]),
    ]:
        recorded[case] = _run([a.format(**paths) for a in argv])
    assert recorded[None][0] == 0, recorded[None]
    return SimpleNamespace(root=root, paths=paths, recorded=recorded)


def _run(argv):
    """Run the CLI, returning (exit code, stdout, stderr)."""
    import contextlib
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ---- per-case set-ups and checks (`out` is the case's own scratch folder) ---------------------

def copy_run(probe, out, monkeypatch):
    shutil.copytree(probe.paths["RA"], out / "run")


def unfinished_run(probe, out, monkeypatch):
    copy_run(probe, out, monkeypatch)
    (out / "run" / "metrics.json").unlink()


def damaged_run(how):
    def setup(probe, out, monkeypatch):
        copy_run(probe, out, monkeypatch)
        weights = out / "run" / "lst_model.safetensors"
        data = bytearray(weights.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    return setup


def no_run_json(probe, out, monkeypatch):
    copy_run(probe, out, monkeypatch)
    (out / "run" / "run.json").unlink()


def no_cuda(probe, out, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def ctrl_c_at_step(n):
    def setup(probe, out, monkeypatch):
        interrupt_at_step(monkeypatch, n)
    return setup


def ctrl_c_during_overwrite(probe, out, monkeypatch):
    copy_run(probe, out, monkeypatch)
    ctrl_c_at_step(2)(probe, out, monkeypatch)


def run_labels(*labels):
    def check(probe, out, stdout, stderr):
        folder = next(p.parent for p in out.rglob("run.json"))
        assert json.loads((folder / "run.json").read_text())["labels"] == list(labels)
        assert (folder / "metrics.json").is_file()
    return check


def predictions(rows, column="label"):
    def check(probe, out, stdout, stderr):
        written = next(out.rglob("*.csv"))
        with open(written, newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
        assert len(table) == rows
        if column == "label":
            assert {r["label"] for r in table} <= {"money", "sport", "tech"}
        else:
            assert column in table[0]
    return check


def eval_json(*keys, examples=None):
    def check(probe, out, stdout, stderr):
        scores = json.loads(stdout)
        for key in keys:
            assert key in scores, key
        if examples is not None:
            assert scores["examples"] == examples
    return check


def old_run_intact(probe, out, stdout, stderr):
    before = {p.relative_to(probe.paths["RA"]): p.read_bytes()
              for p in Path(probe.paths["RA"]).rglob("*") if p.is_file()}
    after = {p.relative_to(out / "run"): p.read_bytes() for p in (out / "run").rglob("*")
             if p.is_file()}
    assert after == before
    assert [p.name for p in out.iterdir()] == ["run"]       # no overwrite sibling left


def overwritten(probe, out, stdout, stderr):
    assert json.loads((out / "run" / "metrics.json").read_text())["seed"] == 3
    assert [p.name for p in out.iterdir()] == ["run"]


def resumable(probe, out, stdout, stderr):
    assert (out / "run" / "checkpoint" / "trainer_state.json").is_file()
    assert not (out / "run" / "metrics.json").exists()


def macro_f1_over_present_classes(probe, out, stdout, stderr):
    from sklearn.metrics import f1_score
    scores = json.loads(stdout)
    matrix = scores["confusion_matrix"]
    truth = [i for i, row in enumerate(matrix) for j, n in enumerate(row) for _ in range(n)]
    predicted = [j for i, row in enumerate(matrix) for j, n in enumerate(row) for _ in range(n)]
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"),
                                               abs=1e-6)
    assert "money" in stderr and "warning:" in stderr


# ---- the table -----------------------------------------------------------------------------------

def case(probe_id, argv, code, words="", setup=None, check=None, marks=()):
    return pytest.param(argv, code, words, setup, check, id=probe_id, marks=marks)


CASES = [
    case("01-missing-train", train("--train", "{I}/nope.csv", "--output", "{O}"), 2,
         "nope.csv does not exist; pass a .csv"),
    case("02-wrong-ext", train("--train", "{I}/data.txt", "--output", "{O}"), 2,
         "unknown file type '.txt'"),
    case("03-xlsx", train("--train", "{I}/data.xlsx", "--output", "{O}"), 2,
         "unknown file type '.xlsx'"),
    case("04-empty", train("--train", "{I}/empty.csv", "--output", "{O}"), 2, "is empty"),
    case("05-headeronly", train("--train", "{I}/headeronly.csv", "--output", "{O}"), 2,
         "has a header but no rows"),
    case("06-wrongcols", train("--train", "{I}/wrongcols.csv", "--output", "{O}"), 2,
         "has no column 'text' (it has: body, category); pass --text-column"),
    case("07-utf16", train("--train", "{I}/utf16.csv", "--output", "{O}"), 2,
         "is UTF-16 (Excel's 'Unicode Text'); re-save it as UTF-8"),
    case("08-bom", train("--train", "{I}/bom.csv", "--output", "{O}"), 0, "saved",
         check=run_labels("money", "sport", "tech")),
    case("09-latin1", train("--train", "{I}/latin1.csv", "--output", "{O}"), 2,
         "is not UTF-8"),
    case("10-oneclass", train("--train", "{I}/oneclass.csv", "--output", "{O}"), 2,
         "one class only ('sport')"),
    case("11-numlabels", RECORDED, 0, "saved", check=lambda probe, out, o, e: run_labels(
        "0", "1", "2")(probe, Path(probe.paths["NUM"]), o, e)),
    case("12-floatlabels", train("--train", "{I}/floatlabels.csv", "--output", "{O}"), 2,
         "label '2.5' in column 'label' has a fractional part"),
    case("13-dupcols", train("--train", "{I}/dupcols.csv", "--output", "{O}"), 2,
         "has 2 columns named 'text'"),
    case("14-truncated", train("--train", "{I}/truncated.csv", "--output", "{O}"), 2,
         "looks cut short",
         check=lambda probe, out, o, e: _not_in(e, "quote texts that contain commas")),
    case("15-ragged", train("--train", "{I}/ragged.csv", "--output", "{O}"), 2,
         "has 3 fields but the header has 2 (text, label); quote texts that contain commas"),
    case("16-semicolon", train("--train", "{I}/semicolon.csv", "--output", "{O}"), 2,
         "separates its columns with ';', not commas"),
    case("17-tabs-as-csv", train("--train", "{I}/tabs_as.csv", "--output", "{O}"), 2,
         "separates its columns with tabs, not commas"),
    case("18-bad-jsonl", train("--train", "{I}/bad.jsonl", "--output", "{O}"), 2,
         "line 20 is not valid JSON"),
    case("19-nested-json", train("--train", "{I}/nested.json", "--output", "{O}"), 2,
         "column 'label' holds a dict"),
    case("20-numtext", train("--train", "{I}/numtext.csv", "--output", "{O}"), 0,
         "every text in column 'text' is a number",
         check=run_labels("money", "sport", "tech")),
    case("21-emptytexts", train("--train", "{I}/emptytexts.csv", "--output", "{O}"), 0,
         "dropped those rows, which have nothing to learn from",
         check=run_labels("money", "sport", "tech")),
    case("22-emptylabels", train("--train", "{I}/emptylabels.csv", "--output", "{O}"), 2,
         "line 2 has no 'label'; fill it in or drop the row"),
    case("23-caseclash", train("--train", "{I}/caseclash.csv", "--output", "{O}"), 0,
         "labels 'Sport' and 'sport' differ only in",
         check=run_labels("Sport", "money", "sport", "tech")),
    case("24-huge-maxlen", ["train", "--model", "{tiny}", "--train", "{I}/good.jsonl",
                            "--output", "{O}", "--epochs", "1", "--max-length", "100000"], 2,
         "--max-length 100000 exceeds the 64 positions"),
    case("25-epochs0", ["train", "--model", "{tiny}", "--train", "{I}/good.jsonl", "--output",
                        "{O}", "--epochs", "0", "--max-length", "32"], 2,
         "--epochs must be a whole number >= 1, got 0"),
    case("26-batch-neg", train("--train", "{I}/good.jsonl", "--output", "{O}", "--batch-size",
                               "-4"), 2, "--batch-size must be a whole number >= 1, got -4"),
    case("27-lr0", train("--train", "{I}/good.jsonl", "--output", "{O}", "--lr", "0"), 2,
         "--lr must be > 0, got 0"),
    case("28-maxlen0", train("--train", "{I}/good.jsonl", "--output", "{O}", "--max-length",
                             "0"), 2, "--max-length must be a whole number >= 1, got 0"),
    case("29-rf0", train("--train", "{I}/good.jsonl", "--output", "{O}", "--reduction-factor",
                         "0"), 2, "--reduction-factor must be a whole number >= 1, got 0"),
    case("30-resume-overwrite", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                      "--resume", "--overwrite"), 2, "contradict each other"),
    case("31-resume-nothing", train("--output", "{O}/31-none", "--resume"), 2,
         "nothing to resume in"),
    case("32-unwritable", train("--train", "{I}/good.jsonl", "--output", "/proc/laddertune-out"),
         2, "/proc takes no new files"),
    case("33-output-is-file", train("--train", "{I}/good.jsonl", "--output", "{afile}"), 2,
         "is a file, not a folder; pass a folder path"),
    case("34-output-holds-run", train("--train", "{I}/good.jsonl", "--output", "{RA}"), 2,
         "already holds a run; pass --resume to continue it, --overwrite"),
    case("35-eval-no-ckpt", ["eval", "--checkpoint", "{O}/nonexist", "--data",
                             "{I}/good.jsonl"], 2, "holds no run.json"),
    case("36-eval-not-run", ["eval", "--checkpoint", "{I}", "--data", "{I}/good.jsonl"], 2,
         "holds no run.json; pass the --output folder of a `laddertune train`"),
    case("37-eval-unseen-label", ["eval", "--checkpoint", "{RA}", "--data",
                                  "{I}/unseen_eval.csv"], 2,
         "has label 'weather' never seen in training (known: money, sport, tech)"),
    case("38-eval-wrong-col", ["eval", "--checkpoint", "{RA}", "--data", "{I}/wrongcols.csv"],
         2, "has no column 'text' (it has: body, category)"),
    case("39-eval-corrupt-trunc", ["eval", "--checkpoint", "{O}/run", "--data",
                                   "{I}/good.jsonl"], 2, "does not match the sha256",
         setup=damaged_run("truncate")),
    case("40-eval-corrupt-flip", ["eval", "--checkpoint", "{O}/run", "--data",
                                  "{I}/good.jsonl"], 2, "does not match the sha256",
         setup=damaged_run("flip")),
    case("41-eval-no-runjson", ["eval", "--checkpoint", "{O}/run", "--data", "{I}/good.jsonl"],
         2, "holds no run.json", setup=no_run_json),
    case("42-eval-other-model", ["eval", "--checkpoint", "{RA}", "--data", "{I}/good.jsonl",
                                 "--model", "{lm}"], 2,
         "was trained on another backbone than the"),
    case("43-predict-empty", ["predict", "--checkpoint", "{RA}", "--data", "{I}/empty.csv",
                              "--output", "{O}/p43.csv"], 2, "empty.csv is empty"),
    case("44-predict-out-dir", ["predict", "--checkpoint", "{RA}", "--data", "{I}/good.jsonl",
                                "--output", "{I}"], 2, "is a folder; pass a file path such as"),
    case("45-predict-out-unwritable", ["predict", "--checkpoint", "{RA}", "--data",
                                       "{I}/good.jsonl", "--output", "/proc/preds.csv"], 2,
         "/proc takes no new files"),
    case("45-predict-out-missing-folder", ["predict", "--checkpoint", "{RA}", "--data",
                                           "{I}/good.jsonl", "--output", "{O}/new/p45.csv"], 0,
         "wrote 36 predictions", check=predictions(36)),
    case("46-predict-no-textcol", ["predict", "--checkpoint", "{RA}", "--data",
                                   "{I}/wrongcols.csv", "--output", "{O}/p46.csv"], 2,
         "has no column 'text' (it has: body, category)"),
    case("47-generate-on-classify", ["generate", "--checkpoint", "{RA}", "--prompt", "hello"],
         2, "is a --task classify run"),
    case("48-eval-tweets-on-bbc", ["eval", "--checkpoint", "{RA}", "--data", "{I}/tweets.csv"],
         2, "never seen in training (known: money, sport, tech)"),
    case("49-device-cuda", train("--train", "{I}/good.jsonl", "--output", "{O}", "--device",
                                 "cuda"), 2, "--device cuda was asked for but no CUDA GPU",
         setup=no_cuda),
    case("50-model-missing", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                   model="./no-such-model"), 2, "is neither an alias"),
    case("51-text-eq-label", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                   "--text-column", "label"), 2,
         check=lambda probe, out, o, e: _in_error(e, "--text-column", "--label-column")),
    case("52-cache-dropout", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                   "--cache-backbone", "--lst-backbone-dropout", "true"), 2,
         "--lst-backbone-dropout true changes them every step"),
    case("53-cache-lora", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                "--cache-backbone", "--method", "lora"), 2,
         "--cache-backbone is for --method lst"),
    case("54-rf-with-lora", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                  "--reduction-factor", "4", "--method", "lora"), 0,
         "--reduction-factor set, but --method lora does not use them",
         check=run_labels("money", "sport", "tech")),
    case("55-gen-encoder", ["train", "--task", "generate", "--model", "{tiny}", "--train",
                            "{I}/pairs.csv", "--output", "{O}", *T], 2,
         "--task generate needs a model that writes text"),
    case("56-save-every0", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                 "--save-every", "0"), 2, "--save-every must be a whole number"),
    case("57-warmup2", train("--train", "{I}/good.jsonl", "--output", "{O}", "--warmup-ratio",
                             "2"), 2, "--warmup-ratio must be in [0, 1), got 2"),
    case("58-side-layers99", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                   "--lst-side-layers", "99"), 2,
         "side_layers [99] out of range: this backbone stack has layers 0..3"),
    case("59-gate-banana", train("--train", "{I}/good.jsonl", "--output", "{O}", "--lst-gate",
                                 "banana"), 2, "gate='banana' is unknown"),
    case("60-lr-neg", train("--train", "{I}/good.jsonl", "--output", "{O}", "--lr", "-1"), 2,
         "--lr must be > 0, got -1"),
    case("61-eval-unseen-train", train("--train", "{I}/good.jsonl", "--eval",
                                       "{I}/unseen_eval.csv", "--output", "{O}"), 2,
         "has label 'weather' never seen in training"),
    case("62-tsv-as-csv-ext", train("--train", "{I}/pairs.csv", "--output", "{O}"), 2,
         "has no column 'text' (it has: prompt, target)"),
    case("63-lr-huge", train("--train", "{I}/good.jsonl", "--output", "{O}", "--method", "full",
                             "--lr", "1e12"), 2, "training diverged at step"),
    case("W-gen-train", RECORDED, 0, "saved",
         check=lambda probe, out, o, e: _has_scores(probe.paths["GEN"], "rouge_l")),
    case("W-gen-generate", ["generate", "--checkpoint", "{GEN}", "--prompt", "copy red green"],
         0, check=lambda probe, out, o, e: _one_answer(o)),
    case("W-gen-eval", ["eval", "--checkpoint", "{GEN}", "--data", "{I}/pairs_eval.csv"], 0,
         check=eval_json("rouge_l", "exact_match")),
    case("W-gen-predict", ["predict", "--checkpoint", "{GEN}", "--data", "{I}/pairs_eval.csv",
                           "--output", "{O}/gen_preds.csv"], 0, "wrote 8 answers",
         check=predictions(8, column="generated")),
    case("64-gen-empty-prompt", ["generate", "--checkpoint", "{GEN}", "--prompt", ""], 2,
         "the prompt is empty; pass the text to complete"),
    case("64-gen-blank-prompt", ["generate", "--checkpoint", "{GEN}", "--prompt", "  \n"], 2,
         "the prompt is empty"),
    case("65-gen-temp-neg", ["generate", "--checkpoint", "{GEN}", "--prompt", "copy red",
                             "--temperature", "-1"], 2, "--temperature must be >= 0"),
    case("66-gen-topp2", ["generate", "--checkpoint", "{GEN}", "--prompt", "copy red",
                          "--temperature", "1", "--top-p", "2"], 2, "--top-p must be in (0, 1]"),
    case("67-gen-beams0", ["generate", "--checkpoint", "{GEN}", "--prompt", "copy red",
                           "--num-beams", "0"], 2, "--num-beams must be a whole number >= 1"),
    case("68-gen-maxnew0", ["generate", "--checkpoint", "{GEN}", "--prompt", "copy red",
                            "--max-new-tokens", "0"], 2, "--max-new-tokens must be a whole"),
    case("69-gen-ckpt-with-minilm", ["generate", "--checkpoint", "{GEN}", "--prompt", "hi",
                                     "--model", "{tiny}"], 2,
         "was trained on another backbone than the"),
    case("70-output-parent-file", train("--train", "{I}/good.jsonl", "--output",
                                        "{afile}/sub"), 2, "afile is a file, not a folder"),
    case("70-output-under-missing-folders", train("--train", "{I}/good.jsonl", "--output",
                                                  "{O}/new/deeper/run"), 0, "saved",
         check=run_labels("money", "sport", "tech")),
    case("71-predict-idcol-missing", ["predict", "--checkpoint", "{RA}", "--data",
                                      "{I}/good.jsonl", "--id-column", "nope", "--output",
                                      "{O}/p71.csv"], 2,
         "has no column 'nope' (it has: text, label); pass one of those to --id-column"),
    case("72-predict-longtext", ["predict", "--checkpoint", "{RA}", "--data",
                                 "{I}/longtext.csv", "--output", "{O}/p72.csv"], 0,
         "wrote 36 predictions", check=predictions(36)),
    case("73-sweep-bogus-grid", ["sweep", "--model", "{tiny}", "--train", "{I}/good.jsonl",
                                 "--output", "{O}", "--grid", "bogus=1,2", *T], 2,
         "--grid 'bogus' cannot vary in a sweep"),
    case("74-sweep-lr-abc", ["sweep", "--model", "{tiny}", "--train", "{I}/good.jsonl",
                             "--output", "{O}", "--grid", "lr=abc,0.1", *T], 2,
         "--grid lr: 'abc' is not a float"),
    case("75-sweep-method-grid", ["sweep", "--model", "{tiny}", "--train", "{I}/good.jsonl",
                                  "--output", "{O}", "--grid", "method=lst,lora", *T], 2,
         "--grid 'method' cannot vary in a sweep"),
    case("76-sweep-no-grid", ["sweep", "--model", "{tiny}", "--train", "{I}/good.jsonl",
                              "--output", "{O}", *T], 2, "a sweep needs --grid NAME=V1,V2"),
    case("77-gen-empty-targets", ["train", "--task", "generate", "--model", "{lm}", "--train",
                                  "{I}/pairs_emptytarget.csv", "--output", "{O}", *T], 0,
         "saved", check=lambda probe, out, o, e: _has_scores(out, "rouge_l")),
    case("78-verbalizer-unknown", ["train", "--task", "generate", "--model", "{lm}", "--train",
                                   "{I}/good.jsonl", "--verbalizer", "weather=rain",
                                   "--output", "{O}", *T], 2,
         "has label 'money' with no --verbalizer entry"),
    case("79-resume-other-lr", ["train", "--output", "{RA}", "--resume", "--lr", "0.1"], 2,
         "holds a finished run: nothing to resume"),
    case("80-num-vs-float-labels", ["eval", "--checkpoint", "{NUM}", "--data",
                                    "{I}/numlabels_float.csv"], 0,
         check=eval_json("accuracy", "macro_f1", examples=12)),
    case("81-mixed-int-str-labels", train("--train", "{I}/mixed.jsonl", "--output", "{O}"), 0,
         "saved", check=run_labels("0", "1", "2")),
    case("82-spaces-unicode", train("--train", f"{{I}}/{UNICODE}/trâin data.jsonl",
                                    "--output", "{O}/données ü/rün 1"), 0, "rün 1",
         check=run_labels("money", "sport", "tech")),
    case("83-predict-spaces", ["predict", "--checkpoint", "{RA}", "--data",
                               f"{{I}}/{UNICODE}/trâin data.jsonl", "--output",
                               "{O}/données ü/prédictions 1.csv"], 0, "prédictions 1.csv",
         check=predictions(36)),
    case("84-resume-finished", ["train", "--output", "{RA}", "--resume"], 2,
         "holds a finished run: nothing to resume; pass --overwrite"),
    case("85-maxlen1", train("--train", "{I}/good.jsonl", "--output", "{O}", "--max-length",
                             "1"), 2, "--max-length 1 leaves no room for text"),
    case("86-paper-cache", train("--train", "{I}/good.jsonl", "--output", "{O}", "--lst-preset",
                                 "paper", "--cache-backbone"), 2,
         "--lst-preset paper turns on backbone dropout, which changes them every step; drop "
         "--cache-backbone, or add --lst-backbone-dropout false"),
    case("86-paper-cache-fixed", train("--train", "{I}/good.jsonl", "--output", "{O}",
                                       "--lst-preset", "paper", "--cache-backbone",
                                       "--lst-backbone-dropout", "false",
                                       "--cache-dir", "{O}-cache"), 0, "saved",
         check=run_labels("money", "sport", "tech")),
    case("87-batch-huge", train("--train", "{I}/good.jsonl", "--output", "{O}", "--batch-size",
                                "100000"), 0, "saved", check=run_labels("money", "sport", "tech")),
    case("88-predict-builtin", ["predict", "--checkpoint", "{RA}", "--data", "{I}/good.jsonl",
                                "--output", "{O}/p88.csv"], 0, "wrote 36 predictions",
         check=predictions(36)),
    case("91-macro-f1-absent-class", ["eval", "--checkpoint", "{RA}", "--data",
                                      "{I}/twoclass.csv"], 0,
         check=macro_f1_over_present_classes),
    # S-sigint: Ctrl-C after the first checkpoint keeps a run --resume continues (a real SIGINT
    # and kill -9 in a subprocess: tests/app/test_resume.py)
    case("S-sigint", train("--train", "{I}/good.jsonl", "--output", "{O}/run", "--save-every",
                           "1"), 130, "continue later with the same command and --resume",
         setup=ctrl_c_at_step(2), check=resumable),
    case("S-eval-partial", ["eval", "--checkpoint", "{RA}", "--data", "{I}/good.jsonl"], 0,
         check=eval_json("accuracy", "macro_f1", examples=36)),
    case("S-eval-partial2", ["eval", "--checkpoint", "{O}/run", "--data", "{I}/good.jsonl"], 2,
         "is an unfinished run; finish it with `laddertune train ... --resume`",
         setup=unfinished_run),
    # W-ow-kill: an overwrite stopped mid-way leaves the old run whole (kill -9 of a real
    # process: tests/app/test_resume.py; here Ctrl-C in-process)
    case("W-ow-kill", train("--train", "{I}/good.jsonl", "--output", "{O}/run", "--overwrite",
                            "--save-every", "1"), 130, "still holds the old run, unchanged",
         setup=ctrl_c_during_overwrite, check=old_run_intact),
    # W-ow-full, then the probe's "after overwrite" listing: no lock file is left (checked after
    # every case)
    case("W-ow-full", train("--train", "{I}/good.jsonl", "--output", "{O}/run", "--overwrite",
                            "--seed", "3"), 0, "saved", setup=copy_run, check=overwritten),
    case("W-cache", train("--train", "{I}/good.jsonl", "--output", "{O}/run", "--cache-backbone",
                          "--cache-dir", "{O}/cache"), 0, "saved",
         check=run_labels("money", "sport", "tech")),
    case("W-sweep", ["sweep", "--model", "{tiny}", "--train", "{I}/good.jsonl", "--output",
                     "{O}/sweep", "--grid", "lr=1e-3,3e-3", "--grid", "seed=0,1",
                     "--cache-backbone", "--cache-dir", "{O}/cache", *T], 0,
         "best on the eval split",
         check=lambda probe, out, o, e: _sweep_runs(out / "sweep", 4)),
]


@pytest.mark.parametrize("argv, code, words, setup, check", CASES)
def test_probe_case(probe, request, monkeypatch, argv, code, words, setup, check):
    case_id = request.node.callspec.id
    if "/proc" in " ".join(argv or []) and not Path("/proc").is_dir():
        pytest.skip("needs Linux's /proc, a folder that takes no new files")
    out = probe.root / "out" / case_id          # made by the case (or its set-up) alone
    if setup:
        setup(probe, out, monkeypatch)
    before = _listing(probe.root)
    if argv is RECORDED:
        result = probe.recorded[case_id]
    else:
        result = _run([a.format(O=out, **probe.paths) for a in argv])
    got, stdout, stderr = result
    assert got == code, result
    assert "Traceback" not in stderr
    if code == 2:
        line = _one_error_line(stderr)
        assert words in line
        assert _listing(probe.root) == before, "a refusal wrote something"
    else:
        assert words in stdout + stderr, result
    if check:
        check(probe, out, stdout, stderr)
    leftovers = [p for p in probe.root.rglob("*")
                 if p.suffix in (".lock", ".tmp") and p not in before]
    assert leftovers == []


# ---- helpers of the checks -----------------------------------------------------------------------

def _listing(root: Path) -> dict:
    """Every path under `root`, with each file's size and time of change."""
    return {p: None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _in_error(stderr: str, *words: str) -> None:
    line = _one_error_line(stderr)
    assert all(word in line for word in words), line


def _not_in(stderr: str, words: str) -> None:
    assert words not in _one_error_line(stderr)


def _has_scores(folder, key: str) -> None:
    folder = Path(folder)
    assert key in json.loads((folder / "metrics.json").read_text())["eval"]


def _one_answer(stdout: str) -> None:
    assert stdout.endswith("\n") and stdout.count("\n") == 1     # the answer, on one line


def _sweep_runs(folder: Path, count: int) -> None:
    summary = json.loads((folder / "sweep.json").read_text())
    assert len(summary["runs"]) == count
    assert (folder / summary["best"] / "metrics.json").is_file()
