"""`laddertune demo`: LST on real data with a real pretrained model, then LST beside the baselines.

1. Fine-tune MiniLM-L6 (22.7M parameters, frozen) with LST on BBC News (1,780 train / 445 test
   articles, 5 topics), offline, on whatever CPU or GPU is there.
2. Run a few training steps of full fine-tuning, LoRA and LST on the same batches and measure each
   step's memory (a device-independent account: weights, gradients, AdamW state, activations
   saved for backward; plus the allocator's peak on a GPU) and time.
3. Write runs/demo/report.md, metrics.json, learning_curve.png and memory.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoint import save_json
from .data import BBC_NEWS, collate
from .memory import training_memory_account
from .report import comparison_table, plot_memory, write_report
from .train import (
    TrainConfig,
    build_model,
    epoch_batches,
    pick_device,
    seed_everything,
    train,
)

# Tuned to reach >= 95% test accuracy in a few minutes on 2 CPU cores: the first 128 tokens of an
# article (headline and lead) name its topic; 2 epochs at LST's default lr 3e-3 suffice.
DEMO = dict(model="minilm", train=BBC_NEWS, method="lst", epochs=2, batch_size=16, lr=3e-3,
            max_length=128, seed=0, save_every=40)
COMPARE_METHODS = ("lst", "full", "lora")
COMPARE_STEPS = 3


def run_demo(output: str = "runs/demo", epochs: int | None = None, device: str = "auto") -> dict:
    started = time.perf_counter()
    out = Path(output)
    config = TrainConfig(**{**DEMO, "epochs": epochs or DEMO["epochs"]}, output=str(out),
                         overwrite=True, device=device)
    print(f"== 1/2 LST fine-tuning of MiniLM on BBC News (max {config.max_length} tokens, "
          f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g})")
    metrics = train(config)
    ev = metrics["eval"]
    print(f"\nLST test accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f} on "
          f"{ev['examples']} held-out articles ({metrics['train_seconds']:.0f} s training)\n")

    print(f"== 2/2 memory and step time: {COMPARE_STEPS} steps each of "
          f"{', '.join(COMPARE_METHODS)} on the same batches")
    comparison = compare_methods(config)
    table = comparison_table(comparison)
    print("\n".join(table[2:]))

    metrics["comparison"] = comparison
    metrics["demo_seconds"] = round(time.perf_counter() - started, 1)
    save_json(metrics, out / "metrics.json")
    plot_memory(comparison, out / "memory.png")
    report = write_report(out, metrics, comparison)
    print(f"\nwrote {report}, {out / 'metrics.json'}, {out / 'learning_curve.png'}, "
          f"{out / 'memory.png'} (demo took {metrics['demo_seconds']:.0f} s)")
    return metrics


def compare_methods(config: TrainConfig) -> list[dict]:
    """Per method: the memory account of one step and the mean time of `COMPARE_STEPS` steps,
    all on the first batches of the LST run's first epoch."""
    from .aliases import load_tokenizer, resolve_model
    from .data import label_names, load_train_eval, tokenize
    from .methods import DEFAULT_LR, count_parameters, trainable_parameters
    device = pick_device(config.device)
    train_data, _ = load_train_eval(config.train, None, seed=config.seed)
    names = label_names(train_data.labels)
    source = resolve_model(config.model)
    tokenizer = load_tokenizer(source)
    encoded = tokenize(tokenizer, train_data, config.max_length, names)
    pad = tokenizer.pad_token_id
    batches = [collate(encoded, idx, pad) for idx in
               epoch_batches(len(encoded), config.batch_size, config.seed, 0)[:COMPARE_STEPS]]
    rows = []
    for method in COMPARE_METHODS:
        seed_everything(config.seed)
        model, _ = build_model(source, method, len(names), pad, config.reduction_factor)
        model.to(device).train()
        first = {k: v.to(device) for k, v in batches[0].items()}
        account = training_memory_account(model, lambda m=model, b=first: m(**b).loss)
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=DEFAULT_LR[method])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            tick = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - tick)
        row = {"method": method, "trainable_params": count_parameters(model)[0],
               "account": account, "step_seconds": round(sum(seconds) / len(seconds), 4),
               "peak_memory_mb": round(account["total_bytes"] / 2**20, 1)}
        if device.type == "cuda":
            row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        print(f"  {method:5s} {row['peak_memory_mb']:8.1f} MiB per step, "
              f"{row['step_seconds']:.3f} s per step")
        rows.append(row)
        del model, optimizer
    return rows

