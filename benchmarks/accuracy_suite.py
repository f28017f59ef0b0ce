"""The accuracy suite: every method tuned the same way, trained and scored by the product itself.

Every run is `laddertune train` in a fresh process (so its peak memory is its own), on CSV files
written once from the built-in data sets, and every test score is `laddertune eval`:

    data      per data set, a training subset and a dev split carved from the built-in training
              split, and a test split from its held-out split; the same for every method
    sweep     per (data set, backbone, method): seed 0 at each learning rate of the method's
              grid (4 log-spaced values around its usual range), scored on dev; when the best
              is at an end of the grid, one more value beyond that end
    choose    the rate with the best dev accuracy (ties: macro-F1, then lower dev loss)
    seeds     the other seeds (1 and 2 unless --seeds) at the chosen rate; all are scored on test
    explore   (--explore) each suspect of an LST gap (`SUSPECTS`: capacity, layers read,
              pooling, initialisation, regularisation, epochs, the head) alone, seed 0, at LST's
              chosen rate and the next one up, scored on dev
    ablation  LST variants (the paper preset, each of its switches alone, random side blocks,
              ...) at LST's chosen rate, 3 seeds, scored on test

`--finished-only` trains nothing and reports what has finished (the rest listed as missing).

Runs live in ``<root>/<data set>/<name>``: a finished run is reused, an unfinished one resumed,
so the suite can be built up over several invocations:

    python benchmarks/accuracy_suite.py --datasets bbc-news --models minilm

Nothing here trains a model itself.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from data import DATASETS, write_data
from runner import comma_list, laddertune, laddertune_json, read_json, write_json

EPOCHS, BATCH_SIZE = 3, 16      # every run's, unless --epochs / --batch-size say otherwise

# Four log-spaced learning rates around each method's usual range (x sqrt(10) apart).
LR_GRIDS = {
    "lst": (3e-4, 1e-3, 3e-3, 1e-2),
    "full": (1e-5, 3e-5, 1e-4, 3e-4),
    "lora": (1e-4, 3e-4, 1e-3, 3e-3),
    "adapter": (1e-4, 3e-4, 1e-3, 3e-3),
    "ia3": (3e-4, 1e-3, 3e-3, 1e-2),
    "bitfit": (3e-4, 1e-3, 3e-3, 1e-2),
    "prompt": (1e-2, 3e-2, 1e-1, 3e-1),
}
GRID_STEP = math.sqrt(10)
METHODS_BY_MODEL = {"minilm": tuple(LR_GRIDS), "mpnet": ("lst", "lora")}
SEEDS = (0, 1, 2)

# LST variants: flags on top of the defaults. "paper" is the reference code's preset.
ABLATIONS = {
    "defaults": [],
    "paper preset": ["--lst-preset", "paper"],
    "normed last layer": ["--lst-ladder-last-layer", "normed"],
    "backbone dropout": ["--lst-backbone-dropout", "true"],
    "attention dropout 0.1": ["--lst-side-attention-dropout", "0.1"],
    "fisher init": ["--lst-side-init", "fisher"],
    "random init": ["--lst-side-init", "random"],
}


# Where an LST gap to full fine-tuning could come from, each suspect alone on the dev split
# (seed 0) at LST's chosen rate and the next one up: capacity, which layers it reads and how,
# pooling, initialisation, regularisation, and training length.
SUSPECTS = {
    "r=4": ["--reduction-factor", "4"],
    "r=2": ["--reduction-factor", "2"],
    "every layer": ["--lst-side-layers", "ALL"],
    "normed last layer": ["--lst-ladder-last-layer", "normed"],
    "first-token pooling": ["--lst-pooling", "first"],
    "random init": ["--lst-side-init", "random"],
    "fisher init": ["--lst-side-init", "fisher"],
    "no dropout": ["--lst-dropout", "0"],
    "no weight decay": ["--weight-decay", "0"],
    "gates start at the ladder": ["--lst-gate-alpha-init", "-0.2"],
    "5 epochs": ["--epochs", "5"],
    # the paper trains 10-20 epochs; cached backbone states make that cheap (dev only)
    "10 epochs (cached backbone)": ["--epochs", "10", "--cache-backbone"],
    "head residual": ["--lst-head-residual", "true"],   # the head reads the backbone too
}
LAYERS = {"minilm": 6, "mpnet": 12}   # for "every layer"


# ---- runs ---------------------------------------------------------------------------------------

def _lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


class NotTrained(Exception):
    """A run the results need has not finished (with `Suite.finished_only`)."""


@dataclass
class Suite:
    """The suite's runs under `root`; `log` prints progress. `finished_only`: train nothing,
    raise `NotTrained` for a run that has not finished (to report what has)."""

    root: Path = Path("runs/suite")
    threads: int | None = None
    log: object = print
    data: dict = field(default_factory=dict)
    finished_only: bool = False
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    seeds: tuple = SEEDS

    def files(self, dataset: str) -> dict[str, Path]:
        if dataset not in self.data:
            self.data[dataset] = write_data(DATASETS[dataset], self.root / dataset / "data")
        return self.data[dataset]

    def train(self, dataset: str, model: str, method: str, lr: float, seed: int,
              variant: str = "", flags: tuple = ()) -> dict:
        """metrics.json of one `laddertune train`, trained now unless it already finished."""
        name = f"{model}-{method}-lr{_lr_name(lr)}-s{seed}" + (f"-{variant}" if variant else "")
        out = self.root / dataset / name.replace(" ", "_")
        spec, files = DATASETS[dataset], self.files(dataset)
        args = ["--model", model, "--train", str(files["train"]), "--eval", str(files["dev"]),
                "--method", method, "--lr", str(lr), "--seed", str(seed),
                "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
                "--max-length", str(spec.max_length), "--output", str(out), "--no-progress",
                *flags]
        if (out / "metrics.json").is_file() and _same_settings(out, args):
            return self._metrics(out)
        if self.finished_only:
            raise NotTrained(f"{dataset}/{name}")
        command = ["train", *args]
        if not _same_settings(out, args):
            command.append("--overwrite")     # trained under other defaults: train again
        elif (out / "checkpoint" / "state.safetensors").is_file():
            command.append("--resume")
        elif (out / "run.json").is_file():
            command.append("--overwrite")
        started = time.perf_counter()
        self._run(command)
        metrics = self._metrics(out)
        self.log(f"[{time.strftime('%H:%M:%S')}] {dataset} {name}: dev accuracy "
                 f"{100 * metrics['eval']['accuracy']:.2f}%, peak {metrics['peak_memory_mb']:.0f}"
                 f" MiB, {time.perf_counter() - started:.0f} s")
        return metrics

    def test_scores(self, dataset: str, run_dir: Path) -> dict:
        """`laddertune eval` of a finished run on the test split, kept beside the runs."""
        cache = self.root / dataset / "test-scores" / f"{run_dir.name}.json"
        weights = read_json(run_dir / "metrics.json")["weights_sha256_per_rank"]
        if cache.is_file() and read_json(cache).get("weights") == weights:
            return read_json(cache)
        scores = laddertune_json("eval", "--checkpoint", run_dir, "--data",
                                 self.files(dataset)["test"], threads=self.threads)
        scores["weights"] = weights             # of the run it scored
        write_json(cache, scores)               # as soon as it is scored
        return scores

    def _metrics(self, out: Path) -> dict:
        metrics = read_json(out / "metrics.json")
        metrics["run_dir"] = str(out)
        return metrics

    def _run(self, command: list[str]) -> None:
        laddertune(*command, threads=self.threads)

    # ---- the phases ---------------------------------------------------------------------------

    def sweep(self, dataset: str, model: str, method: str) -> dict:
        """The first seed at each rate of the grid (extended past an end that wins); the
        choice."""
        first = self.seeds[0]
        runs = sweep_rates(LR_GRIDS[method],
                           lambda lr: self.train(dataset, model, method, lr, first), _dev_rank)
        best = max(runs, key=lambda lr: _dev_rank(runs[lr]))
        return {"chosen_lr": best, "dev": {lr: _scores(m) for lr, m in sorted(runs.items())},
                "runs": runs}

    def explore(self, dataset: str, model: str, lr: float, layers: int) -> dict:
        """Each of `SUSPECTS` alone at `lr` and the next rate up: dev scores by suspect."""
        found = {}
        for suspect, flags in SUSPECTS.items():
            flags = _resolved(flags, layers)
            found[suspect] = {
                rate: _scores(self.train(dataset, model, "lst", rate, self.seeds[0],
                                         f"explore {suspect}", tuple(flags)))
                for rate in (lr, next_rate(lr, up=True))}
        return found

    def score_seeds(self, dataset: str, model: str, method: str, lr: float, variant: str = "",
                    flags: tuple = ()) -> list[dict]:
        """Each seed at `lr`, trained (or reused) and scored on test."""
        rows = []
        for seed in self.seeds:
            metrics = self.train(dataset, model, method, lr, seed, variant, flags)
            test = self.test_scores(dataset, Path(metrics["run_dir"]))
            rows.append({"seed": seed, "test": _scores(test), "dev": _scores(metrics),
                         "peak_memory_mb": metrics["peak_memory_mb"],
                         "train_seconds": metrics["train_seconds"],
                         "trainable_params": metrics["trainable_params"],
                         "all_params": metrics["all_params"]})
        return rows


def sweep_rates(grid, train, rank) -> dict:
    """{lr: train(lr)} for each rate of `grid`, and one more rate past an end of it whose
    result ranks best (by `rank`, higher is better)."""
    runs = {lr: train(lr) for lr in grid}
    best = max(runs, key=lambda lr: rank(runs[lr]))
    if best in (min(grid), max(grid)):
        beyond = next_rate(best, up=best == max(grid))
        runs[beyond] = train(beyond)
    return runs


def _resolved(flags: list[str], layers: int) -> list[str]:
    """`flags` with "ALL" as every layer's index."""
    return [",".join(map(str, range(layers))) if f == "ALL" else f for f in flags]


