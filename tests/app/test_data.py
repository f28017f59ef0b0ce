"""Data loading: every file format, what bad files say, the BBC News split, label maps, ids,
truncation counts."""

import datetime
import json
import re
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import save_tiny_text_model, topic_rows, write_csv
from transformers import AutoTokenizer

from laddertune.app.data import (
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
from laddertune.errors import DataError, DataWarning


def test_bbc_news_is_a_fixed_stratified_80_20_split():
    train, test = load_bbc_news()
    assert (len(train), len(test)) == (1780, 445)
    assert label_names(train.labels) == ["business", "entertainment", "politics", "sports", "tech"]
    for topic in set(train.labels):   # each class keeps its share on both sides (stratified)
        share = train.labels.count(topic) / (train.labels.count(topic) + test.labels.count(topic))
        assert abs(share - 0.8) < 0.01
    again_train, again_test = load_bbc_news()
    assert again_test.texts == test.texts and again_train.labels == train.labels  # fixed, seed 0


def test_every_format_loads_the_same_rows(tmp_path):
    rows = topic_rows(12)
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n"
                                                                for r in rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))  # JSONL as .json
    import datasets
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.csv", "d.tsv", "d.jsonl", "d.json", "lines.json", "d.parquet"):
        data = load_texts(str(tmp_path / name))
        assert data.texts == [r["text"] for r in rows], name
        assert data.labels == [r["label"] for r in rows], name
        assert data.ids is None


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


# ---- what a real file throws at the loader ------------------------------------------------------

def _write(path, content):
    """`content` as the file's bytes, its text, or (for .parquet) a pyarrow table."""
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return str(path)


def _jsonl(*records) -> str:
    return "\n".join(json.dumps(record) for record in records) + "\n"


def _assert_one_short_line(message: str, path: str):
    assert "\n" not in message
    assert len(message.replace(path, "f.csv")) < 200, message


_TWO_DUPLICATE_TEXTS = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["x", "y"]),
                                             pa.array(["p", "q"])], names=["text", "text", "label"])


@pytest.mark.parametrize("name, content, message", [
    # the findings
    ("bytes.parquet", pa.table({"text": [b"ok", b"\xff\xfe"], "label": ["a", "b"]}),
     "row 2: column 'text' holds bytes that are not UTF-8 text; store it as strings"),
    ("listed.jsonl", _jsonl({"text": "a", "label": "x"}, {"text": "b", "label": ["business"]}),
     "line 2: column 'label' holds a list (['business']), not a text or number; give each row one "
     "class name (multi-label data is not supported)"),
    ("blank.csv", "text,label\n,a\n  ,b\n", "every text in column 'text' is empty; pass "
                                           "--text-column NAME (it has: text, label)"),
    ("headerless.csv", "goal match,sport\nrain,weather\nteam,sport\n",
     "has no column 'text'; its first line ('goal match', 'sport') looks like data: add a header "
     "line naming the columns (text, label), or pass --text-column NAME"),
    ("broken.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b" "label": "y"}\n',
     "line 3 is not valid JSON (Expecting ',' delimiter at column 14); fix or remove the line"),
    ("ragged.csv", "text,label\nhello,a\nhello, world,b\n",
     "line 3 has 3 fields but the header has 2 (text, label); quote texts that contain commas"),
    # what else a real file holds
    ("ragged.tsv", "text\tlabel\nhi\ta\nhi\tthere\tb\n", "line 3 has 3 fields but the header has "
                                                        "2 (text, label); quote texts that "
                                                        "contain tabs"),
    ("unclosed.csv", 'text,label\nhi,a\n"hello,a\nbye,b\n', "line 3: a quote opened in this row "
                                                           "is never closed"),
    ("quotes.csv", 'text,label\n"a 5" screen",tech\n', "line 2: a quote inside a quoted text ends "
                                                       'it early; double the quotes inside ("")'),
    ("twice.json", '[{"text": "a", "text": "b", "label": "x"}]', ": key 'text' appears twice in "
                                                                 "one object"),
    ("dates.parquet", pa.table({"text": ["a"], "label": [datetime.date(2024, 1, 31)]}),
     "row 1: column 'label' holds a date (datetime.date(2024, 1, 31)), not a text or number"),
    ("dict.jsonl", _jsonl({"text": {"title": "t"}, "label": "x"}),
     "line 1: column 'text' holds a dict (struct) ({'title': 't'}), not a text or number; join it "
     "into one string per row"),
    ("struct.parquet", pa.table({"text": ["a", "b"], "label": [{"k": 1}, {"k": 2}]}),
     "row 1: column 'label' holds a dict (struct)"),
    ("listtext.parquet", pa.table({"text": [["a", "b"]], "label": ["x"]}),
     "row 1: column 'text' holds a list (['a', 'b']), not a text or number"),
    ("score.jsonl", _jsonl({"text": "a", "label": 1}, {"text": "b", "label": 0.75}),
     "line 2: label 0.75 in column 'label' has a fractional part, like a regression target; "
     "laddertune classifies: bin the values into classes"),
    ("score.csv", "text,label\na,1\nb,2.5\n", "line 3: label '2.5' in column 'label' has a "
                                             "fractional part"),
    ("nolabel.csv", "text,label\na,x\n\nb,\n", "line 4 has no 'label'; fill it in or drop the row"),
    ("nolabel.parquet", pa.table({"text": ["a", "b"], "label": [1.0, float("nan")]}),
     "row 2 has no 'label'"),
    ("twice.csv", "text,label,text\na,x,b\n", "has 2 columns named 'text', so it is unclear which "
                                              "to read; rename the others"),
    ("twice.parquet", _TWO_DUPLICATE_TEXTS, "has 2 columns named 'text'"),
    ("twice.jsonl", '{"text": "a", "label": "x"}\n{"text": "a", "text": "b", "label": "y"}\n',
     "line 2: key 'text' appears twice in one object"),
    ("object.json", json.dumps({"data": [{"text": "a", "label": "x"}]}),
     "holds a dict (struct); a .json file must be an array of records"),
    ("broken.json", '[\n {"text": "a", "label": "x"},\n {"text": "b", label: "y"}\n]',
     "line 3 is not valid JSON (Expecting property name enclosed in double quotes at column 16)"),
    ("list.jsonl", '["a", "x"]\n', 'line 1 is a list, not an object like {"text": ..., '
                                   '"label": ...}'),
    ("excel.csv", "text,label\nhi,a\n".encode("utf-16"), "is UTF-16 (Excel's 'Unicode Text'); "
                                                         "re-save it as UTF-8"),
    ("semicolons.csv", "text;label\nhi;a\n", "separates its columns with ';', not commas; "
                                            "re-save it with commas (or with tabs, as .tsv)"),
    ("capitals.jsonl", _jsonl({"Text": "a", "Label": "x"}), "has no column 'text' (it has: Text, "
                                                            "Label); pass --text-column 'Text'"),
    ("fake.parquet", b"not parquet at all", "cannot read"),
    ("empty.json", "[]", "has no rows; add examples"),
    ("empty.parquet", pa.table({"text": pa.array([], pa.string()),
                                "label": pa.array([], pa.string())}), "has no rows"),
])
def test_bad_files_name_the_line_column_and_fix(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        load_texts(path)
    assert message in str(err.value)
    _assert_one_short_line(str(err.value), path)


def test_a_folder_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="is a folder; pass one .csv"):
        load_texts(str(tmp_path))


