"""The frontier suite: accuracy per byte of training memory, every method tuned the same way.

For each cell of `GRID` (a backbone and a data set) and each method configuration in it, the
product itself trains and scores. A method that reads the frozen backbone's states (the
registry's `reads_backbone_states`: LST, the probe) runs on the backbone cache, and its rates of
one seed train together in one `laddertune sweep`; so do a top-K baseline's, on the cached state
entering its top K layers (`--top-layers K --cache-backbone`); the others run `laddertune train`
once per rate. Every run is scored on the test split by `laddertune eval` as soon as it finishes:

    rates     seed 0 at 3 learning rates, centred on the method's default rate
              (`laddertune.app.methods.DEFAULT_LR`), a factor of about 3 apart; while the
              best of them is the lowest or highest tried, one more past it (at most 2)
    seeds     seeds 1 and 2 at the best 2 of those rates (by seed 0's dev score)
    choose    the rate with the best 3-seed dev mean (accuracy, then macro-F1; for generation
              ROUGE-L, then the lower loss); test is never read to choose
    report    the chosen rate's 3 test scores: mean ± std, and the dev-to-test drop

The probe chooses its own regularisation on dev inside the run: its 3 seeds only. A backbone
with `one_rate` (SmolLM2) trains each method at that one rate, 3 seeds. A configuration named
``BASE@lora-time`` is the equal-wall-clock arm: BASE (an LST configuration) at its chosen rate
on the cached backbone, for as many epochs as fit in the mean training time of LoRA's chosen
runs (one timed epoch of BASE decides how many). Every other run trains `--epochs` epochs.

Each finished run is one JSON file under ``<results>/runs/`` (dev and test scores, the memory
account at 32 x 256 tokens, peak RSS, wall time, the command), written as it finishes and, with
`--commit`, committed at once; a rerun skips runs that have a file. The report (report.md and
pareto-<backbone>-<data set>.png) is rebuilt from those files alone:

    python benchmarks/frontier.py --cells minilm/tweet-sentiment --methods probe,lst-every
    python benchmarks/frontier.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import math
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from accuracy_suite import next_rate
from data import PAIR_COLUMN, DataSpec, write_data, write_headlines
from runner import (
    ResultFiles,
    RunFailed,
    comma_list,
    laddertune,
    laddertune_json,
    machine,
    read_json,
    write_text,
)

SEEDS = (0, 1, 2)
EPOCHS = 3
RATES_TRIED, RATES_KEPT = 3, 2
EDGE_STEPS = 2                 # rates tried past the grid's edge while seed 0's best sits on it
MIN_GENERATE_STEPS = 300       # the floor for headline generation
RESULTS, WORK = Path("benchmarks/results/frontier"), Path("runs/frontier")
NO_RATE = ("probe",)           # chooses its own regularisation on dev, inside the run
ARM = "@lora-time"             # suffix of the equal-wall-clock arm


@dataclass(frozen=True)
class Backbone:
    model: str                 # --model
    layers: int                # L: top-K's L/2, LST's half and quarter
    one_rate: bool = False     # each method at one rate (`ONE_RATE`), seeds only
    # its LST classification rows began before 2026-12-07 with the up-projection's std-0.01
    # start (auto's then) and keep it; lst-updefault measures today's default beside them
    small_up_start: bool = False


@dataclass(frozen=True)
class Dataset:
    spec: DataSpec
    task: str = "classify"
    batch_size: int = 16
    flags: tuple = ()                                # for every method on this data
    method_flags: dict = field(default_factory=dict)  # method -> its flags on this data
    write: object = write_data                       # (spec, folder, train_cap) -> paths


BACKBONES = {"minilm": Backbone("minilm", 6, small_up_start=True), "mpnet": Backbone("mpnet", 12),
             "smollm2": Backbone("smollm2", 30, one_rate=True)}

DATASETS = {
    # The product's 80/20 split leaves 1,780 training articles: 780 of them are dev (the split
    # that chooses, so as large as the training set can spare) and 1,000 train, where topic
    # accuracy is already near its ceiling; test is the held-out 445, as in earlier suites.
    "bbc-news": Dataset(DataSpec("bbc-news", 1000, 780, None, 128, "BBC News, 5 topics")),
    "tweet-sentiment": Dataset(DataSpec("tweet-sentiment", 4000, 1000, 2000, 64,
                                        "tweets, negative/neutral/positive")),
    # 4,450 pairs (each article with its headline and with another headline of its topic):
    # the training split's pairs as 1,000 dev and the rest (up to 2,560) train; test held out.
    "bbc-headlines": Dataset(DataSpec("bbc-headlines", 2560, 1000, None, 128,
                                      "does this headline belong to this article"),
                             flags=("--text-pair-column", PAIR_COLUMN)),
    # 1,280 articles at batch 8 are 160 steps an epoch: 480 in 3 epochs (>= 300).
    "headline-generation": Dataset(
        DataSpec("headline-generation", 1280, 500, None, 192,
                 "BBC News: the body's first 64 words -> the headline"),
        task="generate", batch_size=8, flags=("--chat-template", "--max-new-tokens", "24"),
        method_flags={"lst": ("--lst-head-residual", "true")}, write=write_headlines),
}

MINILM = ("probe", "lst-every", "lst-half", "lst-quarter",
          "full-top1", "full-top2", "full-tophalf", "lora-top1", "lora-top2", "lora-tophalf",
          "adapter-top1", "adapter-top2", "adapter-tophalf", "lora", "full",
          f"lst-every{ARM}",
          # LoRA on the int8 backbone LST can use: the fair baseline at that dtype; LST on a
          # bfloat16 and an int8 backbone, paired with LST's float32 runs (today's default
          # start too: the CLI's dtype default is chosen on it)
          "lora-int8", "lst-every-bf16", "lst-every-int8", "lst-updefault-bf16",
          # the side-network designs screened on MiniLM (`DESIGNS`)
          "lst-headgate", "lst-updefault", "lst-qst", "lst-xladder", "lst-wide", "lst-late")
SMALLER = ("probe", "lst", "lora-top1", "lora-tophalf", "lora", f"lst{ARM}")
# and MPNet-base's LST at each backbone dtype: the bigger backbone in MiniLM's memory
MPNET = (*SMALLER, "lst-bf16", "lst-int8")
GRID = {
    ("minilm", "bbc-news"): MINILM,
    ("minilm", "tweet-sentiment"): MINILM,
    ("minilm", "bbc-headlines"): MINILM,
    # where a sentence-embedding probe is weakest: sentiment and the pairs
    ("mpnet", "tweet-sentiment"): MPNET,
    ("mpnet", "bbc-headlines"): MPNET,
    ("smollm2", "headline-generation"): tuple(c for c in SMALLER if c != "probe"),
    ("smollm2", "tweet-sentiment"): SMALLER,
}


def one_rate() -> dict:
    """SmolLM2's rate per method: the headline check's (benchmarks/generate_lr_check.py)."""
    from laddertune.app.demo_headlines import CHOSEN_LR
    return dict(CHOSEN_LR)


# ---- method configurations ----------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    name: str
    method: str
    flags: tuple = ()
    arm_of: str | None = None    # the equal-wall-clock arm: the configuration it retrains
    dtype_of: str | None = None  # NAME-DTYPE: NAME on a reduced backbone, paired with NAME
    cacheable: bool = True       # False: trains backbone layers, so reads no cached states

    @property
    def has_rate(self) -> bool:
        return self.method not in NO_RATE


# The side-network designs of later work (docs/design.md), each LST with side blocks on every
# layer (the late route: its preset's layers) plus its flags: QST's output mixing alone; QST's
# ladders and gates with its output mixing; xLadder's depth (2 x delta extra side blocks fed by
# the top delta = 2 layers); a side network twice as wide (r = 4) whose ladders stay low-rank;
# the late route (top 2 layers trained, so it cannot read cached states).
DESIGNS = {
    "lst-headgate": ("--lst-head-gate", "true"),
    # the up-projection at PyTorch's default start, as QST's, alone: the std-0.01 start the
    # other rows pin sat at chance for 1-2 epochs on the pairs; this is auto's start today
    "lst-updefault": ("--lst-up-init", "default"),
    "lst-qst": ("--lst-ladder-rank", "16", "--lst-gate-per-channel", "true",
                "--lst-head-gate", "true", "--lst-up-init", "default"),
    "lst-xladder": ("--lst-xladder-depth", "2"),
    "lst-wide": ("--reduction-factor", "4", "--lst-ladder-rank", "16"),
    "lst-late": ("--lst-preset", "late"),
}
NOT_CACHEABLE = ("lst-late",)
DEFAULT_NOW = "lst-updefault"   # what `laddertune train --method lst` runs today, on MiniLM
SCREEN = "minilm"               # the backbone every design is screened on

# NAME-SUFFIX: configuration NAME on a backbone stored in that dtype (--backbone-dtype); LoRA's
# is QLoRA at nf4. Paired with NAME: NAME's chosen rate, its 3 seeds, the same flags, so the
# seeds' differences measure what the dtype costs. One rate per run, so never a sweep (a sweep
# shares one backbone, which a pruned LST converts); LST's cache is keyed by the dtypes.
BACKBONE_DTYPES = {"-bf16": "bfloat16", "-int8": "int8", "-nf4": "nf4"}


def config(name: str, layers: int) -> Config:
    """A configuration from its name: METHOD, METHOD-topK (K = 1, 2 or "half" of `layers`),
    lst-every / lst-half / lst-quarter (side blocks on that share of the layers), a design of
    `DESIGNS`, BASE@lora-time, BASE-int8 (a dtype of `BACKBONE_DTYPES`)."""
    if name in DESIGNS:       # beside lst-every: side blocks on every layer the design allows
        every = () if name in NOT_CACHEABLE else ("--lst-side-layers",
                                                  spaced_layers(layers, layers))
        return Config(name, "lst", every + DESIGNS[name], cacheable=name not in NOT_CACHEABLE)
    if name.endswith(ARM):
        base = config(name[:-len(ARM)], layers)
        return dataclasses.replace(base, name=name, arm_of=base.name)
    for suffix, dtype in BACKBONE_DTYPES.items():
        if name.endswith(suffix):
            base = config(name[:-len(suffix)], layers)
            # a top-K cache holds float32 layers below: a reduced one runs them live
            return dataclasses.replace(base, name=name, dtype_of=base.name,
                                       cacheable=base.cacheable and not caches_below(base),
                                       flags=(*base.flags, "--backbone-dtype", dtype))
    method, _, depth = name.partition("-")
    if depth.startswith("top"):
        k = layers // 2 if depth == "tophalf" else int(depth[3:])
        return Config(name, method, ("--top-layers", str(k)))
    if depth:
        share = {"every": layers, "half": layers // 2, "quarter": math.ceil(layers / 4)}[depth]
        return Config(name, method, ("--lst-side-layers", spaced_layers(layers, share)))
    return Config(name, method)


def spaced_layers(layers: int, kept: int) -> str:
    """`kept` of `layers` layer indices, evenly spaced, ending at the top: (12, 3) -> 3,7,11."""
    return ",".join(str(i) for i in sorted(layers - 1 - round(j * layers / kept)
                                           for j in range(kept)))


def rate_grid(method: str) -> tuple[float, ...]:
    """3 rates centred on the method's default: one step down and up the 1-3-10 ladder."""
    from laddertune.app.methods import DEFAULT_LR
    centre = DEFAULT_LR[method]
    return next_rate(centre, up=False), centre, next_rate(centre, up=True)