def next_rate(lr: float, up: bool) -> float:
    """The next rate on the grids' 1-3-10 ladder: 3e-4 -> 1e-3 up, 1e-4 -> 3e-5 down."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = round(lr / 10**exponent)
    if up:
        value = 3 * 10**exponent if mantissa == 1 else 10 ** (exponent + 1)
    else:
        value = 10**exponent if mantissa == 3 else 3 * 10 ** (exponent - 1)
    return float(f"{value:.0e}")


def _same_settings(out: Path, args: list[str]) -> bool:
    """Whether the run in `out` (if any) trained what `args` asks of today's code: its LST
    settings are compared as resolved, so a change of a default is a change of run."""
    run_file = out / "run.json"
    if not run_file.is_file():
        return True
    from laddertune.app.cli import build_parser, train_config
    from laddertune.app.options import TrainConfig, explicit_values
    saved = read_json(run_file)
    wanted = train_config(explicit_values(build_parser().parse_args(["train", *args]),
                                          TrainConfig))
    if saved.get("method") == "lst":
        return _same_lst(saved.get("lst_settings") or {},
                         wanted.lst_config(len(saved["labels"])).to_dict())
    return True


def _same_lst(saved: dict, wanted: dict) -> bool:
    """Whether saved LST settings are today's: a field added since the run was saved must be at
    its default (new fields default to the behaviour that came before them)."""
    from laddertune import LSTConfig
    defaults = LSTConfig().to_dict()
    return all(saved[key] == value if key in saved else value == defaults.get(key)
               for key, value in wanted.items()) and set(saved) <= set(wanted)


def _scores(metrics: dict) -> dict:
    scores = metrics.get("eval", metrics)
    return {k: scores[k] for k in ("accuracy", "macro_f1", "loss")}


def _dev_rank(metrics: dict) -> tuple:
    ev = metrics["eval"]
    return ev["accuracy"], ev["macro_f1"], -ev["loss"]


def summarize(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds, in percent; peak memory's mean in MiB."""
    acc = [100 * r["test"]["accuracy"] for r in rows]
    f1 = [100 * r["test"]["macro_f1"] for r in rows]
    return {"accuracy_mean": statistics.mean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "macro_f1_mean": statistics.mean(f1),
            "peak_memory_mb": statistics.mean(r["peak_memory_mb"] for r in rows),
            "train_seconds": statistics.mean(r["train_seconds"] for r in rows),
            "trainable_params": rows[0]["trainable_params"], "n": len(rows)}


