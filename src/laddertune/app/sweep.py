"""`laddertune sweep`: K side-network configurations trained together on one backbone pass.

An LST step is mostly the frozen backbone's forward pass, and every configuration of a sweep
reads the same backbone states for the same batch. So the sweep loads the data and the backbone
once, builds K LST models on that one backbone (it is never changed), and for each batch
computes the states once (or reads them from the cache) and takes one optimizer step of each
model on them. Evaluation shares the states the same way.

A top-K baseline (`--top-layers K --cache-backbone`) sweeps the same way: the layers below
its top K are frozen, so their output, read once per batch, serves every configuration. Each
configuration builds on its own copy of the loaded model (the method changes it), from the
random state right after loading, as a run alone does; seeds are swept in separate sweeps.

Each configuration is a `TrainingRun` of its own, writing a complete run folder (loadable by
`eval` and `predict`) under the sweep's folder; the sweep adds sweep.json, summary.md and
sweep.png, and names the best configuration by its accuracy on the eval (dev) split.

What a sweep varies: learning rate, seed, reduction factor, weight decay, warm-up, gradient
clipping and the LST settings that leave the backbone's states alone. All configurations see
the batches in the same order, that of the sweep's --seed; a configuration's seed sets its
initialisation. With dropout off a configuration trains as it would alone (up to float
rounding); with dropout on, the configurations draw their dropout masks in turn from one random
stream, so they match a run alone in distribution, not bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
from pathlib import Path

from .. import quant
from ..checkpoint import save_json
from ..config import LSTConfig
from .methods import REGISTRY, get_method
from .options import TrainConfig, UsageError
from .report import _pyplot
from .trainer import TrainingDiverged, TrainingRun, seed_everything

# TrainConfig fields a sweep may vary, and the LST settings (lst.NAME) that keep the states
VARIED_FIELDS = ("lr", "seed", "reduction_factor", "weight_decay", "warmup_ratio",
                 "max_grad_norm")
VARIED_LST = ("gate", "gate_temperature", "gate_alpha_init", "dropout", "side_init",
              "pooling", "gate_weight_decay", "side_attention_dropout")


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``NAME=V1,V2,...`` specs as {name: values}; names are flags without dashes, with
    ``lst-`` for LST settings (``lr=1e-3,3e-3``, ``lst-gate=learnable,fixed``).

    Raises:
        UsageError: an unknown name, a value of the wrong type, or no values.
    """
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    types.update({f"lst.{f.name}": f.type for f in dataclasses.fields(LSTConfig)})
    grid = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        key = name.strip().replace("-", "_")
        key = f"lst.{key[4:]}" if key.startswith("lst_") else key
        allowed = (*VARIED_FIELDS, *(f"lst.{n}" for n in VARIED_LST))
        if key not in allowed:
            flags = ", ".join(a.replace("lst.", "lst-").replace("_", "-") for a in allowed)
            raise UsageError(f"--grid {name!r} cannot vary in a sweep; use {flags}")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise UsageError(f"--grid {spec!r} lists no values; write NAME=V1,V2")
        grid[key] = [_typed(v, str(types[key]), name) for v in items]
    if not grid:
        raise UsageError("a sweep needs --grid NAME=V1,V2 (for example --grid lr=1e-3,3e-3)")
    return grid


def _typed(value: str, kind: str, name: str):
    try:
        if kind.startswith("bool"):
            return {"true": True, "false": False}[value.lower()]
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except (KeyError, ValueError):
        raise UsageError(f"--grid {name}: {value!r} is not a {kind.split()[0]}") from None
    return value


def configurations(base: TrainConfig, grid: dict[str, list]) -> list[tuple[str, TrainConfig]]:
    """(name, TrainConfig) of every combination, each writing under the sweep's folder."""
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        chosen = dict(zip(names, values))
        name = "_".join(f"{n.replace('lst.', '')}-{v}" for n, v in chosen.items())
        fields = {k: v for k, v in chosen.items() if not k.startswith("lst.")}
        lst = {**base.lst, **{k[4:]: v for k, v in chosen.items() if k.startswith("lst.")}}
        out.append((name, dataclasses.replace(base, **fields, lst=lst,
                                               output=str(Path(base.output) / name))))
    return out