def caches_below(cfg: Config) -> bool:
    """A top-K configuration (K below the depth) caches the state entering its top K layers.
    Runs made before that (lora-top1 on tweets and BBC News) ran the layers below live, with
    their dropout; the report says so."""
    return "--top-layers" in cfg.flags


def reads_backbone_states(method: str) -> bool:
    """From the registry; False for a method it lacks (the run then fails in one line)."""
    from laddertune.app.methods import REGISTRY
    return method in REGISTRY and REGISTRY[method].reads_backbone_states


# ---- selection: dev only ------------------------------------------------------------------------

def dev_rank(records: list[dict], task: str) -> tuple:
    """Higher is better: mean dev accuracy then macro-F1; generation: ROUGE-L then -loss."""
    def mean(key):
        return statistics.mean(r["dev"][key] for r in records)
    if task == "generate":
        return mean("rouge_l"), -mean("loss")
    return mean("accuracy"), mean("macro_f1")


def best_rates(first_seed: dict[float, dict], task: str, keep: int = RATES_KEPT) -> list:
    """The `keep` rates whose first-seed run ranks best on dev."""
    return sorted(first_seed, key=lambda lr: dev_rank([first_seed[lr]], task), reverse=True)[:keep]


def edge_step(first_seed: dict[float, dict], task: str) -> float | None:
    """The rate to try next when seed 0's best rate, strictly, is the lowest or highest tried
    (one step past it on the 1-3-10 ladder), while fewer than `EDGE_STEPS` such steps were
    taken; None when the best lies inside the rates tried, ties, or the steps are spent. A
    grid centred on each method's default put LST's best at its low edge and the baselines'
    at their high edge on most cells: a choice on the edge is not a tuned rate."""
    rates = sorted(lr for lr in first_seed if lr is not None)
    if len(rates) < 2 or len(rates) >= RATES_TRIED + EDGE_STEPS:
        return None
    best, second = best_rates(first_seed, task, keep=2)
    if dev_rank([first_seed[best]], task) == dev_rank([first_seed[second]], task):
        return None                       # a tie: the edge is not better than the inside
    if best == rates[0]:
        return next_rate(best, up=False)
    if best == rates[-1]:
        return next_rate(best, up=True)
    return None


