"""The memory scan's own logic: mixed-label training subsets and ratios to LoRA on MiniLM."""

from __future__ import annotations

import csv
import json

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
    assert memory_scan.bigger_under_lst(rows) == (
        "LST on MPNet-base needs 0.80× at batch 16, 0.45× at batch 32 the peak of LoRA on MiniLM.")


def test_the_suite_report_carries_the_scan_when_one_was_run(tmp_path):
    from laddertune.app.bench import suite_report
    (tmp_path / "suite-d.json").write_text(json.dumps(
        {"settings": {}, "ablations": {}, "methods": {}}))
    assert "as the batch grows" not in suite_report.write_report(tmp_path).read_text()
    rows = [{"model": "minilm", "method": "lora", "batch_size": 16, "peak_memory_mb": 1000,
             "training_memory_mb": 700}]
    (tmp_path / "memory_scan.json").write_text(json.dumps(
        {"steps": 2, "max_length": 128, "rows": rows}))
    report = suite_report.write_report(tmp_path).read_text()
    assert "2 training steps per run at 128 tokens" in report
    assert "| 16 | minilm | lora | 1,000 (1.00×) | 700 |" in report