def sweep(base: TrainConfig, grid: dict[str, list], log=print) -> dict:
    """Train every configuration of `grid` on `base`; the summary, with the best on eval."""
    top_k = base.top_layers is not None    # the layers below the top K, shared (cached)
    if not (get_method(base.method).reads_backbone_states or top_k):
        readers = " or ".join(f"--method {m.name}" for m in REGISTRY.values()
                              if m.reads_backbone_states)
        raise UsageError(f"a sweep shares the backbone's states between configurations, which "
                         f"only {readers}, or a method with --top-layers K and "
                         f"--cache-backbone, reads; {base.method} cannot sweep this way")
    if top_k and not base.cache_backbone:
        raise UsageError("a sweep of --top-layers K shares the layers below through their "
                         "cache; add --cache-backbone")
    if top_k and "seed" in grid:
        raise UsageError("a sweep of --top-layers K builds every configuration from one loaded "
                         "model, whose new head the sweep's --seed drew; sweep seeds in "
                         "separate sweeps (one --seed each)")
    if get_method(base.method).fit is not None:
        raise UsageError(f"--method {base.method} is fitted once and chooses its own "
                         "regularisation on the eval set (see metrics.json's \"fit\"); train "
                         "it with `laddertune train` instead of a sweep")
    configs = configurations(base, grid)
    # on a reduced backbone, every configuration that prunes reads the original weights: the
    # backbone loads in float32, and is converted once all are built
    deferred = base.backbone_dtype != "float32" and get_method(base.method).reads_lst_settings \
        and any(cfg.lst_config().side_init != "random" for _, cfg in configs)
    runs = [TrainingRun(cfg, log=lambda *a: None) for _, cfg in configs]
    try:   # from the first lock taken: a refusal lets every one go
        for run in runs:
            run.open_destination()
        lead = runs[0]
        backbone = lead.load("float32" if deferred else None)
        for run in runs[1:]:
            run.share_data(lead)
        # LST never changes the backbone, so its models share one; a top-K method changes the
        # task model it is given (PEFT's layers, frozen flags), so each gets its own copy
        backbones = [backbone] + [copy.deepcopy(backbone) if top_k else backbone
                                  for _ in runs[1:]]
        loaded = _random_state()             # a top-K run alone builds right after loading
        with quant.conversion_deferred() if deferred else contextlib.nullcontext():
            for run, own in zip(runs, backbones):
                if top_k:
                    _set_random_state(loaded)
                else:
                    seed_everything(run.cfg.seed)  # as a run of its own: its seed, its model
                run.build(own)
                run.share_backbone_states(lead)
        if deferred:
            lead.model.convert_backbone()    # the backbone every configuration shares
        _check_shared_states(runs)
        log(f"sweep of {len(runs)} configurations on {base.model}: {len(lead.train_set)} train / "
            f"{len(lead.eval_set)} eval examples; one backbone pass per batch for all")
        live = list(runs)
        for epoch in lead.remaining_epochs():
            progresses = [run.begin_epoch(epoch, show=run is lead) for run in live]
            for indices in progresses[0]:
                batch = lead.batch(indices)
                for run, progress in list(zip(live, progresses)):
                    try:
                        run.train_on(epoch, indices, batch, progress)
                    except TrainingDiverged as err:
                        log(f"warning: {Path(run.cfg.output).name} left the sweep: {err}")
                        run.destination.abandon()
                        progresses.remove(progress)
                        live.remove(run)
            for progress in progresses:
                progress.close()
            lead.train_states.end_of_pass(lead.train_set)
            if not live:
                raise TrainingDiverged("every configuration of the sweep diverged; lower --lr")
            for run, progress, scores in zip(live, progresses, lead.evaluate_together(live)):
                run.end_epoch(epoch, progress, scores)
            log(f"epoch {epoch + 1}/{base.epochs}: eval accuracy " + ", ".join(
                f"{Path(r.cfg.output).name} {r.state.history['eval'][-1]['accuracy']:.4f}"
                for r in live))
        results = [(run, run.finish()) for run in live]
    finally:
        for run in reversed(runs):   # last taken first: the first made the folders they share
            if getattr(run, "destination", None) is not None:
                run.destination.close()
    return _summarize(base, grid, configs, results, log)


