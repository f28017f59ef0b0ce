"""The memory scan's own logic: mixed-label training subsets and ratios to LoRA on MiniLM."""

from __future__ import annotations

import csv

from laddertune.app.bench import memory_scan


def test_a_subset_takes_each_label_in_turn(tmp_path):
    source = tmp_path / "train.csv"
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "label"],
                                 *[[i, f"t{i}", "a"] for i in range(4)],
                                 *[[i, f"t{i}", "b"] for i in range(4, 8)]])
    rows = list(csv.DictReader(open(memory_scan._subset(source, 4, tmp_path / "four.csv"))))
    assert [r["label"] for r in rows] == ["a", "b", "a", "b"]
    assert [r["id"] for r in rows] == ["0", "4", "1", "5"]


def test_the_table_divides_each_peak_by_lora_on_minilm_at_the_same_batch():
    rows = [{"model": m, "method": x, "batch_size": b, "peak_memory_mb": peak,
             "training_memory_mb": peak - 300}
            for b, peaks in ((16, (1000, 800)), (32, (2000, 900)))
            for (m, x), peak in zip((("minilm", "lora"), ("mpnet", "lst")), peaks)]
    lines = memory_scan.table(rows)
    assert "| 16 | mpnet | lst | 800 (0.80×) | 500 |" in lines
    assert "| 32 | mpnet | lst | 900 (0.45×) | 600 |" in lines
    assert "| 32 | minilm | lora | 2,000 (1.00×) | 1,700 |" in lines
