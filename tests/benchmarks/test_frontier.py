"""The frontier suite: the selection rule, one file per run, reruns, the report, --commit."""

from __future__ import annotations

import json
import subprocess

import frontier
import pytest
import runner
from data import DataSpec
from frontier import Backbone, Dataset, Frontier
from tiny_models import save_tiny_text_model, topic_rows, write_csv

CELL = ("tiny", "topics")
A, B, C = frontier.rate_grid("lora")     # the three rates lora tries, low to high
BELOW_A = frontier.next_rate(A, up=False)


def fake_suite(tmp_path, dev, test=None, configs=("lora",), **kw) -> tuple[Frontier, list]:
    """A suite whose training is faked: dev[(lr, seed)] is the dev accuracy, test[...] the
    test one (default: 1 - dev, so choosing on test would choose otherwise). Records each
    call to train as (config, lrs, seed, epochs)."""
    calls = []

    def train(self, cell, cfg, lrs, seed, epochs):
        calls.append((cfg.name, list(lrs), seed, epochs))
        out = {}
        for lr in lrs:
            acc = (0.6 + seed / 100 if cfg.name == "probe"
                   else dev.get((cfg.name, lr, seed), dev.get((lr, seed), 0.5)))
            tst = (test or {}).get((lr, seed), 1 - acc)
            out[lr] = {"dev": {"accuracy": acc, "macro_f1": acc, "loss": 1 - acc},
                       "test": {"accuracy": tst, "macro_f1": tst, "loss": 1 - tst},
                       "memory_account": {"shape": [32, 256], "training_bytes":
                                          MIB.get(cfg.name, MIB[cfg.method])
                                          * 2**20, "frozen_weight_bytes": 90 * 2**20},
                       "train_seconds": 10.0 if cfg.method == "lora" else 2.0 * epochs,
                       "epoch_seconds": [3.0] * epochs, "steps": 10, "device": "cpu",
                       "backbone_compute_dtype": "float32",
                       "epochs": epochs}
        return out.items()
    suite = Frontier(tmp_path / "results", tmp_path / "work", epochs=2, log=lambda *a: None,
                     backbones={"tiny": Backbone("tiny", 4, small_up_start=True),
                                "wide": Backbone("wide", 8)},
                     datasets={"topics": Dataset(DataSpec("topics", 10, 10, None, 32))},
                     grid={CELL: configs}, **kw)
    suite.train = train.__get__(suite)
    return suite, calls


MIB = {"lora": 300, "lst": 40, "probe": 1, "full": 900, "lst-late": 600}


def test_three_rates_on_seed_zero_then_three_seeds_at_the_best_two_chosen_on_the_dev_mean(
        tmp_path):
    # seed 0 ranks A > B > C; over 3 seeds B's dev mean beats A's. Test would pick A.
    # (A is the lowest rate, so the edge rule tries one below it, which does worse)
    dev = {(A, 0): 0.80, (B, 0): 0.78, (C, 0): 0.70, (BELOW_A, 0): 0.6,
           (A, 1): 0.70, (A, 2): 0.70, (B, 1): 0.79, (B, 2): 0.79}
    test = {(A, s): 0.99 for s in range(3)}
    suite, calls = fake_suite(tmp_path, dev, test)
    chosen = suite.tune(CELL, "lora")
    assert calls == [("lora", [A, B, C], 0, 2), ("lora", [BELOW_A], 0, 2),
                     ("lora", [A, B], 1, 2), ("lora", [A, B], 2, 2)]
    assert chosen["lr"] == B and chosen["rates_kept"] == [A, B]
    assert [r["seed"] for r in chosen["runs"]] == [0, 1, 2]
    assert [r["test"]["accuracy"] for r in chosen["runs"]] == pytest.approx([0.22, 0.21, 0.21])


