"""`laddertune`: train, evaluate and run text classifiers by Ladder Side-Tuning, from a shell.

Every mistake a user can make (a bad file, a missing column, a run folder in use) ends in one
line, ``error: <what is wrong>; <how to fix it>``, and exit status 2 -- never a stack trace.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path

from ..errors import LSTError

EPILOG = """examples:
  laddertune demo
  laddertune train --model minilm --train bbc-news --output runs/bbc
  laddertune train --model smollm2 --train reviews.csv --method lora --epochs 2
  laddertune eval --checkpoint runs/bbc --data test.csv
  laddertune predict --checkpoint runs/bbc --data new.csv --output preds.csv
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laddertune",
        description="Memory-efficient fine-tuning of Hugging Face transformers by Ladder "
                    "Side-Tuning (LST): the pretrained model stays frozen and runs without "
                    "autograd; a small side network learns.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"laddertune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(commands)
    _add_eval(commands)
    _add_predict(commands)
    _add_demo(commands)
    _add_bench(commands)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default after its help, unless the default is 'off' or unset."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_train(commands) -> None:
    from .methods import DEFAULT_LR, METHODS
    lrs = ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items())
    p = commands.add_parser(
        "train", help="fine-tune a model on a labelled text file", formatter_class=_Formatter,
        description="Fine-tune a pretrained model to classify texts. Writes the trained side "
                    "network (or adapter), run.json, metrics.json, report.md and a learning "
                    "curve to --output.")
    p.add_argument("--model", default="minilm", metavar="MODEL",
                   help="'minilm' (MiniLM-L6, BERT encoder), 'smollm2' (SmolLM2-135M, Llama "
                        "decoder) or a local Hugging Face model folder")
    p.add_argument("--train", required=True, metavar="FILE",
                   help="training data: .csv, .jsonl or .parquet with a text and a label column, "
                        "or 'bbc-news' (built-in, 5 topics)")
    p.add_argument("--eval", metavar="FILE",
                   help="eval data; without it a stratified 20%% of --train is held out")
    p.add_argument("--text-column", default="text", metavar="NAME", help="column holding the text")
    p.add_argument("--label-column", default="label", metavar="NAME",
                   help="column holding the label")
    p.add_argument("--method", default="lst", choices=METHODS,
                   help="lst, or a baseline in the same loop: full fine-tuning, lora and "
                        "prompt (through peft), bitfit")
    p.add_argument("--epochs", type=int, default=3, metavar="N", help="passes over --train")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="examples per step")
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help=f"learning rate; default per method: {lrs}")
    p.add_argument("--max-length", type=int, default=256, metavar="TOKENS",
                   help="tokens per text; longer texts are truncated and counted in the report")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes initialisation, data order and dropout (CPU runs repeat exactly)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="run folder (default runs/<train file name>-<method>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --output")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto picks a CUDA GPU when there is one")
    p.add_argument("--save-every", type=int, default=50, metavar="N",
                   help="write a checkpoint every N steps (and at every epoch end)")
    p.add_argument("--reduction-factor", type=int, default=8, metavar="R",
                   help="LST only: the side network is this many times narrower")
    p.add_argument("--tensorboard", action="store_true",
                   help="log to TensorBoard in <output>/tensorboard")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval", help="score a trained run on a labelled file", formatter_class=_Formatter,
        description="Print accuracy, macro-F1 and loss of a trained run on labelled data, as "
                    "JSON. The run folder names its backbone; no --model needed.")
    _add_checkpoint_args(p)
    p.set_defaults(func=run_eval)


def _add_predict(commands) -> None:
    p = commands.add_parser(
        "predict", help="label new texts with a trained run", formatter_class=_Formatter,
        description="Write one predicted label and its probability per row of --data to a CSV.")
    _add_checkpoint_args(p)
    p.add_argument("--output", required=True, metavar="CSV", help="predictions file to write")
    p.set_defaults(func=run_predict)


def _add_checkpoint_args(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run folder written by `laddertune train`")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=".csv, .jsonl or .parquet file, or 'bbc-news' (its test split)")
    p.add_argument("--text-column", default=None, metavar="NAME",
                   help="column holding the text (default: the one used in training)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="column holding the label (default: the one used in training)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="backbone to load instead of the one run.json names (e.g. after moving "
                        "it); it must be the same model")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="examples per forward pass")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto picks a CUDA GPU when there is one")