def test_utf8_parquet_bytes_are_read_as_text(tmp_path):
    path = _write(tmp_path / "b.parquet", pa.table({"text": ["caf\u00e9".encode(), b"tea"],
                                                    "label": [b"drink", b"drink"]}))
    data = load_texts(path)
    assert (data.texts, data.labels) == (["caf\u00e9", "tea"], ["drink", "drink"])


def test_bom_windows_line_endings_and_a_huge_line(tmp_path):
    huge = "word " * 60_000                             # 300 kB: past csv's default field limit
    rows = f"text,label\r\n\"two\r\nlines\",a\r\n{huge},b\r\nbad,row,c\r\n"
    path = _write(tmp_path / "excel.csv", b"\xef\xbb\xbf" + rows.encode())
    with pytest.raises(DataError, match="line 5 has 3 fields"):  # the quoted text spans 2 lines
        load_texts(path)
    path = _write(tmp_path / "excel.csv", b"\xef\xbb\xbf" + rows.rsplit("bad", 1)[0].encode())
    data = load_texts(path)
    assert data.texts == ["two\r\nlines", huge] and data.labels == ["a", "b"]
    lines = _write(tmp_path / "d.jsonl", _jsonl({"text": huge, "label": "a"},
                                                {"text": "x\u2028y", "label": "b"}).replace(
        "\n", "\r\n"))
    assert load_texts(lines).texts == [huge, "x\u2028y"]   # U+2028 is no line break in JSON


def test_some_empty_texts_are_dropped_from_training_data_with_a_count(tmp_path):
    path = _write(tmp_path / "d.jsonl", _jsonl({"id": 1, "text": "goal", "label": "sport"},
                                               {"id": 2, "text": "", "label": "sport"},
                                               {"id": 3, "text": None, "label": "tech"},
                                               {"id": 4, "label": "tech"},
                                               {"id": 5, "text": "chip", "label": "tech"}))
    with pytest.warns(DataWarning, match=r"3 of 5 texts are empty \(first at line 2\); dropped"):
        data = load_texts(path)
    assert (data.texts, data.labels, data.ids) == (["goal", "chip"], ["sport", "tech"], ["1", "5"])


