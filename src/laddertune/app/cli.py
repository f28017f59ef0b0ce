"""`laddertune`: train, evaluate and run text classifiers and generators by Ladder Side-Tuning,
from a shell.

Every mistake a user can make (a bad file, a missing column, a run folder in use) ends in one
line, ``error: <what is wrong>; <how to fix it>``, and exit status 2 -- never a stack trace.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .. import __version__
from ..errors import LSTError, LSTWarning
from .aliases import is_hub_id
from .options import (
    DemoConfig,
    EvalConfig,
    GenerateConfig,
    PlanConfig,
    PredictConfig,
    ServeConfig,
    TrainConfig,
    UsageError,
    add_arguments,
    explicit_values,
)

# Only the flags' own module is imported at start-up: `--help`, `--version` and a flag error
# answer at once. Each command imports torch, transformers and the rest where it runs.

EPILOG = """examples:
  laddertune demo
  laddertune plan --model mpnet --batch-size 32 --max-length 128 --budget 2GiB
  laddertune train --model minilm --train bbc-news --output runs/bbc
  laddertune train --model smollm2 --train reviews.csv --method lora --epochs 2
  laddertune train --task generate --model smollm2 --train pairs.csv --chat-template
  laddertune eval --checkpoint runs/bbc --data test.csv
  laddertune predict --checkpoint runs/bbc --data new.csv --output preds.csv
  laddertune generate --checkpoint runs/pairs-lst --prompt "..."
  laddertune serve --checkpoint news=runs/bbc sentiment=runs/tweets --port 8000
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. The bench command's own flags are added only when `command` is
    "bench": they come from the benchmark module, which imports torch and transformers."""
    parser = argparse.ArgumentParser(
        prog="laddertune",
        description="Memory-efficient fine-tuning of Hugging Face transformers by Ladder "
                    "Side-Tuning (LST): the pretrained model stays frozen and runs without "
                    "autograd; a small side network learns.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"laddertune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, config_class, run, summary in COMMANDS:
        sub = commands.add_parser(name, help=summary, description=_description(config_class),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(sub, config_class)
        sub.set_defaults(func=run, config_class=config_class)
        if name == "sweep":
            sub.description = SWEEP_DESCRIPTION
            sub.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                             help="a setting and its values, repeatable: the sweep trains every "
                                  "combination (lr, seed, reduction-factor, weight-decay, "
                                  "warmup-ratio, max-grad-norm, lst-gate, lst-dropout, ...)")
    _add_bench(commands, full=command == "bench")
    return parser


def _description(config_class) -> str:
    """The first paragraph of the config class's docstring, on one line."""
    return " ".join((config_class.__doc__ or "").strip().split("\n\n")[0].split())


def _add_bench(commands, full: bool) -> None:
    summary = "memory and speed benchmarks of every method"
    if not full:
        commands.add_parser("bench", help=summary)
        return
    from .bench import cli as bench_cli
    p = commands.add_parser("bench", help=summary,
                            description=bench_cli.__doc__.strip().splitlines()[0])
    bench_cli.add_arguments(p)
    p.set_defaults(func=bench_cli.run)


# ---- commands -----------------------------------------------------------------------------------

def run_train(args) -> int:
    config = train_config(explicit_values(args, TrainConfig))
    check_data_files(config.train, config.eval)
    from .trainer import train
    train(config)
    return 0


def check_data_files(*sources: str | None) -> None:
    """A data file that is missing, empty or of an unknown type is refused now, before the
    seconds that importing torch and transformers take."""
    from .data import BUILTIN
    from .data.tables import check_file
    for source in sources:
        if source is not None and source not in BUILTIN:
            check_file(source)


def train_config(explicit: dict) -> TrainConfig:
    """The TrainConfig of the flags given. With --resume, the flags left out are the run's own,
    so `laddertune train --output DIR --resume` continues exactly what DIR was training."""
    if explicit.get("resume"):
        from .run_folder import RunFolder
        output = explicit.get("output") or TrainConfig(**{
            k: v for k, v in explicit.items() if k in ("train", "method")}).output
        folder = RunFolder(output)
        if folder.run_file.is_file():
            saved = folder.info()
            names = {f.name for f in dataclasses.fields(TrainConfig)}
            config = {k: v for k, v in saved.items() if k in names}
            config["lst"] = {**config.get("lst", {}), **explicit.get("lst", {})}
            return TrainConfig(**{**config, "overwrite": False, **explicit,
                                  "lst": config["lst"], "output": output})
    return TrainConfig(**explicit)


def _load_run_and_data(config, need_targets: bool):
    """The run's model and its task (`tasks.task_of_run`, with the flags' columns and
    generation settings), and the data file encoded as training did; the file is read and
    checked first, so a bad file is reported before any model loads."""
    from .inference import load_run
    from .run_folder import RunFolder
    from .tasks import task_of_run
    task = task_of_run(RunFolder(config.checkpoint).info(), config)
    data = task.read_data(config.data, need_targets, getattr(config, "id_column", None))
    model, tokenizer, info = load_run(config.checkpoint, config.device, config.model)
    task.attach(model, tokenizer, info)
    if config.batch_size is None:    # as the run evaluated (LST: its training batch, at most 64)
        from .methods import EVAL_BATCH
        config = dataclasses.replace(config, batch_size=info.get("eval_batch_size") or EVAL_BATCH)
    return model, task, data, task.encode(data), config


