"""The serving benchmark's report: each target checked against the measured figures."""

from __future__ import annotations

import argparse

import serve_bench


def _figures(model, arm, rss, same_text, rates):
    return {"model": model, "arm": arm, "rss_mib_1_task": rss[0], "rss_mib_16_tasks": rss[1],
            "same_text_ms": dict(zip((1, 4, 16), same_text)),
            "load": {k: {"requests_per_s": r, "p50_ms": 100.0, "p95_ms": 150.0}
                     for k, r in zip((1, 4, 16), rates)},
            "backbone_passes": 10, "sigterm_exit": 0}


def test_the_report_states_each_target_with_its_ratio():
    results = [_figures("minilm", "lst", (100, 120), (10, 11, 14), (20, 19, 17)),
               _figures("minilm", "lora", (100, 200), (10, 15, 40), (20, 18, 18))]
    args = argparse.Namespace(threads=1, requests=32, concurrency=8)
    text = serve_bench.report(results, args, "python benchmarks/serve_bench.py")
    assert "| minilm: k=16 tasks on one text ≤ 1.5× one task's latency | 1.40× | yes |" in text
    assert "| minilm: resident memory of 16 tasks ≤ 1.3× one task's | 1.20× | yes |" in text
    assert "| minilm: throughput with 16 mixed tasks ≥ 0.8× one task's | 0.85× | yes |" in text
    assert "| minilm: PEFT LoRA, k=16 on one text, for the ratio | 4.00× |" in text
    assert "`python benchmarks/serve_bench.py`" in text


def test_percentiles_pick_measured_values():
    values = [float(v) for v in range(1, 101)]
    assert serve_bench.percentile(values, 0.5) in (50.0, 51.0)
    assert serve_bench.percentile(values, 0.95) == 95.0
