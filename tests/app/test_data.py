"""Data loading: files through `datasets`, the BBC News split, label maps, truncation counts."""

import json
import re

import pytest
import torch
from tiny_models import save_tiny_text_model, topic_rows, write_csv
from transformers import AutoTokenizer

from laddertune.app.data import (
    BBC_NEWS,
    TextDataset,
    collate,
    encode_labels,
    label_names,
    load_bbc_news,
    load_texts,
    load_train_eval,
    stratified_split,
    tokenize,
)
from laddertune.errors import DataError


def test_bbc_news_is_a_fixed_stratified_80_20_split():
    train, test = load_bbc_news()
    assert (len(train), len(test)) == (1780, 445)
    assert label_names(train.labels) == ["business", "entertainment", "politics", "sports", "tech"]
    for topic in set(train.labels):   # each class keeps its share on both sides (stratified)
        share = train.labels.count(topic) / (train.labels.count(topic) + test.labels.count(topic))
        assert abs(share - 0.8) < 0.01
    again_train, again_test = load_bbc_news()
    assert again_test.texts == test.texts and again_train.labels == train.labels  # fixed, seed 0


def test_csv_jsonl_and_parquet_load_the_same_rows(tmp_path):
    rows = topic_rows(12)
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import datasets
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    loaded = [load_texts(str(tmp_path / f"d.{ext}")) for ext in ("csv", "jsonl", "parquet")]
    for data in loaded:
        assert data.texts == [r["text"] for r in rows]
        assert data.labels == [r["label"] for r in rows]


def test_without_eval_file_a_stratified_fifth_is_held_out(tmp_path):
    write_csv(tmp_path / "d.csv", topic_rows(30))
    train, held_out = load_train_eval(str(tmp_path / "d.csv"))
    assert (len(train), len(held_out)) == (24, 6)
    assert sorted(held_out.labels) == ["money", "money", "sport", "sport", "tech", "tech"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"text,label\n", "no rows"),
    (b"body,topic\nhello,a\nbye,b\n", "has no column 'text' (it has: body, topic); pass "
                                      "--text-column"),
    ("text,label\ncaf\u00e9,a\nbar,b\n".encode("latin-1"), "is not UTF-8"),
])
def test_bad_files_raise_one_line_errors_naming_the_fix(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_texts(str(path))
    assert "\n" not in str(err.value)


def test_missing_file_and_one_class_only(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "nope.csv"))
    write_csv(tmp_path / "one.csv", topic_rows(6, topics=["sport"]))
    with pytest.raises(DataError, match="one class only"):
        load_train_eval(str(tmp_path / "one.csv"))


def test_label_unseen_in_training_is_an_error():
    with pytest.raises(DataError, match="'weather' never seen in training"):
        encode_labels(["sport", "weather"], ["money", "sport"], "eval.csv")
    assert encode_labels(["sport", "money"], ["money", "sport"], "x").tolist() == [1, 0]


def test_whole_number_labels_sort_numerically():
    assert label_names(["10", "2", "1"]) == ["1", "2", "10"]


def test_split_needs_two_examples_per_class():
    data = TextDataset(["a", "b", "c"], ["x", "x", "y"], "tiny.csv")
    with pytest.raises(DataError, match="class 'y' has one example"):
        stratified_split(data)


def test_truncation_is_counted_and_batches_are_right_padded(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(save_tiny_text_model(tmp_path / "m"))
    data = TextDataset(["goal", "goal match team coach league score"], ["sport", "sport"], "x")
    encoded = tokenize(tokenizer, data, max_length=4, names=["sport"])
    assert encoded.truncated == 1                        # 6 words + [CLS] [SEP] > 4 tokens
    assert [len(ids) for ids in encoded.input_ids] == [3, 4]
    batch = collate(encoded, [0, 1], tokenizer.pad_token_id)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, 3] == tokenizer.pad_token_id
    torch.testing.assert_close(batch["labels"], torch.tensor([0, 0]))


def test_bbc_news_name_is_reserved():
    assert load_train_eval(BBC_NEWS)[1].source.startswith(BBC_NEWS)