def run_eval(args) -> int:
    config = EvalConfig(**explicit_values(args, EvalConfig))
    check_data_files(config.data)
    from .runtime import pick_device
    model, task, _, encoded, config = _load_run_and_data(config, need_targets=True)
    metrics = task.evaluate(model, encoded, task.pad, config.batch_size,
                            pick_device(config.device))
    metrics.pop("samples", None)          # a generate run's few answers, kept for its report
    print(json.dumps({**metrics, "truncated": encoded.truncated}, indent=2))
    return 0


def run_predict(args) -> int:
    config = PredictConfig(**explicit_values(args, PredictConfig))
    check_data_files(config.data)
    from ..checkpoint import atomic_write_bytes
    from .run_folder import check_can_write
    from .runtime import pick_device
    path = Path(config.output)
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; pass a file path such as "
                         f"{path / 'predictions.csv'}")
    if Path(config.data).exists() and path.resolve() == Path(config.data).resolve():
        raise UsageError(f"--output {path} is the --data file; predictions would overwrite "
                         "it, so pass another path")
    check_can_write(path)
    if "id_column" in explicit_values(args, PredictConfig):
        _check_id_column(config.data, config.id_column)
    kept, kept_rows = kept_columns(config.data, config.keep_columns, config.id_column)
    model, task, data, encoded, config = _load_run_and_data(config, need_targets=False)
    columns, rows = task.predict(model, encoded, config.batch_size, pick_device(config.device))
    ids = data.ids
    first = config.id_column if ids else "row"
    kept = [f"input_{name}" if name in (first, *columns) else name for name in kept]
    handle = io.StringIO()
    writer = csv.writer(handle)
    writer.writerow([first, *kept, *columns])
    for row, values in enumerate(rows):
        writer.writerow([ids[row] if ids else row, *(kept_rows[row] if kept else ()), *values])
    atomic_write_bytes(path, handle.getvalue().encode("utf-8"))
    print(f"wrote {len(rows)} {task.outputs} to {path} ({task.cut_note(encoded)})")
    return 0


def kept_columns(data: str, keep: str | None, id_column: str) -> tuple[list[str], list[list]]:
    """The input's columns `predict` copies into its output (--keep-columns: all of a file's
    by default, none of a built-in set's), less the id column that leads every row, and their
    values as text, row by row. Read and checked before any model loads.

    Raises:
        UsageError: --keep-columns names a column the file lacks.
    """
    from .data import BUILTIN
    from .data.tables import check_file, read_table
    if data in BUILTIN or keep == "none":
        return [], []
    table = read_table(check_file(data))
    have = list(dict.fromkeys(table.columns))
    wanted = have if keep is None else list(dict.fromkeys(
        name.strip() for name in keep.split(",") if name.strip()))
    unknown = [name for name in wanted if name not in have]
    if unknown or not wanted:
        raise UsageError(f"--keep-columns {keep!r} names no column "
                         f"{unknown[0] + ' ' if unknown else ''}of {data} (it has: "
                         f"{', '.join(have)}); pass some of those, or 'none'")
    names = [name for name in wanted if name != id_column]
    columns = [[_cell(value) for value in table.values(name)] for name in names]
    return names, [list(row) for row in zip(*columns)]