def _add_demo(commands) -> None:
    p = commands.add_parser(
        "demo", help="LST on BBC News with MiniLM, then memory vs full fine-tuning and LoRA",
        formatter_class=_Formatter,
        description="Fine-tune MiniLM with LST on BBC News (2,225 articles, 5 topics, fixed "
                    "80/20 split), print test accuracy and macro-F1, then measure a few steps of "
                    "full fine-tuning and LoRA on the same batches. Fully offline; writes "
                    "report.md, metrics.json and two figures to --output.")
    p.add_argument("--output", default="runs/demo", metavar="DIR")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="passes over the training split (default: 2, tuned for 2 CPU cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto picks a CUDA GPU when there is one")
    p.set_defaults(func=run_demo)


def _add_bench(commands) -> None:
    p = commands.add_parser("bench", help="memory/speed/accuracy benchmarks of all methods",
                            description="Benchmarks (laddertune.app.bench).")
    try:
        from .bench import cli as bench_cli
    except Exception as err:  # noqa: BLE001 - a broken bench must not break train/eval/predict
        bench_cli, reason = None, f"{type(err).__name__}: {err}"
    if bench_cli is not None and hasattr(bench_cli, "add_arguments") and hasattr(bench_cli, "run"):
        bench_cli.add_arguments(p)
        p.set_defaults(func=bench_cli.run)
        return
    if bench_cli is not None:
        reason = "laddertune.app.bench.cli has no add_arguments/run"
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # `make bench`
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: _bench_missing(reason))


def _bench_missing(reason: str) -> int:
    first_line = (reason.splitlines() or [""])[0][:120]
    raise LSTError(f"`laddertune bench` is not available in this install ({first_line}); "
                   "update laddertune or run `make bench` from a full checkout")


# ---- commands -----------------------------------------------------------------------------------

def run_train(args) -> int:
    from .train import TrainConfig, train
    output = args.output or f"runs/{Path(args.train).stem}-{args.method}"
    config = TrainConfig(
        model=args.model, train=args.train, eval=args.eval, text_column=args.text_column,
        label_column=args.label_column, method=args.method, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
        output=output, resume=args.resume, overwrite=args.overwrite, device=args.device,
        save_every=args.save_every, reduction_factor=args.reduction_factor,
        tensorboard=args.tensorboard, progress=not args.no_progress)
    train(config)
    return 0


def _load_for_inference(args, need_labels: bool):
    from .data import BBC_NEWS, load_bbc_news, load_texts, tokenize
    from .train import load_run
    model, tokenizer, info = load_run(args.checkpoint, args.device, args.model)
    if args.data == BBC_NEWS:
        data = load_bbc_news()[1]
    else:
        data = load_texts(args.data, args.text_column or info["text_column"],
                          args.label_column or info["label_column"], need_labels=need_labels)
    if not need_labels:
        data.labels = []
    encoded = tokenize(tokenizer, data, info["max_length"], info["labels"])
    return model, tokenizer, info, encoded


def run_eval(args) -> int:
    from .report import classification_metrics
    from .train import pick_device, predict_probs
    model, tokenizer, info, encoded = _load_for_inference(args, need_labels=True)
    probs = predict_probs(model, encoded, tokenizer.pad_token_id, args.batch_size,
                          pick_device(args.device))
    metrics = classification_metrics(probs, encoded.labels)
    metrics["truncated"] = encoded.truncated
    print(json.dumps(metrics, indent=2))
    return 0


def run_predict(args) -> int:
    from .train import pick_device, predict_probs
    model, tokenizer, info, encoded = _load_for_inference(args, need_labels=False)
    probs = predict_probs(model, encoded, tokenizer.pad_token_id, args.batch_size,
                          pick_device(args.device))
    best, index = probs.max(-1)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "label", "probability"])
        for row, (i, p) in enumerate(zip(index.tolist(), best.tolist())):
            writer.writerow([row, info["labels"][i], f"{p:.6f}"])
    print(f"wrote {len(encoded)} predictions to {path} ({encoded.truncated} texts truncated to "
          f"{info['max_length']} tokens)")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo
    demo(output=args.output, epochs=args.epochs, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Deprecation notices between transformers and peft are not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LSTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue later with the same command and --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
