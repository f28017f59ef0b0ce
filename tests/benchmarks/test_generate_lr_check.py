"""The learning-rate check of `laddertune demo --task generate`: its results, and when the
demo's rates are out of date."""

import json

import generate_lr_check

from laddertune.app.demo_headlines import CHOSEN_LR


def test_the_lr_check_keeps_its_choice_and_flags_a_stale_demo_rate(tmp_path):
    rows = [{"lr": lr, "loss": loss, "rouge_l": 0.2, "exact_match": 0.0, "token_f1": 0.2}
            for lr, loss in ((3e-4, 4.7), (1e-3, 4.5), (3e-3, 6.8))]
    results = {"machine": {}, "rates": {"lst": rows}, "chosen": {"lst": 1e-3}}
    text = generate_lr_check.write(results, tmp_path).read_text()
    assert json.loads((tmp_path / "lr_check.json").read_text()) == results
    stale = generate_lr_check.stale_choices(results)
    assert stale == ({} if CHOSEN_LR["lst"] == 1e-3 else {"lst": 1e-3})
    assert ("differs" in text) == bool(stale)
    assert generate_lr_check.stale_choices({**results, "chosen": {"lst": 5.0}}) == {"lst": 5.0}
    assert generate_lr_check.stale_choices({**results, "epochs": 3, "chosen": {"lst": 5.0}}) == {}