def _random_state() -> tuple:
    import random

    import numpy as np
    import torch
    return random.getstate(), np.random.get_state(), torch.random.get_rng_state()


def _set_random_state(state: tuple) -> None:
    import random

    import numpy as np
    import torch
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.random.set_rng_state(state[2])


def _check_shared_states(runs: list[TrainingRun]) -> None:
    reads = {tuple(tuple(run.source.ladder_inputs(i)) for i in range(len(run.source.stacks)))
             for run in runs}
    if len(reads) != 1:   # an internal invariant: VARIED_LST keeps the states alike
        raise RuntimeError(f"sweep configurations read different backbone states: {reads}")


def _summarize(base, grid, configs, results, log) -> dict:
    folder = Path(base.output)
    rows = []
    for run, metrics in results:
        name = Path(run.cfg.output).name
        values = dataclasses.asdict(next(c for n, c in configs if n == name))
        rows.append({"name": name, "folder": str(folder / name),
                     "settings": {k: (values["lst"].get(k[4:]) if k.startswith("lst.")
                                      else values[k]) for k in grid},
                     "eval": {k: metrics["eval"][k] for k in ("accuracy", "macro_f1", "loss")},
                     "trainable_params": metrics["trainable_params"],
                     "train_seconds": metrics["train_seconds"]})
    best = max(rows, key=lambda r: (r["eval"]["accuracy"], r["eval"]["macro_f1"],
                                    -r["eval"]["loss"]))
    summary = {"base": dataclasses.asdict(base), "grid": grid, "runs": rows,
               "best": best["name"], "chosen_on": "eval split accuracy (ties: macro-F1, loss)"}
    save_json(summary, folder / "sweep.json")
    lines = [f"# Sweep: {len(rows)} configurations of {base.method} on {base.model}", "",
             f"Best on the eval split: **{best['name']}** ({best['folder']}).", "",
             "| configuration | " + " | ".join(grid) + " | eval accuracy | macro-F1 | loss |",
             "|---|" + "---|" * (len(grid) + 3)]
    for r in sorted(rows, key=lambda r: -r["eval"]["accuracy"]):
        mark = " (best)" if r is best else ""
        lines.append(f"| {r['name']}{mark} | " + " | ".join(str(v) for v in r["settings"].values())
                     + f" | {r['eval']['accuracy']:.4f} | {r['eval']['macro_f1']:.4f} | "
                     f"{r['eval']['loss']:.4f} |")
    lines += ["", "![sweep](sweep.png)", ""]
    (folder / "summary.md").write_text("\n".join(lines))
    _plot(rows, best, folder / "sweep.png")
    log("\n".join(lines[4:-3]))
    log(f"best on the eval split: {best['name']} -> {best['folder']}")
    return summary


def _plot(rows: list[dict], best: dict, path: Path) -> None:
    plt = _pyplot()
    ordered = sorted(rows, key=lambda r: r["eval"]["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    ax.barh([r["name"] for r in ordered], [100 * r["eval"]["accuracy"] for r in ordered],
            color=["tab:orange" if r is best else "tab:blue" for r in ordered])
    low = min(100 * r["eval"]["accuracy"] for r in rows)
    ax.set_xlim(max(0.0, math.floor(low - 5)), 100)
    ax.set_xlabel("eval accuracy %")
    ax.set_title("Sweep: one backbone pass per batch for every configuration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