def test_a_dev_accuracy_tie_goes_to_macro_f1():
    a = {"dev": {"accuracy": 0.9, "macro_f1": 0.7, "loss": 0.1}}
    b = {"dev": {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.9}}
    assert frontier.best_rates({1e-3: a, 3e-3: b}, "classify", keep=1) == [3e-3]
    gen_a = {"dev": {"rouge_l": 0.3, "loss": 2.0}}
    gen_b = {"dev": {"rouge_l": 0.3, "loss": 1.5}}      # generation: ROUGE-L, then lower loss
    assert frontier.best_rates({1e-3: gen_a, 3e-3: gen_b}, "generate", keep=1) == [3e-3]


def test_each_finished_run_is_one_file_and_a_rerun_trains_nothing(tmp_path):
    suite, calls = fake_suite(tmp_path, {})
    suite.tune(CELL, "lora")
    files = sorted((tmp_path / "results" / "runs").iterdir())
    assert len(files) == 7 and len(calls) == 3                   # 3 rates + 2 seeds x 2 rates
    saved = json.loads(files[0].read_text())
    assert saved["backbone"] == "tiny" and saved["dataset"] == "topics"
    assert {"dev", "test", "memory_account", "train_seconds", "key"} <= set(saved)
    again, calls_again = fake_suite(tmp_path, {})
    assert again.tune(CELL, "lora") is not None and calls_again == []


def test_an_interrupted_suite_trains_only_what_is_missing(tmp_path):
    suite, _ = fake_suite(tmp_path, {})
    suite.tune(CELL, "lora")
    kept = suite.tune(CELL, "lora")["rates_kept"]
    suite.files.path(suite.key(CELL, frontier.config("lora", 4), kept[1], 2, 2, "")).unlink()
    again, calls = fake_suite(tmp_path, {})
    again.tune(CELL, "lora")
    assert calls == [("lora", [kept[1]], 2, 2)]


def test_the_probe_runs_three_seeds_and_no_rate(tmp_path):
    suite, calls = fake_suite(tmp_path, {}, configs=("probe",))
    chosen = suite.tune(CELL, "probe")
    assert calls == [("probe", [None], s, 2) for s in range(3)] and chosen["lr"] is None


def test_the_equal_wall_clock_arm_trains_as_many_epochs_as_fit_in_loras_time(tmp_path):
    suite, calls = fake_suite(tmp_path, {}, configs=("lora", "lst", "lst@lora-time"))
    suite.tune(CELL, "lst@lora-time")
    lst = suite.tune(CELL, "lst")["lr"]
    arm = [c for c in calls if c[0] == "lst@lora-time"]
    # LoRA's runs take 10 s; one timed epoch of LST takes 3 s: 3 epochs fit
    assert arm == [("lst@lora-time", [lst], 0, 1)] + [
        ("lst@lora-time", [lst], s, 3) for s in range(3)]
    chosen = frontier.choose(suite.records(CELL, "lst@lora-time"), "classify")
    assert [r["epochs"] for r in chosen["runs"]] == [3, 3, 3]
    assert ("lst@lora-time: 3 epochs on the cached backbone, as many as fit in LoRA's 10 s"
            in frontier.write_report(suite).read_text())


def test_a_train_size_cap_cuts_training_and_keeps_dev_and_test(tmp_path):
    import csv

    import data
    spec = frontier.DATASETS["bbc-news"].spec
    whole, capped = data.write_data(spec, tmp_path / "a"), data.write_data(spec, tmp_path / "b",
                                                                            train_cap=200)
    def ids(path):
        return [row["id"] for row in csv.DictReader(open(path))]
    assert (len(ids(whole["train"])), len(ids(capped["train"]))) == (1000, 200)
    assert set(ids(capped["train"])) < set(ids(whole["train"]))
    assert ids(whole["dev"]) == ids(capped["dev"]) and len(ids(whole["dev"])) == 780
    assert ids(whole["test"]) == ids(capped["test"])


