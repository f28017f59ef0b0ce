"""The fixed subsets of the built-in tweet-sentiment split that results.md was trained on:
160 tweets per class from its training split, 50 per class from its test split (seed 0).

    PYTHONPATH=src python benchmarks/results/text2text/make_data.py \
        benchmarks/results/text2text/data
"""

import csv
import random
import sys

from laddertune.app.data import load_tweet_sentiment


def main(out: str) -> None:
    train, test = load_tweet_sentiment()
    for name, data, per_class in (("train", train, 160), ("eval", test, 50)):
        rng = random.Random(0)
        rows = []
        for label in sorted(set(data.labels)):
            picked = [i for i, other in enumerate(data.labels) if other == label]
            rows += [{"id": data.ids[i], "text": data.texts[i], "label": label}
                     for i in rng.sample(picked, per_class)]
        rng.shuffle(rows)
        with open(f"{out}/{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        print(name, len(rows))


if __name__ == "__main__":
    main(sys.argv[1])