def test_empty_texts_to_predict_on_are_kept_so_every_row_gets_a_prediction(tmp_path):
    path = _write(tmp_path / "new.parquet", pa.table({"text": ["goal", None, "chip"],
                                                      "label": [None, None, None]}))
    with pytest.warns(DataWarning, match=r"1 of 3 texts are empty \(first at row 2\); their "
                                         "predictions rest on no text"):
        data = load_texts(path, need_labels=False)
    assert data.texts == ["goal", "", "chip"] and data.labels == []   # labels are not read


def test_numbers_in_the_text_column_are_text_with_a_warning_when_all_are(tmp_path):
    mixed = _write(tmp_path / "mixed.jsonl", _jsonl({"text": 42, "label": "a"},
                                                    {"text": "route 66", "label": "b"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert load_texts(mixed).texts == ["42", "route 66"]
    digits = _write(tmp_path / "digits.csv", "text,label\n7,a\n3.5,b\n")
    with pytest.warns(DataWarning, match=r"every text in column 'text' is a number \(e.g. '7'\); "
                                         "if the texts are elsewhere, pass --text-column NAME"):
        assert load_texts(digits).texts == ["7", "3.5"]


def test_whole_number_and_boolean_labels_agree_across_formats(tmp_path):
    csv_path = _write(tmp_path / "d.csv", "text,label,flag\na,1,True\nb,02,False\nc,3.0,True\n")
    parquet = _write(tmp_path / "d.parquet", pa.table({"text": ["a", "b", "c"],
                                                       "label": [1.0, 2.0, 3.0],
                                                       "flag": [True, False, True]}))
    jsonl = _write(tmp_path / "d.jsonl", _jsonl({"text": "a", "label": 1, "flag": True},
                                                {"text": "b", "label": 2, "flag": False},
                                                {"text": "c", "label": 3, "flag": True}))
    for path in (csv_path, parquet, jsonl):
        assert load_texts(path).labels == ["1", "2", "3"], path
        assert load_texts(path, label_column="flag").labels == ["True", "False", "True"], path


def test_spaces_around_labels_are_stripped_with_a_count(tmp_path):
    path = _write(tmp_path / "d.csv", "text, label\ngoal, sport\nchip,tech\nteam,sport \n")
    with pytest.warns(DataWarning, match=r"stripped spaces around 2 labels \(e.g. ' sport' is "
                                         r"read as 'sport'\)"):
        assert load_texts(path).labels == ["sport", "tech", "sport"]   # header " label" too


def test_labels_differing_only_in_case_stay_two_classes_with_a_warning(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,Sport\nb,sport\nc,tech\n")
    with pytest.warns(DataWarning, match="labels 'Sport' and 'sport' differ only in "
                                         "capitalisation and are two classes"):
        assert load_texts(path).labels == ["Sport", "sport", "tech"]


def test_eval_labels_are_checked_against_training_before_any_model(tmp_path):
    train = write_csv(tmp_path / "train.csv", topic_rows(12))
    padded = _write(tmp_path / "padded.csv", "text,label\ngoal, sport\nchip,tech \n")
    with pytest.warns(DataWarning, match="stripped spaces"):
        assert load_train_eval(train, padded)[1].labels == ["sport", "tech"]
    capital = _write(tmp_path / "capital.csv", "text,label\ngoal,Sport\nchip,tech\n")
    with pytest.raises(DataError, match=r"has label 'Sport' never seen in training \(known: "
                                        r"money, sport, tech\); did you mean 'sport'\? labels "
                                        "are case-sensitive"):
        load_train_eval(train, capital)


def test_ids_pass_through_loading_and_the_split(tmp_path):
    rows = [{"id": f"doc-{i}", **row} for i, row in enumerate(topic_rows(30))]
    path = write_csv(tmp_path / "d.csv", rows)
    data = load_texts(path)
    assert data.ids == [row["id"] for row in rows]
    assert load_texts(path, id_column=None).ids is None
    text_of = {row["id"]: row["text"] for row in rows}
    train, held_out = load_train_eval(path)
    for part in (train, held_out):
        assert [text_of[i] for i in part.ids] == part.texts    # each id still names its text
    assert sorted(train.ids + held_out.ids) == sorted(text_of)


def test_parquet_ids_with_gaps_read_as_whole_numbers(tmp_path):
    path = _write(tmp_path / "d.parquet", pa.table({"id": [7.0, None], "text": ["a", "b"],
                                                    "label": ["x", "y"]}))
    with pytest.warns(DataWarning, match="1 of 2 rows have no 'id'; their id is left blank"):
        assert load_texts(path).ids == ["7", ""]


def test_bbc_news_ids_are_file_names_kept_with_their_rows():
    train, test = load_bbc_news()
    assert len(set(train.ids + test.ids)) == 2225
    assert all(i.startswith(f"{label}/") and i.endswith(".txt")
               for i, label in zip(test.ids, test.labels))
    assert train.ids[0] == "business/001.txt"
