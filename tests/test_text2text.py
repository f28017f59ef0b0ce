"""Text-to-text classification: verbalizer, target labels, and evaluation by generated strings."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_backbone

from laddertune import InputError, LSTConfig, get_lst_model
from laddertune.text2text import (
    Verbalizer,
    WordTokenizer,
    evaluate_text2text,
    generated_texts,
    tokenize_targets,
)

WORDS = "the movie film was is great awful fine bad positive negative".split()


def test_verbalizer_maps_classes_to_strings_and_back():
    verbalizer = Verbalizer(["neg", "pos"], {"neg": "negative", "pos": "positive"})
    assert verbalizer.target(1) == "positive"
    assert verbalizer.label_of(" negative ") == 0
    assert verbalizer.label_of("neutral") == -1
    assert Verbalizer(["negative", "positive"]).targets == ["negative", "positive"]


@pytest.mark.parametrize("targets, match", [({"neg": "no"}, "pos"), (["yes", "yes"], "distinct"),
                                            (["yes"], "one target per class")])
def test_verbalizer_rejects_bad_targets(targets, match):
    with pytest.raises(InputError, match=match):
        Verbalizer(["neg", "pos"], targets)


def test_target_ids_are_padded_with_minus_100_and_end_with_eos():
    tokenizer = WordTokenizer(WORDS)
    verbalizer = Verbalizer(["negative", "positive"], ["bad", "is great"])
    labels = verbalizer.target_ids([1, 0], tokenizer)
    great, is_, bad = tokenizer.ids["great"], tokenizer.ids["is"], tokenizer.ids["bad"]
    assert labels.tolist() == [[is_, great, 1], [bad, 1, -100]]
    # token id lists work without a tokenizer; eos is appended once
    assert tokenize_targets([[5, 6], [7, 1]], eos_token_id=1).tolist() == [[5, 6, 1], [7, 1, -100]]
    with pytest.raises(InputError, match="tokenizer"):
        tokenize_targets(["bad"])


def test_generated_texts_drop_start_token_padding_and_everything_after_eos():
    tokenizer = WordTokenizer(WORDS)
    model = get_lst_model(tiny_backbone("t5", task="lm"),
                          LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=4))
    great, bad = tokenizer.ids["great"], tokenizer.ids["bad"]
    sequences = torch.tensor([[0, great, 1, bad], [0, bad, bad, 0]])
    assert generated_texts(model, sequences, tokenizer) == ["great", "bad bad"]


def sentiment_batch(tokenizer, generator, n):
    """'the movie was great' -> class 1, 'the film is awful' -> class 0, ..."""
    good, bad = ["great", "fine"], ["awful", "bad"]
    labels = torch.randint(0, 2, (n,), generator=generator)
    texts = []
    for label in labels.tolist():
        noun, verb, adjective = (options[int(torch.randint(0, 2, (1,), generator=generator))]
                                 for options in (["movie", "film"], ["was", "is"],
                                                 good if label else bad))
        texts.append(f"the {noun} {verb} {adjective}")
    return {**tokenizer.batch(texts), "labels": labels}


def test_tiny_t5_learns_word_labels_and_evaluation_compares_generated_strings():
    torch.manual_seed(0)
    tokenizer = WordTokenizer(WORDS)
    verbalizer = Verbalizer(["negative", "positive"])
    backbone = tiny_backbone("t5", task="lm", d_model=64, d_ff=128, d_kv=16)
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=2,
                                              dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    test_batches = [sentiment_batch(tokenizer, generator, 16) for _ in range(2)]
    before = evaluate_text2text(model, test_batches, tokenizer, verbalizer)
    assert before["accuracy"] < 0.5               # an untrained side network names no class

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        batch = sentiment_batch(tokenizer, generator, 16)
        labels = verbalizer.target_ids(batch["labels"], tokenizer)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    after = evaluate_text2text(model, test_batches, tokenizer, verbalizer)
    assert after["accuracy"] == 1.0
    expected = [verbalizer.target(y) for b in test_batches for y in b["labels"].tolist()]
    assert after["predictions"] == expected
    assert after["predicted_labels"] == [y for b in test_batches for y in b["labels"].tolist()]
    # labels given as target token ids are compared the same way
    as_ids = [{**b, "labels": verbalizer.target_ids(b["labels"], tokenizer)} for b in test_batches]
    assert evaluate_text2text(model, as_ids, tokenizer, verbalizer)["accuracy"] == 1.0