def _cell(value) -> str:
    """A value of a data file as CSV text: JSON for a list or a dict, empty for none."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _check_id_column(data: str, id_column: str) -> None:
    """An --id-column the file lacks is refused, not replaced by row numbers unasked."""
    from .data import BUILTIN, columns
    if data in BUILTIN:
        raise UsageError(f"{data} is a built-in data set without ids; drop --id-column (rows "
                         "are numbered)")
    have = columns(data)
    if id_column not in have:
        raise UsageError(f"{data} has no column {id_column!r} (it has: {', '.join(have)}); pass "
                         "one of those to --id-column, or drop it to number the rows")
    return 0


def run_generate(args) -> int:
    """One completion of --prompt, printed as its tokens come."""
    config = GenerateConfig(**explicit_values(args, GenerateConfig))
    prompt = sys.stdin.read() if config.prompt == "-" else config.prompt
    if not prompt.strip():
        raise UsageError("the prompt is empty; pass the text to complete with --prompt TEXT (or "
                         "--prompt - to read it from standard input)")
    from .inference import load_run
    from .run_folder import RunFolder
    from .runtime import pick_device
    from .tasks import task_of_run
    info = RunFolder(config.checkpoint).info()
    if info.get("task") != "generate":
        raise UsageError(f"{config.checkpoint} is a --task classify run, which labels texts; "
                         "`laddertune generate` needs a --task generate run (label texts with "
                         "`laddertune predict`)")
    task = task_of_run(info, config)
    model, tokenizer, info = load_run(config.checkpoint, config.device, config.model)
    task.attach(model, tokenizer, info)
    room = task.settings["max_new_tokens"] if task.task_type == "CAUSAL_LM" else 0
    ids, cut = task.format.prompt(prompt, info["max_length"] - room)
    if cut:
        warnings.warn(f"the prompt is longer than the run's {info['max_length']} tokens allow; "
                      "its start was cut", LSTWarning, stacklevel=1)
    stream = TextStream(task.decode, sys.stdout)
    task.generate_texts(model, [ids], pick_device(config.device), 1, on_token=stream)
    stream.end()
    return 0


class TextStream:
    """Prints an answer as its tokens come: each call gets the newest token (of one prompt),
    and what its text adds is written at once. Text is decoded whole each time, since a token
    can complete a character the one before began."""

    def __init__(self, decode, out):
        self.decode, self.out = decode, out
        self.ids, self.shown = [], ""

    def __call__(self, tokens) -> None:
        self.ids.append(int(tokens[0]))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):          # half a character: wait for the rest
            return
        if text.startswith(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text

    def end(self) -> None:
        text = self.decode(self.ids)
        self.out.write(text[len(self.shown):] + "\n" if text.startswith(self.shown) else "\n")
        self.out.flush()


def run_sweep(args) -> int:
    from .sweep import parse_grid, sweep
    explicit = explicit_values(args, TrainConfig)
    if explicit.get("task", "classify") != "classify":
        raise UsageError("laddertune sweep trains --task classify runs; train each generate "
                         "configuration with `laddertune train --task generate`")
    if "early_stopping_patience" in explicit:   # the configurations train in step, together
        raise UsageError("laddertune sweep trains every configuration for all --epochs; drop "
                         "--early-stopping-patience, or train the best with `laddertune train`")
    grid = parse_grid(args.grid or [])
    if not explicit.get("output"):
        stem = Path(explicit.get("train", TrainConfig.train)).stem or "run"
        explicit["output"] = f"runs/{stem}-sweep"
    sweep(TrainConfig(**explicit), grid)
    return 0


def run_serve(args) -> int:
    from .serve import serve  # FastAPI and uvicorn: the `serve` extra, loaded on use
    serve(ServeConfig(**explicit_values(args, ServeConfig)))
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo
    demo(DemoConfig(**explicit_values(args, DemoConfig)))
    return 0


SWEEP_DESCRIPTION = (
    "Train every combination of --grid together: the data and the frozen backbone are loaded "
    "once and each batch's backbone states (computed, or read with --cache-backbone) serve "
    "every configuration. Each configuration gets a run folder under --output (loadable by "
    "eval and predict); sweep.json, summary.md and sweep.png name the best on the eval split. "
    "The other flags are laddertune train's and apply to every configuration.")

def run_plan(args) -> int:
    from .plan import plan_table
    print(plan_table(PlanConfig(**explicit_values(args, PlanConfig))))
    return 0


COMMANDS = (
    ("train", TrainConfig, run_train,
     "fine-tune a model on a labelled text file, or on prompt -> target pairs"),
    ("eval", EvalConfig, run_eval, "score a trained run on a labelled file"),
    ("predict", PredictConfig, run_predict,
     "label new texts (or answer new prompts) with a trained run"),
    ("generate", GenerateConfig, run_generate,
     "print one completion of a prompt by a generate run, as it is generated"),
    ("sweep", TrainConfig, run_sweep,
     "train many LST configurations at once, sharing each batch's backbone pass"),
    ("serve", ServeConfig, run_serve,
     "serve finished runs over HTTP, every task over one backbone pass"),
    ("demo", DemoConfig, run_demo,
     "LST on BBC News with MiniLM, then memory vs full fine-tuning and LoRA"),
    ("plan", PlanConfig, run_plan, "predict a training run's memory, and whether it fits a "
     "budget, before loading anything"),
)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """laddertune's own warnings print as one line; others keep Python's format."""
    if issubclass(category, LSTWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def quiet_progress_bars(stream=None) -> None:
    """Third-party progress bars (de-quantising a GGUF file, writing model shards, downloads)
    stay off when `stream` (standard error, as it is now) is not a terminal: in a log they are
    lines of carriage returns. tqdm reads TQDM_DISABLE when it is first imported, which the lazy
    imports leave to now."""
    stream = sys.stderr if stream is None else stream
    if stream.closed or not stream.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_progress_bars()
    # Deprecation notices between transformers and peft are not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # torchao (the [quant] extra; peft imports it too) logs CUDA kernels a CPU build lacks
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.showwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    if not is_hub_id(getattr(args, "model", None) or ""):
        # only a command naming a Hub model goes online (unless the user set HF_HUB_OFFLINE)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return args.func(args)
    except LSTError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(getattr(err, "hint", "interrupted"), file=sys.stderr)
        return 130
    except BrokenPipeError:   # `laddertune eval ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    finally:
        warnings.showwarning = _python_showwarning


if __name__ == "__main__":
    sys.exit(main())
