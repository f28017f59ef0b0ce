"""The bench end to end on tiny shapes: fields present, and LST saves less for backward."""

from __future__ import annotations

import argparse
import json

import pytest

from laddertune.app.bench import add_arguments
from laddertune.app.bench.cli import output_folder, run_bench
from laddertune.app.bench.measure import RunSpec, measure
from laddertune.app.bench.report import check_expectations, markdown_table


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--quick", "--workloads", "tiny-bert", "--methods",
                              "full,lst", "--batch-size", "2", "--threads", "1",
                              "--output", str(tmp_path), *extra])


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_bench(_args(out)), out


@pytest.mark.slow
def test_bench_writes_json_table_and_plot(tiny_results):
    results, out = tiny_results
    saved = json.loads((out / "results.json").read_text())
    assert {(r["workload"], r["method"]) for r in saved["runs"]} == {
        ("tiny-bert", "full"), ("tiny-bert", "lst")}
    for run_ in saved["runs"]:
        assert "error" not in run_, run_
        for key in ("trainable_params", "trainable_percent", "cpu_peak_rss_mb", "step_seconds",
                    "examples_per_second", "inference_ms_per_example", "checkpoint_mb"):
            assert key in run_, key
        assert set(run_["account"]) == {"saved_mib", "parameter_mib", "gradient_mib",
                                        "optimizer_mib", "total_mib", "trainable_weight_mib",
                                        "frozen_weight_mib"}
    table = (out / "results.md").read_text()
    assert "| tiny-bert | LST |" in table and "| tiny-bert | Full FT |" in table
    assert (out / "memory_bars.png").stat().st_size > 1000
    assert saved["machine"]["cores"] >= 1 and "cpu" in saved["machine"]


@pytest.mark.slow
def test_lst_saves_less_for_backward_than_full(tiny_results):
    results, _ = tiny_results
    by = {r["method"]: r for r in results["runs"]}
    assert by["lst"]["account"]["saved_mib"] < by["full"]["account"]["saved_mib"]
    assert by["lst"]["account"]["total_mib"] < by["full"]["account"]["total_mib"]
    assert by["lst"]["trainable_params"] < by["full"]["trainable_params"]
    assert by["lst"]["checkpoint_mb"] < by["full"]["checkpoint_mb"]


def test_lst_saves_less_for_backward_text_to_text():
    spec = dict(batch_size=2, threads=1, train=False, inference=False, checkpoint=False)
    full = measure(RunSpec("tiny-t5", "full", **spec))["account"]
    lst = measure(RunSpec("tiny-t5", "lst", **spec))["account"]
    assert lst["saved_mib"] < full["saved_mib"]
    assert lst["gradient_mib"] < full["gradient_mib"]


def test_expectations_report_misses_with_their_size():
    runs = [{"workload": "w", "method": "full", "cpu_peak_rss_mb": 100.0, "step_seconds": 1.0,
             "account": {"total_mib": 100.0}, "trainable_params": 10, "trainable_percent": 100},
            {"workload": "w", "method": "lst", "cpu_peak_rss_mb": 50.0, "step_seconds": 0.2,
             "account": {"total_mib": 20.0}, "trainable_params": 1, "trainable_percent": 10}]
    checks = {c["check"]: c for c in check_expectations(runs, "w")}
    measured = checks["LST peak memory (measured) / full FT"]
    assert measured["met"] is False and measured["miss"] == pytest.approx(0.25)
    assert checks["LST peak memory (account) / full FT"]["met"] is True
    assert checks["LST step time / full FT"]["met"] is True
    assert "0.50×" in markdown_table(runs)


def test_measure_in_process_counts_trainable_parameters():
    result = measure(RunSpec("tiny-bert", "lst", batch_size=2, steps=1, threads=1,
                             inference=False, checkpoint=False))
    assert 0 < result["trainable_percent"] < 100
    assert result["account"]["gradient_mib"] == pytest.approx(
        result["trainable_params"] * 4 / 2**20)


@pytest.mark.slow
def test_long_sequences_are_measured_for_each_method_and_plotted(tmp_path):
    results = run_bench(_args(tmp_path, "--parts", "long", "--workloads", "tiny-llama",
                              "--methods", "full,lora,lst", "--batch-size", "1"))
    long = results["long"]
    assert [(r["seq_len"], r["method"]) for r in long] == [
        (n, m) for n in (256, 512) for m in ("full", "lora", "lst")]
    assert all("error" not in r and r["account"]["total_mib"] > 0 for r in long)
    saved = {(r["seq_len"], r["method"]): r["account"]["saved_mib"] for r in long}
    for method in ("full", "lora", "lst"):      # activations grow with the sequence
        assert saved[(512, method)] > saved[(256, method)]
    assert saved[(512, "lst")] < saved[(512, "lora")]
    expected = [c for c in results["expectations"] if "at 512 tokens" in c["check"]]
    assert len(expected) == 1 and expected[0]["limit"] == 0.25
    assert (tmp_path / "long_context.png").is_file()
    assert "## Long sequences" in (tmp_path / "results.md").read_text()


def test_the_default_output_is_under_the_current_directory_not_the_source_tree():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert output_folder(parser.parse_args([])).as_posix() == "runs/bench"
    assert output_folder(parser.parse_args(["--quick"])).as_posix() == "runs/bench-quick"
    assert output_folder(parser.parse_args(["--output", "x"])).as_posix() == "x"