def test_pareto_front_keeps_only_points_nothing_beats():
    points = {"probe": (1, 70.0), "lst": (40, 72.0), "lst-half": (60, 71.0),
              "lora": (300, 75.0), "full": (900, 75.0), "twin": (300, 75.0)}
    assert frontier.pareto_front(points) == ["probe", "lst", "lora", "twin"]
    sentence = frontier.budget_sentence(points, ["probe", "lst", "lora"])
    assert sentence.startswith("Below 1 MiB of training account no configuration fits; from 1 "
                               "to 40 MiB, probe (70.00); from 40 to 300 MiB, lst (72.00)")
    assert sentence.endswith("from 300 MiB up, lora (75.00).")


def test_the_report_is_rebuilt_from_the_files_and_lists_what_has_not_run(tmp_path):
    dev = {**{(lr, s): 0.95 for lr in frontier.rate_grid("full") for s in range(3)},
           **{(lr, s): 0.3 for lr in frontier.rate_grid("lst") for s in range(3)}}
    suite, _ = fake_suite(tmp_path, dev, configs=("probe", "lst", "lora", "full"))
    for name in ("probe", "lst", "full"):
        suite.tune(CELL, name)
    fresh, calls = fake_suite(tmp_path, {}, configs=("probe", "lst", "lora", "full"))
    report = frontier.write_report(fresh).read_text()
    assert calls == []
    assert "## Not yet run\n\n- tiny/topics lora: 0 runs finished" in report
    rows = {line.split(" | ")[0][2:]: line for line in report.splitlines()
            if line.startswith("| ") and " | " in line}
    assert rows["probe"].startswith("| probe | 39.00 ± 1.00 | +0.00 | 61.00 | +22.00 |")  # 1 - dev
    assert rows["lst"].startswith("| lst | 70.00 ± 0.00 | +31.00 | 30.00 | -40.00 |")
    assert rows["lora"].startswith("| lora | not yet run |")
    assert rows["full"].endswith("| off (beaten by probe) |")
    assert rows["probe"].endswith("| front |")
    assert "from 1 to 40 MiB, probe (39.00); from 40 MiB up, lst (70.00)." in report
    assert (tmp_path / "results" / "pareto-tiny-topics.png").stat().st_size > 1000


def test_commit_makes_one_commit_per_finished_run(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "unrelated.txt").write_text("staged, not committed")
    git("add", "unrelated.txt")
    suite, _ = fake_suite(tmp_path, {}, configs=("probe",), commit=True)
    suite.tune(CELL, "probe")
    log = git("log", "--format=%s").splitlines()
    assert len(log) == 3 and all(m.startswith("frontier: tiny/topics/probe/") for m in log)
    assert git("show", "--name-only", "--format=", "HEAD").split() == [
        "results/runs/tiny_topics_probe_no-lr_s2_e2.json"]
    assert "unrelated.txt" in git("diff", "--cached", "--name-only")   # left staged


@pytest.mark.parametrize("name, flags", [
    ("lora-top1", ("--top-layers", "1")), ("adapter-tophalf", ("--top-layers", "6")),
    ("lst-every", ("--lst-side-layers", "0,1,2,3,4,5,6,7,8,9,10,11")),
    ("lst-half", ("--lst-side-layers", "1,3,5,7,9,11")),
    ("lst-quarter", ("--lst-side-layers", "3,7,11")), ("full", ()),
    ("lst-xladder", ("--lst-side-layers", "0,1,2,3,4,5,6,7,8,9,10,11",
                     "--lst-xladder-depth", "2")),
    ("lst-late", ("--lst-preset", "late")),
    ("lora-int8", ("--backbone-dtype", "int8")),
    ("lora-top2-nf4", ("--top-layers", "2", "--backbone-dtype", "nf4")),
    ("lst-half-bf16", ("--lst-side-layers", "1,3,5,7,9,11", "--backbone-dtype", "bfloat16"))])
def test_configuration_names_become_flags(name, flags):
    assert frontier.config(name, 12).flags == flags


