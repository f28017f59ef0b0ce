"""benchmarks/plan_check.py's data logic: the plan line it reads, the data it writes, the rows
and the report it builds (no training, no timings)."""

from __future__ import annotations

import csv

import plan_check
import pytest

LINE = ("plan: lst at batch 16 x 64 tokens should peak at 1,203.2 MiB above the runtime "
        "(weights 87.5 MiB, activations 22.8 MiB, gradients and AdamW 2.6 MiB, working set "
        "24.0 MiB, eval 114.0 MiB, cached states 21.0 MiB; `laddertune plan` explains)")


def test_the_plan_line_is_read_whole():
    parts = plan_check.parse_plan_line(f"loading\n{LINE}\ntrainable params 1\n")
    assert parts == {"total": 1203.2, "weights": 87.5, "activations": 22.8,
                     "gradients and AdamW": 2.6, "working set": 24.0, "eval": 114.0,
                     "cached states": 21.0}
    with pytest.raises(ValueError):
        plan_check.parse_plan_line("no plan here\n")


def _source(path, rows=40):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": f"tweet {i}", "label": ["b", "a"][i % 2]} for i in range(rows))
    return path


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_long_texts_join_tweets_and_cycle_the_labels(tmp_path):
    rows = _read(plan_check.write_long_texts(_source(tmp_path / "s.csv"), tmp_path / "l.csv", 3))
    assert [r["label"] for r in rows] == ["a", "b", "a"]
    assert rows[1]["text"] == " ".join(f"tweet {i}" for i in range(8, 16))
    tweets = _read(plan_check.write_tweets(tmp_path / "s.csv", tmp_path / "t.csv", 4))
    assert [r["text"] for r in tweets] == [f"tweet {i}" for i in range(4)]
    assert [r["label"] for r in tweets] == ["a", "b", "a", "b"]


def _row(config, allocator, planned, measured):
    metrics = {"method": "lst", "peak_above_runtime_mb": measured, "runtime_rss_mb": 490.0,
               "runtime_code_paged_in_mb": 25.0, "peak_memory_mb": 800.0}
    return plan_check.row_of(f"{config}_{allocator}", config, "long", allocator, 16, 64,
                             {"total": planned}, metrics, ["train", "--method", "lst"])


def test_rows_carry_the_ratio_and_the_report_counts_those_within_15_percent():
    rows = [_row("lst", "default", 100.0, 110.0), _row("lora", "default", 50.0, 100.0),
            _row("lst", "returning", 90.0, 100.0)]
    assert rows[0]["planned_vs_measured"] == pytest.approx(0.909, abs=1e-3)
    assert rows[0]["command"] == "laddertune train --method lst"
    info = {"cpu": "cpu", "cores": 2, "torch": "2", "date": "today"}
    text = plan_check.report(rows, info)
    assert "default: 1 of 2 runs within 15%; planned / measured from 0.50 to 0.91." in text
    assert "returning: 1 of 1 runs within 15%" in text
    assert "| minilm | lst | long | default | 16 × 64 | 100 | 110 | 0.91 | 490 | 25 |" in text
    assert plan_check.run_key("minilm", "lst", "long", "default", 16, 64) == \
        "lst_long_default_b16_t64"
    assert plan_check.run_key("smollm2", "lst", "long", "default", 16, 64).startswith("smollm2_")


def test_allocator_settings_reach_children_and_are_undone(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with plan_check.allocator_settings({"MALLOC_MMAP_THRESHOLD_": "131072"}):
        assert plan_check.os.environ["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert "MALLOC_MMAP_THRESHOLD_" not in plan_check.os.environ