def choose(records: list[dict], task: str, rates_needed: int = 1,
           seeds=SEEDS) -> dict | None:
    """The chosen rate of one configuration and its seeds' runs, from its finished runs; None
    while a run the choice needs has not finished (fewer than `rates_needed` rates on the
    first seed, or a seed of a kept rate)."""
    by = {(r["lr"], r["seed"]): r for r in records}
    rates = sorted({r["lr"] for r in records if r["seed"] == seeds[0]}, key=str)
    if not rates or len(rates) < rates_needed:
        return None
    first = {lr: by[(lr, seeds[0])] for lr in rates}
    if rates_needed > 1 and edge_step(first, task) is not None:
        return None                       # seed 0's best is on the edge: a rate past it is due
    kept = best_rates(first, task)
    if any((lr, s) not in by for lr in kept for s in seeds):
        return None
    chosen = max(kept, key=lambda lr: dev_rank([by[(lr, s)] for s in seeds], task))
    return {"lr": chosen, "runs": [by[(chosen, s)] for s in seeds], "rates_tried": rates,
            "rates_kept": kept}


# ---- the suite ----------------------------------------------------------------------------------

@dataclass
class Frontier:
    """Runs the protocol; each finished run becomes one file in `results`/runs."""

    results: Path = RESULTS
    work: Path = WORK                 # run folders, data and the backbone cache (not committed)
    epochs: int = EPOCHS
    train_size: int | None = None     # cap on every training set
    threads: int | None = None
    device: str = "auto"
    commit: bool = False
    in_process: bool = False          # tests: the CLI in this process
    log: object = functools.partial(print, flush=True)
    backbones: dict = field(default_factory=lambda: dict(BACKBONES))
    datasets: dict = field(default_factory=lambda: dict(DATASETS))
    grid: dict = field(default_factory=lambda: dict(GRID))

    def __post_init__(self):
        self.files = ResultFiles(Path(self.results) / "runs")
        self._data = {}

    # -- the protocol --

    def run(self, cells=None, methods=None) -> None:
        for cell in cells or self.grid:
            for name in in_order(self.grid[cell], methods):
                try:
                    self.tune(cell, name)
                except RunFailed as failed:       # the next configuration still runs
                    self.log(f"{'/'.join(cell)} {name}: {failed}")

    def tune(self, cell: tuple, name: str) -> dict | None:
        """Every run the protocol needs for configuration `name` of `cell`; the choice."""
        backbone, dataset = self.backbones[cell[0]], self.datasets[cell[1]]
        cfg = config(name, backbone.layers)
        if cfg.arm_of:
            return self.equal_time(cell, cfg)
        if cfg.dtype_of:
            base = self.tune(cell, cfg.dtype_of)
            if base is None:
                return None
            for seed in SEEDS:
                self.runs(cell, cfg, [base["lr"]], seed)
            return choose(self.records(cell, name), dataset.task)
        if not cfg.has_rate:
            for seed in SEEDS:
                self.runs(cell, cfg, [None], seed)
        else:
            rates = (one_rate()[cfg.method],) if backbone.one_rate else rate_grid(cfg.method)
            first = self.runs(cell, cfg, rates, SEEDS[0])
            while not backbone.one_rate and (step := edge_step(first, dataset.task)) is not None:
                first.update(self.runs(cell, cfg, [step], SEEDS[0]))
            kept = best_rates(first, dataset.task)
            for seed in SEEDS[1:]:
                self.runs(cell, cfg, kept, seed)
        return choose(self.records(cell, name), dataset.task, self.rates_needed(cell, name))

    def rates_needed(self, cell: tuple, name: str) -> int:
        cfg = config(name, self.backbones[cell[0]].layers)
        one = (cfg.arm_of or cfg.dtype_of or not cfg.has_rate
               or self.backbones[cell[0]].one_rate)
        return 1 if one else RATES_TRIED

    def equal_time(self, cell: tuple, cfg: Config) -> dict | None:
        """`cfg.arm_of` at its chosen rate for as many epochs as LoRA's chosen runs took."""
        lora, base = self.tune(cell, "lora"), self.tune(cell, cfg.arm_of)
        if not (lora and base):
            return None
        budget = statistics.mean(r["train_seconds"] for r in lora["runs"])
        timing = self.runs(cell, cfg, [base["lr"]], SEEDS[0], epochs=1, stage="timing")
        per_epoch = timing[base["lr"]]["epoch_seconds"][0]
        epochs = max(1, int(budget // per_epoch))
        for seed in SEEDS:
            self.runs(cell, cfg, [base["lr"]], seed, epochs=epochs, stage="arm",
                      extra={"wall_clock_budget_seconds": budget})
        return choose(self.records(cell, cfg.name), self.datasets[cell[1]].task)

    def records(self, cell: tuple, name: str) -> list[dict]:
        """The finished runs of one configuration under this suite's settings (the arm's
        timing run left out)."""
        return [r for r in self.files.all() if r["backbone"] == cell[0]
                and r["dataset"] == cell[1] and r["config"] == name
                and r["suite_epochs"] == self.epochs and r["train_cap"] == self.train_size
                and r.get("stage") != "timing"]

    # -- one batch of runs --

    def key(self, cell, cfg: Config, lr, seed: int, epochs: int, stage: str) -> str:
        parts = [*cell, cfg.name, "no-lr" if lr is None else f"lr{lr:g}", f"s{seed}",
                 f"e{epochs}"]
        if self.epochs != epochs:
            parts.append(f"of{self.epochs}")
        if self.train_size:
            parts.append(f"n{self.train_size}")
        return "/".join(parts + ([stage] if stage == "timing" else []))

    def runs(self, cell, cfg: Config, lrs, seed: int, epochs: int | None = None,
             stage: str = "", extra: dict | None = None) -> dict:
        """{lr: result} of `cfg` at each of `lrs` with `seed`: read when it has finished before,
        else trained now (several rates in one sweep where the method reads frozen states)."""
        epochs = epochs or self.epochs
        keys = {lr: self.key(cell, cfg, lr, seed, epochs, stage) for lr in lrs}
        done = {lr: found for lr in lrs if (found := self.files.get(keys[lr])) is not None}
        todo = [lr for lr in lrs if lr not in done]
        if todo:
            for lr, result in self.train(cell, cfg, todo, seed, epochs):
                result = {"key": keys[lr], "backbone": cell[0], "dataset": cell[1],
                          "config": cfg.name, "method": cfg.method, "lr": lr, "seed": seed,
                          "epochs": epochs, "suite_epochs": self.epochs,
                          "train_cap": self.train_size, "stage": stage, **(extra or {}),
                          **result}
                done[lr] = self.keep(result)
        return done

    def keep(self, result: dict) -> dict:
        """Write one finished run's file at once; with `commit`, commit that file alone."""
        path = self.files.path(result["key"])
        self.files.put(result["key"], result)
        task = self.datasets[result["dataset"]].task
        metric = "rouge_l" if task == "generate" else "accuracy"
        line = (f"{result['key']}: dev {metric} {result['dev'][metric]:.4f}, test "
                f"{result['test'][metric]:.4f}")
        self.log(f"[{time.strftime('%H:%M:%S')}] {line}")
        if self.commit:
            commit_file(path, f"frontier: {line}")
        return result

    def train(self, cell, cfg: Config, lrs: list, seed: int, epochs: int):
        """Train `cfg` at `lrs` (one sweep, or one run each) and score each on test; yields
        (lr, the run's result without its key) as each is scored."""
        dataset = self.datasets[cell[1]]
        files = self.data(cell[1])
        out = self.work / cell[0] / cell[1] / cfg.name / f"s{seed}-e{epochs}"
        args = [*self.common(cell, cfg, files, epochs), "--seed", seed]
        sweep = cfg.cacheable and (reads_backbone_states(cfg.method) or caches_below(cfg))
        if sweep and cfg.has_rate and len(lrs) > 1:
            grid = ",".join(f"{lr:g}" for lr in lrs)
            command = ["sweep", *args, "--output", out, "--overwrite", "--grid", f"lr={grid}"]
            folders = {lr: out / f"lr-{float(f'{lr:g}')}" for lr in lrs}   # the sweep's names
            wall = self._timed(command)
            for lr in lrs:
                yield lr, self.result(folders[lr], files, command, wall, len(lrs), dataset.task)
            return
        for lr in lrs:
            folder = out / ("no-lr" if lr is None else f"lr-{lr:g}")
            command = ["train", *args, *(["--lr", f"{lr:g}"] if lr is not None else []),
                       "--output", folder, "--overwrite"]
            wall = self._timed(command)
            yield lr, self.result(folder, files, command, wall, 1, dataset.task)

    def common(self, cell, cfg: Config, files: dict, epochs: int) -> list:
        """The flags every run of `cfg` in `cell` shares."""
        backbone, dataset = self.backbones[cell[0]], self.datasets[cell[1]]
        pins = ["--lst-up-init", "small"] if self.small_up(cell, cfg) else []
        # LST rows store the backbone as float32 unless they name a dtype (a paired variant):
        # what every committed LST row was measured with, whatever the CLI's default
        if cfg.method == "lst" and "--backbone-dtype" not in cfg.flags:
            pins += ["--backbone-dtype", "float32"]
        # every committed row evaluated 64 examples per pass, the CLI's default until LST's
        # became its training batch (2026-12-07)
        pins += ["--eval-batch-size", 64]
        cache = ["--cache-backbone", "--cache-dir", self.work / "cache"] if (
            cfg.cacheable and (reads_backbone_states(cfg.method) or caches_below(cfg))) else []
        return ["--model", backbone.model, "--task", dataset.task, "--train", files["train"],
                "--eval", files["dev"], "--method", cfg.method, "--epochs", epochs,
                "--batch-size", dataset.batch_size, "--max-length", dataset.spec.max_length,
                "--device", self.device, "--no-progress", *dataset.flags,
                *dataset.method_flags.get(cfg.method, ()), *cfg.flags, *pins, *cache]

    def small_up(self, cell, cfg: Config) -> bool:
        """Whether `cfg`'s runs in `cell` pin the up-projection's std-0.01 start: what its
        committed rows were measured with (`Backbone.small_up_start`)."""
        return (self.backbones[cell[0]].small_up_start and cfg.method == "lst"
                and self.datasets[cell[1]].task == "classify" and cfg.name != DEFAULT_NOW
                and not any(flag in cfg.flags for flag in ("--lst-up-init", "--lst-preset")))

    def result(self, folder: Path, files: dict, command: list, wall: float, shared: int,
               task: str) -> dict:
        """One finished run: its dev scores, test scores (`laddertune eval`), memory and time."""
        metrics = read_json(folder / "metrics.json")
        run = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
        test = self._eval(folder, files["test"])
        return {"dev": scores(metrics["eval"], task), "test": scores(test, task),
                "memory_account": metrics.get("memory_account"),
                "peak_rss_mb": metrics.get("training_peak_rss_mb"),
                "peak_memory_mb": metrics.get("peak_memory_mb"),
                "train_seconds": metrics["train_seconds"],
                "epoch_seconds": metrics.get("epoch_seconds"),
                "wall_seconds": round(wall, 1), "runs_in_command": shared,
                "steps": metrics.get("steps"), "trainable_params": metrics.get("trainable_params"),
                "all_params": metrics.get("all_params"), "device": metrics.get("device"),
                # bf16 computes in bf16 where the CPU has bf16 kernels, else upcasts per block
                "backbone_dtype": run.get("backbone_dtype"),
                "backbone_compute_dtype": run.get("backbone_compute_dtype"),
                "machine": machine(),
                "command": "laddertune " + shlex.join(str(a) for a in command),
                "run_dir": str(folder)}

    def data(self, name: str) -> dict[str, Path]:
        if name not in self._data:
            dataset = self.datasets[name]
            folder = self.work / "data" / (name + (f"-n{self.train_size}"
                                                   if self.train_size else ""))
            self._data[name] = dataset.write(dataset.spec, folder, self.train_size)
        return self._data[name]

    def _timed(self, command: list) -> float:
        started = time.perf_counter()
        laddertune(*command, threads=self.threads, in_process=self.in_process)
        return time.perf_counter() - started

    def _eval(self, folder: Path, test: Path) -> dict:
        return laddertune_json("eval", "--checkpoint", folder, "--data", test, "--device",
                               self.device, threads=self.threads, in_process=self.in_process)


def scores(found: dict, task: str) -> dict:
    keys = ("rouge_l", "exact_match", "token_f1", "loss") if task == "generate" else (
        "accuracy", "macro_f1", "loss")
    return {k: found[k] for k in keys if k in found}


def commit_file(path: Path, message: str) -> None:
    """`git add` and `git commit` `path` alone (other staged changes stay staged)."""
    path = Path(path).resolve()
    def git(*args):
        subprocess.run(["git", *args], cwd=path.parent, check=True, capture_output=True)
    for attempt in range(10):      # two suites in one checkout may hold git's index lock
        try:
            git("add", "--", str(path))
            git("commit", "--quiet", "-m", message, "--", str(path))
            return
        except subprocess.CalledProcessError as err:  # the file is written: a rerun skips it
            error = err.stderr.decode().strip()
            if "index.lock" not in error:
                break
            time.sleep(1 + attempt)
    print(f"warning: could not commit {path}: {error}")


# ---- the report, from the result files alone ----------------------------------------------------

def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points (memory, score) no other point beats: none has memory as low or
    lower and a score as high or higher with one of them strictly better. By memory."""
    front = [name for name, (m, s) in points.items()
             if not any(m2 <= m and s2 >= s and (m2 < m or s2 > s)
                        for other, (m2, s2) in points.items() if other != name)]
    return sorted(front, key=lambda n: points[n])


def beaten_by(points: dict, name: str) -> str | None:
    """The least-memory point that beats `name` (as low or lower memory, as high or higher
    score, one strictly), or None on the front."""
    m, s = points[name]
    beaters = [o for o, (m2, s2) in points.items()
               if o != name and m2 <= m and s2 >= s and (m2 < m or s2 > s)]
    return min(beaters, key=lambda o: points[o]) if beaters else None


def _mib(value: float) -> str:
    """A budget in the sentence: whole MiB, or two significant digits under 10 (a probe's 0.1
    MiB is not 0)."""
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def budget_sentence(points: dict, front: list[str], unit: str = "MiB") -> str:
    """Which configuration wins at each training-memory budget, read off the front."""
    if not front:
        return "No configuration has both a score and a memory account yet."
    parts = []
    for i, name in enumerate(front):
        low = points[name][0]
        high = points[front[i + 1]][0] if i + 1 < len(front) else None
        span = (f"from {_mib(low)} to {_mib(high)} {unit}" if high
                else f"from {_mib(low)} {unit} up")
        parts.append(f"{span}, {name} ({points[name][1]:.2f})")
    return (f"Below {_mib(points[front[0]][0])} {unit} of training account no configuration fits; "
            + "; ".join(parts) + ".")


def summarize(choice: dict, task: str) -> dict:
    """Mean ± std of the chosen rate's seeds, in percent, with the memory account in MiB."""
    metric = "rouge_l" if task == "generate" else "accuracy"
    runs = choice["runs"]
    test = [100 * r["test"][metric] for r in runs]
    dev = [100 * r["dev"][metric] for r in runs]
    account = runs[0].get("memory_account") or {}

    def mib(key):
        return account[key] / 2**20 if key in account else None
    return {"lr": choice["lr"], "test_mean": statistics.mean(test),
            "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "dev_mean": statistics.mean(dev), "drop": statistics.mean(dev) - statistics.mean(test),
            "test_loss": statistics.mean(r["test"].get("loss", math.nan) for r in runs),
            "training_mib": mib("training_bytes"), "frozen_mib": mib("frozen_weight_bytes"),
            "peak_rss_mb": _mean(r.get("peak_rss_mb") for r in runs),
            "train_seconds": _mean(r.get("train_seconds") for r in runs),
            "epochs": runs[0]["epochs"], "steps": runs[0].get("steps"),
            "device": runs[0].get("device"),
            "budget_seconds": runs[0].get("wall_clock_budget_seconds"),
            "shared": any(r.get("runs_in_command", 1) > 1 for r in runs)}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def write_report(suite: Frontier) -> Path:
    """report.md and one pareto-<backbone>-<data set>.png per cell of the whole grid, from the
    result files alone."""
    out = Path(suite.results)
    cap = (f"Training sets are capped at {suite.train_size:,} examples (`--train-size`), cut "
           "before seeds; dev and test are the uncapped splits." if suite.train_size else
           "Training sets are not capped.")
    lines = ["# The accuracy-memory frontier", "",
             "Rebuilt by `python benchmarks/frontier.py --report` from the files in `runs/`. "
             f"Every run trains {suite.epochs} epoch(s) (the equal-wall-clock arm excepted); 3 "
             "rates on seed 0, seeds 1 and 2 at the best 2, chosen on the 3-seed dev mean "
             "(accuracy, then macro-F1; generation: ROUGE-L, then loss); test is the chosen "
             "rate's 3 seeds, never used to choose. Training account: bytes training adds to "
             "the weights (saved for backward, gradients, optimizer state, trained weights) at "
             "the reference shape 32 × 256 tokens; frozen weights beside it. " + cap, ""]
    missing = []
    for cell in suite.grid:
        lines += _cell_report(suite, cell, out, missing)
    lines += default_section(suite)
    lines += ["## Not yet run", ""]
    lines += [f"- {m}" for m in missing] or ["Every cell of the grid has finished."]
    return write_text(out / "report.md", "\n".join(lines))


def _cell_report(suite: Frontier, cell: tuple, out: Path, missing: list) -> list[str]:
    task = suite.datasets[cell[1]].task
    metric = "ROUGE-L" if task == "generate" else "accuracy"
    names = suite.grid[cell]
    rows = {}
    for name in names:
        records = suite.records(cell, name)
        needed = suite.rates_needed(cell, name)
        choice = choose(records, task, needed) if records else None
        on_edge = False
        if choice is None and records:
            # every rate of the grid run, seeds at the best 2, but seed 0's best on the edge:
            # shown, marked, until the rate past it has run
            choice = choose(records, task, 1)
            on_edge = choice is not None and len(choice["rates_tried"]) >= needed
            choice = choice if on_edge else None
        if choice is None:
            missing.append(f"{'/'.join(cell)} {name}: {len(records)} runs finished")
        else:
            rows[name] = {**summarize(choice, task), "on_edge": on_edge}
            if on_edge:
                missing.append(f"{'/'.join(cell)} {name}: the rate past seed 0's best "
                               "(on the grid's edge) is still to run")
    points = {n: (r["training_mib"], r["test_mean"]) for n, r in rows.items()
              if r["training_mib"] is not None}
    front = pareto_front(points)
    lines = [f"## {cell[0]} on {cell[1]}", "",
             f"| configuration | test {metric} (mean ± std, 3 seeds) | vs probe | dev mean | "
             "dev → test drop | test loss | training account MiB | frozen weights MiB | "
             "peak RSS MiB | train s | lr | epochs | Pareto |", "|" + "---|" * 13]
    if "probe" not in names:
        lines.append("| probe | refused for --task generate (no floor here) |" + " |" * 11)
    floor = rows["probe"]["test_mean"] if "probe" in rows else None
    for name in names:
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | not yet run |" + " |" * 11)
            continue
        mark = ("front" if name in front else "no account" if name not in points
                else f"off (beaten by {beaten_by(points, name)})")
        lines.append(
            f"| {name} | {r['test_mean']:.2f} ± {r['test_std']:.2f} | "
            f"{'—' if floor is None else format(r['test_mean'] - floor, '+.2f')} | "
            f"{r['dev_mean']:.2f} | {r['drop']:+.2f} | {r['test_loss']:.4f} | "
            f"{_num(r['training_mib'])} | {_num(r['frozen_mib'])} | {_num(r['peak_rss_mb'])} | "
            f"{_num(r['train_seconds'])}{'*' if r['shared'] else ''} | "
            f"{'own (dev)' if r['lr'] is None else format(r['lr'], 'g')}"
            f"{' †' if r.get('on_edge') else ''} | {r['epochs']} | "
            f"{mark} |")
    lines += ["", budget_sentence(points, front)]
    if any(r.get("on_edge") for r in rows.values()):
        lines.append("lr marked † is the lowest or highest rate tried on seed 0 and the best "
                     "there: the rate one step past it is still to run, so that row may move.")
    if any(r["shared"] for r in rows.values()):
        lines.append("train s marked * is that of a `laddertune sweep`: the whole sweep's loop, "
                     "shared by the configurations it trained together.")
    for name, r in rows.items():
        if r["budget_seconds"] is not None:
            lines.append(f"{name}: {r['epochs']} epochs on the cached backbone, as many as fit "
                         f"in LoRA's {r['budget_seconds']:.0f} s of training.")
    for name in rows:
        cfg = config(name, suite.backbones[cell[0]].layers)
        if cfg.dtype_of in rows:
            lines.append(paired_sentence(suite, cell, cfg, task))
    commands = {n: [str(rec.get("command", "")) for rec in suite.records(cell, n)] for n in rows}
    live = [n for n, seen in commands.items()
            if any("--top-layers" in c and "--cache-backbone" not in c for c in seen)]
    if live:
        lines.append(f"{', '.join(live)}: the layers below the top K ran live, with dropout, "
                     "before top-K runs read them from the cache (eval mode, no dropout).")
    short = [n for n, r in rows.items() if task == "generate" and (r["steps"] or 0) <
             MIN_GENERATE_STEPS]
    if short:
        lines.append(f"Fewer than {MIN_GENERATE_STEPS} optimizer steps: {', '.join(short)}.")
    devices = sorted({r["device"] for r in rows.values() if r["device"]})
    if devices:
        lines.append(f"Device: {', '.join(devices)}.")
    if points:
        plot = out / f"pareto-{cell[0]}-{cell[1]}.png"
        _plot(points, front, f"{cell[0]} on {cell[1]}", metric, plot)
        lines.append(f"![Pareto front]({plot.name})")
    return lines + [""]


def default_section(suite: Frontier) -> list[str]:
    """The side-network issue's rule, from dev alone: a design replaces LST's default
    (`DEFAULT_NOW`) when its 3-seed dev mean beats the default's on most of the screen's data
    sets at LST's memory, which here means a training account below top-layer LoRA's (the
    cheapest memory-matched baseline). Designs above it are presets. Test is not read."""
    cells = [c for c in suite.grid if c[0] == SCREEN and suite.datasets[c[1]].task == "classify"
             and DEFAULT_NOW in suite.grid[c]]
    if not cells:
        return []
    layers = suite.backbones[SCREEN].layers

    def chosen(cell, name):
        records = suite.records(cell, name) if name in suite.grid[cell] else []
        choice = choose(records, "classify", suite.rates_needed(cell, name)) if records else None
        return choice and {"dev": dev_rank(choice["runs"], "classify"),   # fractions
                           "account": summarize(choice, "classify")["training_mib"]}
    names = [n for n in dict.fromkeys((DEFAULT_NOW, "lst-every", *DESIGNS))
             if any(n in suite.grid[c] for c in cells)]
    found = {name: {cell: chosen(cell, name) for cell in cells} for name in names}
    bounds = [r["account"] for r in (chosen(c, "lora-top1") for c in cells) if r]
    bound = min(bounds) if bounds else None
    default_dev = found[DEFAULT_NOW]
    lines = ["## LST's default, chosen on dev", "",
             f"A design replaces today's default ({DEFAULT_NOW}) when its 3-seed dev mean "
             f"(accuracy, then macro-F1) beats the default's on most of {SCREEN}'s "
             f"{len(cells)} data sets, at LST's "
             "memory: a training account below top-layer LoRA's"
             + (f" ({bound:,.1f} MiB)" if bound else " (not yet run)")
             + ". Designs above that are presets. Test is not read here.", "",
             "| configuration | up start | " + " | ".join(f"{c[1]} dev" for c in cells)
             + f" | training account MiB | at LST's memory | dev wins over {DEFAULT_NOW} |",
             "|" + "---|" * (len(cells) + 5)]
    verdicts = {}
    for name, by in found.items():
        cfg = config(name, layers)
        start = "std 0.01" if suite.small_up(cells[0], cfg) else "default"
        cols, wins, done = [], 0, True
        for cell in cells:
            mine, base = by[cell], default_dev[cell]
            if mine is None:
                cols.append("not chosen yet")
                done = False
            elif name == DEFAULT_NOW or base is None:
                cols.append(f"{100 * mine['dev'][0]:.2f}")
            else:
                wins += mine["dev"] > base["dev"]
                cols.append(f"{100 * mine['dev'][0]:.2f} "
                            f"({100 * (mine['dev'][0] - base['dev'][0]):+.2f})")
        account = next((r["account"] for r in by.values() if r and r["account"]), None)
        at_memory = None if account is None or bound is None else account < bound
        compared = sum(1 for c in cells if by[c] and default_dev[c])
        verdicts[name] = (wins, compared, done, at_memory)
        label = f"{name} (today's default)" if name == DEFAULT_NOW else name
        lines.append(f"| {label} | {start} | " + " | ".join(cols) + f" | {_num(account)} | "
                     + {None: "—", True: "yes", False: "no"}[at_memory] + " | "
                     + ("—" if name == DEFAULT_NOW else f"{wins} of {compared}") + " |")
    majority = len(cells) // 2 + 1
    winners = [n for n, (w, _, _, mem) in verdicts.items()
               if n != DEFAULT_NOW and mem and w >= majority]
    pending = [n for n, (w, c, done, mem) in verdicts.items()
               if n != DEFAULT_NOW and mem is not False and not done
               and w + len(cells) - c >= majority]
    presets = [n for n, (_, _, _, mem) in verdicts.items() if mem is False]
    unfinished = ([] if bound else ["top-layer LoRA's account (the memory bound)"]) + (
        [] if all(default_dev.values()) else [f"{DEFAULT_NOW} on every data set"])
    lines.append("")
    if unfinished:
        lines.append(f"No verdict yet: {' and '.join(unfinished)} still to finish.")
    elif winners:
        lines.append(f"{', '.join(winners)} beat{'s' if len(winners) == 1 else ''} the default "
                     f"on dev on at least {majority} of {len(cells)} data sets at LST's memory: "
                     "the default should change.")
    elif pending:
        lines.append("No design at LST's memory has beaten the default on most data sets yet; "
                     f"still able to: {', '.join(pending)} (runs unfinished).")
    else:
        lines.append(f"No design at LST's memory beats the default on dev on most data sets: "
                     f"{DEFAULT_NOW} stays.")
    for name in presets:
        wins, compared, _, _ = verdicts[name]
        lines.append(f"{name} costs more than top-layer LoRA's account: a preset, not a "
                     f"default; it beats the default on dev on {wins} of {compared} data sets "
                     "finished.")
    return lines + [""]


def paired_sentence(suite: Frontier, cell: tuple, cfg: Config, task: str) -> str:
    """What the reduced backbone costs `cfg.dtype_of`: per seed, the test score's difference at
    the same rate and flags, and their mean (the low-precision issue's bar: within 0.5)."""
    metric = "rouge_l" if task == "generate" else "accuracy"
    base = choose(suite.records(cell, cfg.dtype_of), task, suite.rates_needed(cell, cfg.dtype_of))
    mine = {r["seed"]: r for r in suite.records(cell, cfg.name) if r["lr"] == base["lr"]}
    pairs = [(s, 100 * (mine[s]["test"][metric] - r["test"][metric]),
              100 * (mine[s]["dev"][metric] - r["dev"][metric]))
             for s, r in ((r["seed"], r) for r in base["runs"]) if s in mine]
    if not pairs:
        return f"{cfg.name}: no run at {cfg.dtype_of}'s rate yet."
    test = statistics.mean(d for _, d, _ in pairs)
    dev = statistics.mean(d for _, _, d in pairs)
    verdict = "within" if abs(test) <= 0.5 and abs(dev) <= 0.5 else "outside"
    computed = {r.get("backbone_compute_dtype") for r in mine.values()}
    where = (f", computed in {computed.pop()}" if len(computed) == 1 and None not in computed
             else "")
    return (f"{cfg.name} against {cfg.dtype_of}, paired by seed at lr {base['lr']:g}{where}: "
            f"test {test:+.2f} points (" + ", ".join(f"seed {s} {d:+.2f}" for s, d, _ in pairs)
            + f"), dev {dev:+.2f}: {verdict} 0.5 points.")


def _num(value) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _plot(points: dict, front: list[str], title: str, metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (m, s) in points.items():
        on = name in front
        ax.scatter([m], [s], color="tab:blue" if on else "none", edgecolor="tab:blue" if on
                   else "gray", zorder=3)
        ax.annotate(name, (m, s), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.step([points[n][0] for n in front], [points[n][1] for n in front], where="post",
            color="tab:blue", label="Pareto front (filled); off the front hollow")
    ax.set_xscale("log")
    ax.set_xlabel("training account at 32 × 256 tokens (MiB, log)")
    ax.set_ylabel(f"test {metric} (%), mean of 3 seeds")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the command line ---------------------------------------------------------------------------

def selected(name: str, methods=()) -> bool:
    """Whether configuration `name` matches one of `methods`: a name (lora-top1) or a shell
    pattern (lora-*, lst*); the equal-wall-clock arm only by a pattern with its @."""
    return not methods or any(fnmatch.fnmatchcase(name, m) and (ARM not in name or "@" in m)
                              for m in methods)


def in_order(names, methods=()) -> list[str]:
    """The configurations among `names` that `methods` selects, in the order of `methods` (a
    user's priority), each once; all of `names` in grid order when `methods` is empty."""
    if not methods:
        return list(names)
    ordered = [n for m in methods for n in names if selected(n, (m,))]
    return list(dict.fromkeys(ordered))


def selected_cells(grid: dict, cells=(), models=(), datasets=()) -> list[tuple]:
    return [c for c in grid if (not cells or "/".join(c) in cells)
            and (not models or c[0] in models) and (not datasets or c[1] in datasets)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/frontier.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="", help="comma list of BACKBONE/DATASET")
    parser.add_argument("--models", default="", help="comma list of backbones")
    parser.add_argument("--datasets", default="", help="comma list of data sets")
    parser.add_argument("--methods", default="",
                        help="comma list of configurations (lora-top1) or shell patterns "
                             "(lora-*), run in this order")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="every run's epochs")
    parser.add_argument("--train-size", type=int, default=None,
                        help="cap every training set at N examples (dev and test unchanged)")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--commit", action="store_true",
                        help="git add and git commit each run's file as it finishes")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: rebuild the report from the result files (the "
                             "report always covers the whole grid)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--work", default=str(WORK), help="run folders, data, backbone cache")
    args = parser.parse_args(argv)
    suite = Frontier(Path(args.results), Path(args.work), args.epochs, args.train_size,
                     args.threads, args.device, args.commit)
    if not args.report:
        suite.run(selected_cells(suite.grid, comma_list(args.cells), comma_list(args.models),
                                 comma_list(args.datasets)), comma_list(args.methods))
    print(write_report(suite))


if __name__ == "__main__":
    main()
