"""The paper's text-to-text classification beside a classification head, on the same data.

``python benchmarks/text2text.py --model smollm2 --train tweet-sentiment`` trains the same model
and method twice, each `laddertune train` in its own process: ``--task classify`` (a new head
reads the side network) and ``--task generate`` (the frozen LM head answers each text with its
label's word, scored by exact match), then writes results.json and results.md side by side.
``--settings '{"epochs": 2}'`` sets further `laddertune train` flags for both (``max_length``
is ``--max-length``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner import laddertune, machine, read_json, write_json, write_text

COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("exact_match", "exact match"),
           ("loss", "eval loss"))


def flags(settings: dict) -> list[str]:
    """{"max_length": 48, "cache_backbone": True} -> ["--max-length", "48", "--cache-backbone"]."""
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def compare(model: str, train_data: str, eval_data: str | None, out: Path,
            extra: dict | None = None, work: Path | None = None,
            threads: int | None = None, in_process: bool = False) -> dict:
    """Train `model` on `train_data` with --task classify and --task generate; the results.
    `in_process`: both runs in this process (tests; their memory figures then overlap)."""
    rows = []
    for task in ("classify", "generate"):
        folder = (work or out) / task
        args = ["train", "--model", model, "--train", train_data, "--task", task,
                "--no-progress", "--output", folder, *flags(extra or {})]
        if eval_data:
            args += ["--eval", eval_data]
        if (folder / "run.json").is_file():
            args.append("--overwrite")
        laddertune(*args, threads=threads, in_process=in_process)
        metrics = read_json(folder / "metrics.json")
        rows.append({"task": task, **{key: metrics["eval"].get(key) for key, _ in COLUMNS},
                     **{key: metrics[key] for key in (
                         "trainable_params", "train_seconds", "step_seconds",
                         "training_memory_mb", "method", "epochs", "lr")}})
    results = {"model": model, "train": train_data, "eval": eval_data, "settings": extra or {},
               "machine": machine(), "runs": rows}
    write_json(out / "results.json", results)
    write_text(out / "results.md", render(results))
    return results


def render(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Text-to-text classification beside a classification head: "
             f"{results['runs'][0]['method']} on {results['model']}", "",
             f"Data: {results['train']}" + (f", eval {results['eval']}" if results["eval"] else
                                            " (a stratified 20% held out)")
             + f"; settings {results['settings']}; {m['cpu']}, {m['date']}.", "",
             "| task | " + " | ".join(name for _, name in COLUMNS)
             + " | trainable params | step s | training memory MiB |",
             "|---|" + "---|" * (len(COLUMNS) + 3)]
    for row in results["runs"]:
        cells = ["–" if row[key] is None else f"{row[key]:.4f}" for key, _ in COLUMNS]
        lines.append(f"| {row['task']} | " + " | ".join(cells)
                     + f" | {row['trainable_params']:,} | {row['step_seconds']:.3f} | "
                     f"{row['training_memory_mb']:,.0f} |")
    lines += ["", "`--task classify` trains a new classification head; `--task generate` "
              "answers with the label's word through the frozen LM head (accuracy: the answer "
              "is the right word exactly; exact match after SQuAD's normalisation). Training "
              "memory is each run's peak less what its process held before the model loaded, "
              "each run in its own process.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/text2text.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--train", default="tweet-sentiment")
    parser.add_argument("--eval", default=None)
    parser.add_argument("--output", default="benchmarks/results/text2text",
                        help="where results.json and results.md go")
    parser.add_argument("--work", default="runs/text2text", help="where the two runs go")
    parser.add_argument("--settings", default="{}",
                        help='JSON of further train flags for both runs, e.g. '
                             '\'{"epochs": 2, "max_length": 48}\'')
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per run")
    args = parser.parse_args(argv)
    results = compare(args.model, args.train, args.eval, Path(args.output),
                      json.loads(args.settings), Path(args.work), args.threads)
    print(render(results))


if __name__ == "__main__":
    main()