# ---- the whole suite ----------------------------------------------------------------------------

def run_suite(root: Path, datasets=tuple(DATASETS), models=tuple(METHODS_BY_MODEL),
              methods: tuple | None = None, ablations: bool = True, threads: int | None = None,
              out: Path | None = None, log=print, explore: bool = False,
              finished_only: bool = False, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
              seeds: tuple = SEEDS) -> dict:
    """Every phase for every (data set, backbone, method); the results, saved after each.
    `explore`: also each of `SUSPECTS` alone on dev, for LST on MiniLM. `finished_only`: train
    nothing; an entry whose runs have not all finished is listed under "missing"."""
    suite = Suite(Path(root), threads, log, finished_only=finished_only, epochs=epochs,
                  batch_size=batch_size, seeds=tuple(seeds))
    results = {"settings": settings(suite), "methods": {}, "ablations": {}, "explore": {},
               "missing": []}
    out = Path(out) if out else None

    def entry(kind: str, key: str, make, *args) -> None:
        try:
            results[kind][key] = make(suite, *args)
        except NotTrained as missing:
            results["missing"].append(f"{kind} {key}: {missing} has not finished")
        _save(results, out)

    for dataset in datasets:
        for model in models:
            for method in METHODS_BY_MODEL[model]:
                if methods and method not in methods:
                    continue
                key = f"{dataset}/{model}/{method}"
                entry("methods", key, _method_entry, dataset, model, method)
                if explore and model == "minilm" and key in results["methods"] and (
                        method == "lst"):
                    entry("explore", f"{dataset}/{model}", _explore_entry, dataset, model,
                          results["methods"][key])
        if ablations:
            for model in models:
                key = f"{dataset}/{model}/lst"
                if key not in results["methods"]:
                    continue
                lr = results["methods"][key]["chosen_lr"]
                variants = ABLATIONS if model == "minilm" else {
                    k: v for k, v in ABLATIONS.items() if k in ("defaults", "random init")}
                for variant, flags in variants.items():
                    entry("ablations", f"{dataset}/{model}/{variant}", _ablation_entry,
                          dataset, model, lr, variant, flags)
    return results


