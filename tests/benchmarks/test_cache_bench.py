"""The cache bench's results: each expectation checked against the measured figures."""

from __future__ import annotations

import json

import cache_bench


def test_the_cache_bench_states_each_expectation_with_its_figures(tmp_path):
    results = {"machine": {"cpu": "x", "cores": 2, "torch": "t", "date": "d"},
               "threads": "1", "command": "python benchmarks/cache_bench.py",
               "epochs": {"minilm": {
                   "no cache": {"epoch_seconds": [10.0, 10.0, 10.0], "later_vs_first": 1.0,
                                "backbone_seconds": 20.0, "accuracy": 0.9},
                   "cache": {"epoch_seconds": [10.0, 2.0, 2.5], "later_vs_first": 0.25,
                             "backbone_seconds": 7.0, "accuracy": 0.9},
                   "cache_bytes_per_example": 12345, "cache_examples": 100}},
               "sweeps": {"minilm": {"separate_runs_seconds": 800.0, "sweep_seconds": 320.0,
                                     "ratio": 0.4}}}
    cache_bench.write(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    checks = {c["what"]: c for c in cache_bench.checks(results)}
    assert checks["minilm: cached epochs after the first ≤ 0.30× the first"] == {
        "what": "minilm: cached epochs after the first ≤ 0.30× the first", "value": 0.25,
        "limit": 0.30, "met": True}
    assert checks["minilm: 8-configuration sweep ≤ 0.35× of 8 runs"] == {
        "what": "minilm: 8-configuration sweep ≤ 0.35× of 8 runs", "value": 0.4,
        "limit": 0.35, "met": False}
    assert (tmp_path / "results.md").is_file()


def test_a_rerun_keeps_what_an_earlier_call_finished(monkeypatch, tmp_path):
    measured = []

    def epochs(model, work, setup):
        measured.append((model, setup.epochs))
        return {"cache": {"later_vs_first": 0.2}}
    monkeypatch.setattr(cache_bench, "epochs", epochs)
    monkeypatch.setattr(cache_bench, "machine", lambda: {})
    monkeypatch.setattr(cache_bench, "write", lambda results, folder: folder)
    args = ["--models", "minilm", "--sweep-models", "", "--work", str(tmp_path)]
    cache_bench.main(args)
    cache_bench.main([*args, "--models", "minilm,mpnet"])
    assert measured == [("minilm", 3), ("mpnet", 3)]      # minilm's figures were kept
    cache_bench.main([*args, "--epochs", "2"])
    assert measured[-1] == ("minilm", 2)                   # other settings: measured again
