"""`laddertune demo`: LST on real data with a real pretrained model, then LST beside the baselines.

1. Fine-tune MiniLM-L6 (22.7M parameters, frozen) with LST on BBC News (1,780 train / 445 test
   articles, 5 topics), offline, on whatever CPU or GPU is there: `laddertune train`'s own run.
2. Build full fine-tuning, LoRA and LST through the same training run (`TrainingRun`, without
   writing a folder) and time a few of its steps on the same batches, with each step's memory
   (a device-independent account: weights, gradients, AdamW state, activations saved for
   backward; plus the allocator's peak on a GPU).
3. Write runs/demo/report.md, metrics.json, learning_curve.png, confusion_matrix.png and
   memory.png.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..checkpoint import save_json
from .data import BBC_NEWS
from .demo_headlines import run_headline_demo
from .memory import training_memory_account
from .methods import DEFAULT_LR
from .options import DemoConfig, TrainConfig
from .report import comparison_table, plot_memory, write_report
from .trainer import TrainingRun, epoch_batches, train, train_step

# What the demo changes from `laddertune train`'s defaults (MiniLM, LST at lr 3e-3, batch 16,
# seed 0): the first 128 tokens of an article (headline and lead) name its topic, so 2 epochs
# on 2 CPU cores reach 97% test accuracy in under two minutes.
DEMO = dict(train=BBC_NEWS, max_length=128, save_every=40)
COMPARE_METHODS = ("lst", "full", "lora")
COMPARE_STEPS = 3


def run_demo(demo: DemoConfig | None = None) -> dict:
    demo = demo or DemoConfig()
    if demo.task == "generate":
        return run_headline_demo(demo)
    started = time.perf_counter()
    out = Path(demo.output)
    config = TrainConfig(**DEMO, epochs=demo.epochs, output=str(out),
                         overwrite=(out / "run.json").is_file(), device=demo.device)
    print(f"== 1/2 LST fine-tuning of MiniLM on BBC News (max {config.max_length} tokens, "
          f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g})")
    metrics = train(config)
    ev = metrics["eval"]
    print(f"\nLST test accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f} on "
          f"{ev['examples']} held-out articles ({metrics['train_seconds']:.0f} s training)\n")

    print(f"== 2/2 memory and step time: {COMPARE_STEPS} steps each of "
          f"{', '.join(COMPARE_METHODS)} on the same batches")
    comparison = compare_methods(config)
    print("\n".join(comparison_table(comparison)[2:]))

    metrics["comparison"] = comparison
    metrics["demo_seconds"] = round(time.perf_counter() - started, 1)
    save_json(metrics, out / "metrics.json")
    plot_memory(comparison, out / "memory.png")
    report = write_report(out, metrics, comparison)
    print(f"\nwrote {report}, {out / 'metrics.json'}, {out / 'learning_curve.png'}, "
          f"{out / 'memory.png'} (demo took {metrics['demo_seconds']:.0f} s)")
    return metrics


def compare_methods(config: TrainConfig) -> list[dict]:
    """Per method: the memory account of one step and the mean time of `COMPARE_STEPS` training
    steps, on the first batches of the LST run's first epoch, through `TrainingRun`."""
    rows = []
    for method in COMPARE_METHODS:
        run = TrainingRun(dataclasses.replace(config, method=method, lr=DEFAULT_LR[method],
                                              output=None, overwrite=False))
        run.setup(write=False)
        batches = [run.batch(indices) for indices in epoch_batches(
            len(run.train_set), config.batch_size, config.seed, 0)[:COMPARE_STEPS]]
        account = training_memory_account(run.model, lambda r=run, b=batches[0]: r.model(**b).loss)
        cuda = run.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(run.device)
        seconds = []
        for batch in batches:
            tick = time.perf_counter()
            train_step(run.model, batch, run.optimization)
            if cuda:
                torch.cuda.synchronize(run.device)
            seconds.append(time.perf_counter() - tick)
        row = {"method": method, "trainable_params": run.trainable, "account": account,
               "step_seconds": round(sum(seconds) / len(seconds), 4),
               "peak_memory_mb": round(account["total_bytes"] / 2**20, 1)}
        if cuda:
            row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1)
        print(f"  {method:5s} {row['peak_memory_mb']:8.1f} MiB per step, "
              f"{row['step_seconds']:.3f} s per step")
        rows.append(row)
        del run
    return rows