def test_a_backbone_dtype_suffix_keeps_the_method_and_pairs_with_its_base():
    lora = frontier.config("lora-int8", 12)
    assert (lora.method, lora.arm_of, lora.dtype_of) == ("lora", None, "lora")
    assert frontier.config("lst-every-int8", 12).cacheable          # keyed by the dtypes
    assert not frontier.config("lora-top2-int8", 12).cacheable      # float32 layers below
    arm = frontier.config(f"lora-int8{frontier.ARM}", 12)
    assert (arm.method, arm.arm_of, arm.flags) == ("lora", "lora-int8",
                                                    ("--backbone-dtype", "int8"))
    assert "lora-int8" in frontier.MINILM


def test_designs_read_the_cache_except_the_late_route():
    assert all(frontier.config(name, 6).method == "lst" for name in frontier.DESIGNS)
    assert [n for n in frontier.DESIGNS if not frontier.config(n, 6).cacheable] == ["lst-late"]


def test_rates_are_centred_on_the_methods_default_and_the_grid_is_whole():
    from laddertune.app.methods import DEFAULT_LR
    low, mid, high = frontier.rate_grid("lst")
    assert mid == DEFAULT_LR["lst"] and low < mid < high
    for (model, data), names in frontier.GRID.items():
        assert model in frontier.BACKBONES and data in frontier.DATASETS
        assert ("probe" in names) == (frontier.DATASETS[data].task == "classify")
    assert len([c for c in frontier.GRID if c[0] == "minilm"]) == 3