def _method_entry(suite: Suite, dataset: str, model: str, method: str) -> dict:
    swept = suite.sweep(dataset, model, method)
    rows = suite.score_seeds(dataset, model, method, swept["chosen_lr"])
    return {"dataset": dataset, "model": model, "method": method,
            "chosen_lr": swept["chosen_lr"], "dev_by_lr": swept["dev"], "seeds": rows,
            "summary": summarize(rows)}


def _explore_entry(suite: Suite, dataset: str, model: str, lst: dict) -> dict:
    return {"dataset": dataset, "model": model, "lr": lst["chosen_lr"],
            "defaults": lst["dev_by_lr"], "flags": {
                suspect: _resolved(flags, LAYERS[model]) for suspect, flags in SUSPECTS.items()},
            "suspects": suite.explore(dataset, model, lst["chosen_lr"], LAYERS[model])}


def _ablation_entry(suite: Suite, dataset: str, model: str, lr: float, variant: str,
                    flags: list) -> dict:
    rows = suite.score_seeds(dataset, model, "lst", lr, "" if variant == "defaults" else variant,
                       tuple(flags))
    return {"dataset": dataset, "model": model, "variant": variant, "flags": flags, "lr": lr,
            "seeds": rows, "summary": summarize(rows)}


def settings(suite: Suite) -> dict:
    return {"epochs": suite.epochs, "batch_size": suite.batch_size, "seeds": list(suite.seeds),
            "data": {name: {"train": s.train_size, "dev": s.dev_size,
                            "test": s.test_size or "all held out", "max_length": s.max_length,
                            "what": s.note} for name, s in DATASETS.items()},
            "lr_grids": {m: list(g) for m, g in LR_GRIDS.items()},
            "selection": "best dev accuracy (then macro-F1, then lower loss) of seed 0; one "
                         "more rate beyond a winning end of the grid",
            "path": "laddertune train / laddertune eval, one process per run"}


def _save(results: dict, out: Path | None) -> None:
    if out is not None:
        write_json(out, results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/accuracy_suite.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/suite", help="where the runs live")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(METHODS_BY_MODEL))
    parser.add_argument("--methods", default=None, help="comma list (default: all per model)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: report what has finished, list what has not")
    parser.add_argument("--explore", action="store_true",
                        help="also each suspect of an LST gap alone, on dev (MiniLM)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of every run")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="comma list; the first also chooses the learning rate")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per run")
    parser.add_argument("--output", default="benchmarks/results/accuracy",
                        help="folder for suite-<data set>.json (one per data set, so data sets "
                             "can run in parallel processes) and the report")
    args = parser.parse_args(argv)
    for dataset in comma_list(args.datasets):
        run_suite(Path(args.root), (dataset,), comma_list(args.models),
                  comma_list(args.methods) or None, not args.no_ablations, args.threads,
                  Path(args.output) / f"suite-{dataset}.json", explore=args.explore,
                  finished_only=args.finished_only, epochs=args.epochs,
                  batch_size=args.batch_size, seeds=tuple(map(int, comma_list(args.seeds))))
    from suite_report import write_report
    print(write_report(Path(args.output)))


if __name__ == "__main__":
    main()
