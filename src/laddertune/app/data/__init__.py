"""Text classification data, by job: reading files (`readers`, their syntax in `tables`), the
built-in data sets (`corpora`), eval splits (`splits`, `train_eval`), class names (`labels`)
and token ids for the model (`encoding`)."""

from .corpora import (
    BBC_HEADLINES,
    BBC_NEWS,
    BUILTIN,
    PAIR_COLUMNS,
    TWEET_SENTIMENT,
    load_bbc_headlines,
    load_bbc_news,
    load_builtin,
    load_tweet_sentiment,
)
from .encoding import Encoded, collate, encode_labels, reads_segment_ids, tokenize
from .examples import PairDataset, TextDataset
from .labels import check_classes, check_known_labels, label_names
from .readers import columns, has_columns, load_pairs, load_texts
from .splits import random_split, stratified_split
from .tables import SUFFIXES
from .train_eval import load_train_eval

__all__ = [
    "BBC_HEADLINES", "BBC_NEWS", "BUILTIN", "PAIR_COLUMNS", "SUFFIXES", "TWEET_SENTIMENT",
    "Encoded", "PairDataset", "TextDataset", "check_classes", "check_known_labels", "collate",
    "columns", "encode_labels", "has_columns", "label_names", "load_bbc_headlines",
    "load_bbc_news", "load_builtin", "load_pairs", "load_texts", "load_train_eval",
    "load_tweet_sentiment", "random_split", "reads_segment_ids", "stratified_split",
    "tokenize",
]