def test_the_suite_runs_the_product_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    """End to end on a tiny model: LST through `laddertune sweep`, full fine-tuning through
    `laddertune train`, every run scored by `laddertune eval`."""
    model = save_tiny_text_model(tmp_path / "bert", "bert")
    paths = {split: write_csv(tmp_path / f"{split}.csv", topic_rows(n, seed=i))
             for i, (split, n) in enumerate((("train", 24), ("dev", 12), ("test", 12)))}
    suite = Frontier(tmp_path / "results", tmp_path / "work", epochs=1, device="cpu",
                     in_process=True, log=lambda *a: None,
                     backbones={"tiny": Backbone(model, 4)},
                     datasets={"topics": Dataset(DataSpec("topics", 24, 12, None, 32),
                                                 write=lambda spec, folder, cap: paths)},
                     grid={CELL: ("lst", "full")})
    suite.run()
    saved = suite.files.all()
    assert len(saved) == 14
    lst_first = [r for r in saved if r["config"] == "lst" and r["seed"] == 0]
    assert {r["command"].split()[1] for r in lst_first} == {"sweep"}
    assert all("--cache-backbone" in r["command"] for r in lst_first)
    assert {r["command"].split()[1] for r in saved if r["config"] == "full"} == {"train"}
    assert all(0 <= r["test"]["accuracy"] <= 1 and r["dev"]["accuracy"] >= 0 for r in saved)
    monkeypatch.setattr(frontier, "laddertune", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(runner, "laddertune", lambda *a, **k: pytest.fail("scored again"))
    suite.run()
    assert "| lst |" in frontier.write_report(suite).read_text()


def test_report_on_the_command_line_trains_nothing_and_lists_the_whole_grid(tmp_path, capsys):
    frontier.main(["--report", "--results", str(tmp_path), "--work", str(tmp_path / "w")])
    report = (tmp_path / "report.md").read_text()
    missing = report.split("## Not yet run")[1]
    assert missing.count("0 runs finished") == sum(map(len, frontier.GRID.values()))
    assert "- smollm2/headline-generation lora-tophalf: 0 runs finished" in missing
    assert not (tmp_path / "w").exists() and not (tmp_path / "runs").exists()


def test_filters_pick_cells_and_configurations():
    cells = frontier.selected_cells(frontier.GRID, models=("mpnet",))
    assert cells == [("mpnet", "tweet-sentiment"), ("mpnet", "bbc-headlines")]
    assert frontier.selected_cells(frontier.GRID, cells=("minilm/bbc-news",),
                                   datasets=("bbc-news",)) == [("minilm", "bbc-news")]
    assert frontier.selected("lora-top1", ("lora-*",)) and frontier.selected("lora-top1", ())
    assert not frontier.selected("lora-top1", ("lora",))                 # a name is exact
    assert not frontier.selected("lst-every@lora-time", ("lst*",))      # the arm: by its @
    assert frontier.selected("lst-every@lora-time", ("lst-every@lora-time",))
    assert frontier.in_order(frontier.MINILM, ("lora", "lst-half", "lora-*")) == [
        "lora", "lst-half", "lora-top1", "lora-top2", "lora-tophalf", "lora-int8"]


def test_top_k_baselines_run_on_the_cache_of_the_layers_below(tmp_path):
    suite, _ = fake_suite(tmp_path, {})
    files = {"train": "t.csv", "dev": "d.csv"}
    flags = {name: suite.common(CELL, frontier.config(name, 4), files, 2)
             for name in ("lora-top1", "full-tophalf", "lora", "lst-every", "lora-top2-int8")}
    cached = {name for name, f in flags.items() if "--cache-backbone" in f}
    assert cached == {"lora-top1", "full-tophalf", "lst-every"}


def test_a_best_rate_on_the_grids_edge_is_followed_past_it_at_most_twice(tmp_path):
    up1, up2 = frontier.next_rate(C, up=True), frontier.next_rate(frontier.next_rate(C, True), True)
    # seed 0 keeps improving upward: two steps past C, then it stops and seeds follow
    dev = {(A, 0): 0.6, (B, 0): 0.7, (C, 0): 0.8, (up1, 0): 0.85, (up2, 0): 0.9}
    suite, calls = fake_suite(tmp_path, dev)
    chosen = suite.tune(CELL, "lora")
    assert calls[:3] == [("lora", [A, B, C], 0, 2), ("lora", [up1], 0, 2),
                         ("lora", [up2], 0, 2)]
    assert calls[3:] == [("lora", [up2, up1], 1, 2), ("lora", [up2, up1], 2, 2)]
    assert chosen["rates_tried"] == sorted([A, B, C, up1, up2], key=str)


def test_the_edge_rule_stops_inside_and_a_pending_step_leaves_no_choice(tmp_path):
    inside = {lr: {"dev": {"accuracy": acc, "macro_f1": acc}} for lr, acc in
              ((A, 0.7), (B, 0.8), (C, 0.75))}
    assert frontier.edge_step(inside, "classify") is None
    on_edge = {**inside, C: {"dev": {"accuracy": 0.9, "macro_f1": 0.9}}}
    assert frontier.edge_step(on_edge, "classify") == frontier.next_rate(C, up=True)
    records = [{"lr": lr, "seed": s, **r} for lr, r in on_edge.items() for s in range(3)]
    assert frontier.choose(records, "classify", rates_needed=3) is None
    assert frontier.choose(records, "classify", rates_needed=1) is not None


def test_a_reduced_backbone_runs_paired_at_its_bases_chosen_rate(tmp_path):
    dev = {(A, 0): 0.6, (B, 0): 0.8, (C, 0): 0.7, (A, 1): 0.6, (A, 2): 0.6,
           (B, 1): 0.8, (B, 2): 0.8}
    suite, calls = fake_suite(tmp_path, dev, configs=("lora", "lora-int8"))
    suite.tune(CELL, "lora-int8")
    assert calls[-3:] == [("lora-int8", [B], s, 2) for s in range(3)]
    assert suite.rates_needed(CELL, "lora-int8") == 1
    report = frontier.write_report(suite).read_text()
    assert ("lora-int8 against lora, paired by seed at lr 0.0003, computed in float32: test "
            "+0.00 points") in report


def test_lst_rows_keep_the_up_start_they_were_measured_with(tmp_path):
    suite, _ = fake_suite(tmp_path, {})
    files = {"train": "t.csv", "dev": "d.csv"}

    def up(name):
        flags = [str(f) for f in suite.common(CELL, frontier.config(name, 4), files, 2)]
        return flags[flags.index("--lst-up-init") + 1] if "--lst-up-init" in flags else None
    assert up("lst-every") == up("lst-headgate") == up("lst-every-bf16") == "small"
    assert up("lst-updefault") == up("lst-qst") == "default"
    assert up("lst-late") is None and up("lora-top1") is None
    # the other backbones' rows began after the default changed, and run it
    flags = [str(f) for f in suite.common(("wide", CELL[1]), frontier.config("lst", 8),
                                          files, 2)]
    assert "--lst-up-init" not in flags
    assert flags[flags.index("--backbone-dtype") + 1] == "float32"   # LST rows name theirs


def test_lst_rows_name_float32_and_paired_variants_their_own_dtype(tmp_path):
    suite, _ = fake_suite(tmp_path, {})
    files = {"train": "t.csv", "dev": "d.csv"}

    def dtypes(name):
        flags = [str(f) for f in suite.common(CELL, frontier.config(name, 4), files, 2)]
        return [flags[i + 1] for i, f in enumerate(flags) if f == "--backbone-dtype"]
    assert dtypes("lst-every") == dtypes("lst-updefault") == ["float32"]
    assert dtypes("lst-every-bf16") == ["bfloat16"] and dtypes("lst-every-int8") == ["int8"]
    assert dtypes("lora-top1") == [] and dtypes("lora-int8") == ["int8"]


@pytest.mark.parametrize("headgate_dev, verdict", [
    (0.9, "lst-headgate beats the default on dev on at least 1 of 1 data sets at LST's memory: "
          "the default should change."),
    (0.7, "No design at LST's memory beats the default on dev on most data sets: lst-updefault "
          "stays.")])
def test_the_default_is_chosen_on_dev_among_designs_at_lsts_memory(tmp_path, monkeypatch,
                                                                   headgate_dev, verdict):
    monkeypatch.setattr(frontier, "SCREEN", "tiny")
    configs = ("lst-updefault", "lst-headgate", "lst-late", "lora-top1")
    level = {"lst-updefault": 0.8, "lst-headgate": headgate_dev, "lst-late": 0.95,
             "lora-top1": 0.85}
    dev = {(name, lr, s): acc for name, acc in level.items()
           for lr in (*frontier.rate_grid("lst"), *frontier.rate_grid("lora")) for s in range(3)}
    suite, _ = fake_suite(tmp_path, dev, configs=configs)
    for name in configs:
        suite.tune(CELL, name)
    lines = frontier.default_section(suite)
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| lst")}
    assert "(300.0 MiB)" in lines[2]          # top-layer LoRA's account bounds LST's memory
    assert rows["lst-updefault (today's default)"].startswith(
        "| lst-updefault (today's default) | default | 80.00 | 40.0 | yes | — |")
    assert rows["lst-headgate"].startswith(
        f"| lst-headgate | std 0.01 | {100 * headgate_dev:.2f} ({100 * headgate_dev - 80:+.2f})")
    assert rows["lst-late"].endswith("| 600.0 | no | 1 of 1 |")
    assert verdict in lines
    assert ("lst-late costs more than top-layer LoRA's account: a preset, not a default; it "
            "beats the default on dev on 1 of 1 data sets finished.") in lines


def test_no_default_verdict_before_the_memory_bound_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(frontier, "SCREEN", "tiny")
    configs = ("lst-updefault", "lst-headgate")     # top-layer LoRA not in the grid
    dev = {(name, lr, s): acc for name, acc in (("lst-updefault", 0.8), ("lst-headgate", 0.9))
           for lr in frontier.rate_grid("lst") for s in range(3)}
    suite, _ = fake_suite(tmp_path, dev, configs=configs)
    for name in configs:
        suite.tune(CELL, name)
    lines = frontier.default_section(suite)
    assert ("No verdict yet: top-layer LoRA's account (the memory bound) still to finish."
            in lines)
    assert not any("stays" in line or "should change" in line for line in lines)
