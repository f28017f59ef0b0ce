"""The memory scan's own logic: mixed-label training subsets, ratios to LoRA on MiniLM, and rows
kept one file per run."""

from __future__ import annotations

import csv
import json

import memory_scan
import pytest
import suite_report
from data import label_mixed_subset


def test_a_subset_takes_each_label_in_turn(tmp_path):
    source = tmp_path / "train.csv"
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "label"],
                                 *[[i, f"t{i}", "a"] for i in range(4)],
                                 *[[i, f"t{i}", "b"] for i in range(4, 8)]])
    rows = list(csv.DictReader(open(label_mixed_subset(source, 4, tmp_path / "four.csv"))))
    assert [r["label"] for r in rows] == ["a", "b", "a", "b"]
    assert [r["id"] for r in rows] == ["0", "4", "1", "5"]


def _rows():
    return [{"model": m, "method": x, "batch_size": b, "peak_memory_mb": peak,
             "training_memory_mb": peak - 300}
            for b, peaks in ((16, (1000, 800)), (32, (2000, 900)))
            for (m, x), peak in zip((("minilm", "lora"), ("mpnet", "lst")), peaks)]


def test_each_peak_is_divided_by_lora_on_minilm_at_the_same_batch():
    ratios = {(r["batch_size"], r["model"], r["method"]): r["peak_vs_lora_minilm"]
              for r in memory_scan.with_ratios(_rows())}
    assert ratios == pytest.approx({(16, "minilm", "lora"): 1.0, (16, "mpnet", "lst"): 0.8,
                                    (32, "minilm", "lora"): 1.0, (32, "mpnet", "lst"): 0.45})
    assert memory_scan.bigger_under_lst(_rows()) == (
        "LST on MPNet-base needs 0.80× at batch 16, 0.45× at batch 32 the peak of LoRA on MiniLM.")


def test_a_finished_run_is_kept_in_its_own_file_and_not_trained_again(monkeypatch, tmp_path):
    trained = []

    def measure(root, model, method, batch, *rest):
        trained.append((model, method, batch))
        return {"peak_memory_mb": 100.0 * batch, "training_memory_mb": 10.0, "device": "cpu",
                "step_seconds": 1.0}
    monkeypatch.setattr(memory_scan, "measure", measure)
    runs = [("minilm", "lora"), ("mpnet", "lst")]
    first = memory_scan.scan(tmp_path, runs, [16], threads=1)
    assert trained == [("minilm", "lora", 16), ("mpnet", "lst", 16)]
    assert len(list((tmp_path / "rows").glob("*.json"))) == 2
    again = memory_scan.scan(tmp_path, runs, [16, 32], threads=1)
    assert trained[2:] == [("minilm", "lora", 32), ("mpnet", "lst", 32)]  # 16: read back
    assert again[:2] == first


def test_the_suite_report_carries_the_scan_when_one_was_run(tmp_path):
    (tmp_path / "suite-d.json").write_text(json.dumps(
        {"settings": {}, "ablations": {}, "methods": {}}))
    assert "as the batch grows" not in suite_report.write_report(tmp_path).read_text()
    rows = [{"model": "minilm", "method": "lora", "batch_size": 16, "peak_memory_mb": 1000,
             "training_memory_mb": 700}]
    (tmp_path / "memory_scan.json").write_text(json.dumps(
        {"steps": 2, "max_length": 128, "rows": rows}))
    report = suite_report.write_report(tmp_path).read_text()
    assert "2 training steps per run at 128 tokens" in report
    assert "1,000 (1.00×)" in report
