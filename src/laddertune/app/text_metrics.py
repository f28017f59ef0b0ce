"""Scores of generated text against references: exact match, token F1, ROUGE-L.

Exact match and token F1 compare answers as SQuAD's evaluation script does (Rajpurkar et al.
2016, `evaluate-v1.1.py`): both texts are normalised (lower case, punctuation and the articles
a/an/the removed, runs of white space made one), then

    exact match   1 if the normalised texts are equal, else 0
    token F1      harmonic mean of the precision and recall of the normalised tokens, counted
                  as a multiset (two empty texts score 1, one empty text 0)

ROUGE-L is the F-measure of the longest common subsequence of words (Lin 2004), computed by
Google's `rouge-score` package with its Porter stemmer, as summarisation papers report it.
Every score is a mean over examples, from 0 to 1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(reference, prediction)["rougeL"].fmeasure
            for prediction, reference in zip(predictions, references)]


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Mean exact match, token F1 and ROUGE-L of `predictions` against `references`."""
    n = max(len(predictions), 1)
    return {
        "exact_match": round(sum(map(exact_match, predictions, references)) / n, 6),
        "token_f1": round(sum(map(token_f1, predictions, references)) / n, 6),
        "rouge_l": round(sum(rouge_l(predictions, references)) / n, 6),
    }
