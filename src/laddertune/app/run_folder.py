"""A run folder, and the rules that keep one run per folder and nothing half-written in it.

    run.json        what was asked (the TrainConfig), the labels, the backbone's fingerprint
    checkpoint/     the training state, replaced atomically every --save-every steps
    metrics.json    written last: its presence marks a finished run; it records the sha256 of
                    every model file, which loading checks
    <model files>   what the method trained (side network, adapter or tensors), report.md, PNGs

Rules:
- A folder holding a run is reused only with ``--resume`` (continue its checkpoint, with the
  same training settings) or ``--overwrite``.
- ``--overwrite`` trains in a hidden sibling folder and swaps it in when it has finished, so the
  old run stays whole until then; an interrupted overwrite leaves the old run as it was.
- Writes go through temporary files that are renamed into place; temporaries a killed process
  left behind are removed when the folder is next used.
- A refusal leaves nothing behind: an --output that cannot be made is refused before anything
  is written, and a refusal under the lock lets the lock go and removes the folders made for it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..checkpoint import load_json, sha256_file
from ..errors import CheckpointError
from .options import TrainConfig, UsageError
from .state import STATE_FILE

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
RUN_INFO_KEYS = ("model", "model_path", "method", "labels", "max_length", "text_column",
                 "label_column", "backbone_fingerprint")


class RunFolder:
    """The paths of one run folder and what they say about it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def holds_run(self) -> bool:
        return self.run_file.is_file() or (self.checkpoint_dir / STATE_FILE).is_file()

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / STATE_FILE).is_file()

    def is_finished(self) -> bool:
        return self.metrics_file.is_file()

    def info(self) -> dict:
        """run.json, checked to hold what loading a run needs.

        Raises:
            CheckpointError: run.json is missing, corrupted or lacks a key.
        """
        if not self.run_file.is_file():
            raise CheckpointError(f"{self.path} holds no {RUN_FILE}; pass the --output folder "
                                  "of a `laddertune train`")
        info = load_json(self.run_file)
        if not isinstance(info, dict):
            raise CheckpointError(f"{self.run_file} is not a JSON object (damaged or edited); "
                                  "restore it or train the run again")
        missing = [key for key in RUN_INFO_KEYS if key not in info]
        if missing:
            raise CheckpointError(f"{self.run_file} lacks {missing[0]!r} (damaged or edited); "
                                  "restore it or train the run again")
        return info

    def check_model_files(self, recorded: dict[str, str]) -> None:
        """Raise CheckpointError unless every model file matches its recorded sha256."""
        for name, digest in recorded.items():
            path = self.path / name
            if not path.is_file():
                raise CheckpointError(f"{path} is missing; restore it or train the run again")
            if sha256_file(path) != digest:
                raise CheckpointError(f"{path} does not match the sha256 recorded in "
                                      f"{METRICS_FILE} (damaged or replaced); restore it or "
                                      "train the run again")

    def remove_stale_temporaries(self) -> None:
        """Temporary files (``.name.XXXX.tmp``) that a killed writer left behind."""
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)


# ---- where a training run writes ---------------------------------------------------------------

class Destination:
    """Where `laddertune train` writes, decided before anything is written.

    `folder` is written to during training; `target` is the folder the user named. They differ
    for an overwrite, which trains in a hidden sibling and `commit()`s it into place at the end.
    A lock file beside the target keeps a second `train` out of it until `close()`. Only the
    main rank (`is_main`) touches the file system.
    """

    def __init__(self, cfg: TrainConfig, is_main: bool = True):
        if not str(cfg.output).strip():
            raise UsageError("--output is empty; pass the folder the run should be written to")
        self.target = RunFolder(Path(cfg.output).expanduser().resolve())
        path = self.target.path
        if path.exists() and not path.is_dir():
            raise UsageError(f"--output {path} is a file, not a folder; pass a folder path")
        check_can_write(path)
        self.is_main, self._lock, self._made = is_main, None, []
        try:   # a refusal below lets the lock go, and the folders made for it
            if is_main:
                self._made = _make_folders(path.parent)
                self._lock = _lock(path)
                _recover_interrupted_swap(path)
            self._choose_folder(cfg)
        except BaseException:
            self.close()
            raise

    def _choose_folder(self, cfg: TrainConfig) -> None:
        """Train in the target, or beside it for an overwrite; refuse what would mix runs."""
        path = self.target.path
        self.resuming = False
        self.folder = self.target
        self.fresh = not path.exists()   # made by this run: removable if the run fails
        if self.target.holds_run():
            if cfg.overwrite:
                self.folder = RunFolder(_sibling(path, "overwrite"))
                if self.is_main:
                    shutil.rmtree(self.folder.path, ignore_errors=True)   # a killed overwrite's
                self.fresh = True
            elif cfg.resume:
                self._check_resumable(cfg)
                self.resuming = True
            else:
                raise UsageError(f"{path} already holds a run; pass --resume to continue it, "
                                 "--overwrite to replace it, or another --output")
        elif cfg.resume:
            raise UsageError(f"nothing to resume in {path} (no checkpoint there); drop --resume "
                             "to start a new run, or pass the --output of the run to continue")
        elif path.is_dir() and any(path.iterdir()):
            raise UsageError(f"--output {path} is a folder of other files, not a run; pass a new "
                             "or empty folder")

    def _check_resumable(self, cfg: TrainConfig) -> None:
        if self.target.is_finished():
            raise UsageError(f"{self.target.path} holds a finished run: nothing to resume; pass "
                             "--overwrite to train it again, or another --output")
        if not self.target.has_checkpoint():
            raise UsageError(f"{self.target.path} has no checkpoint yet (the run stopped before "
                             "its first one); start it again with --overwrite")
        saved = self.target.info()
        for name, value in cfg.training_settings().items():
            if value is not None and name in saved and saved[name] != value:
                flag = "--" + name.replace("_", "-")
                raise UsageError(
                    f"{flag} {value!r} differs from the run's {saved[name]!r}, and a resumed run "
                    f"cannot change it; drop {flag} (the run's value is used) or --overwrite")
        if "lst_settings" in saved and cfg.method_entry.reads_lst_settings:
            task_type = saved.get("task_type", "SEQ_CLS")
            effective = cfg.lst_config(len(saved["labels"]) if task_type == "SEQ_CLS" else 2,
                                       task_type).to_dict()
            for name, value in effective.items():
                if saved["lst_settings"].get(name, value) != value:
                    flag = "--lst-" + name.replace("_", "-")
                    raise UsageError(
                        f"{flag} {value!r} differs from the run's {saved['lst_settings'][name]!r}"
                        f", and a resumed run cannot change it; drop {flag} or --overwrite")
        changed = [split for split, digest in saved.get("data_sha256", {}).items()
                   if digest != data_digests(cfg).get(split)]
        if changed:
            raise UsageError(f"the --{changed[0]} data changed since {self.target.path} started "
                             "(its sha256 differs), so the run cannot continue on it; restore "
                             "the file or --overwrite")

    def prepare(self) -> None:
        """Make the folder to write in; clear what a killed process left half-written."""
        self.folder.path.mkdir(parents=True, exist_ok=True)
        self.folder.remove_stale_temporaries()

    def commit(self) -> None:
        """Put a finished overwrite in place of the old run: two renames, old run removed last.
        Ctrl-C waits until both renames are done, so the target always holds a whole run."""
        if self.folder is self.target:
            return
        old = _sibling(self.target.path, "replaced")
        shutil.rmtree(old, ignore_errors=True)
        with _no_interrupt():
            self.target.path.rename(old)
            self.folder.path.rename(self.target.path)
            self.folder = self.target
        shutil.rmtree(old, ignore_errors=True)

    @property
    def is_overwrite(self) -> bool:
        return self.folder is not self.target

    def abandon(self) -> None:
        """After a failed run: remove what it wrote when it made the folder (an overwrite's
        sibling, or a new --output); a folder that held a run before keeps it."""
        if not self.is_main:
            return
        if self.fresh:
            shutil.rmtree(self.folder.path, ignore_errors=True)
        elif not self.resuming:
            self.folder.run_file.unlink(missing_ok=True)
            shutil.rmtree(self.folder.checkpoint_dir, ignore_errors=True)

    def close(self) -> None:
        """Let another `train` use the folder; the lock file goes too, and so do the folders
        made for it that stayed empty (a refused or abandoned run leaves nothing)."""
        if self._lock is not None:
            Path(self._lock.name).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None
        for folder in self._made:          # deepest first
            try:
                folder.rmdir()
            except OSError:                # not empty: it holds the run, or other files
                break
        self._made = []


def data_digests(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of the --train and --eval files (a built-in set's name stands for itself)."""
    from .data import BUILTIN
    digests = {}
    for split in ("train", "eval"):
        source = getattr(cfg, split)
        if source is not None:
            path = Path(source)
            digests[split] = (source if source in BUILTIN or not path.is_file()
                              else sha256_file(path))
    return digests


def check_can_write(path: Path, flag: str = "--output") -> None:
    """Refuse, before anything is written, a `path` that cannot be made: one below a file, or
    in a folder that takes no new files (read-only, another user's, /proc).

    Raises:
        UsageError: naming the folder in the way.
    """
    place = path.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UsageError(f"{flag} {path} cannot be made: {place} is a file, not a folder; pass "
                         "a path in a folder")
    try:   # the sure test (os.access says yes to root even in /proc): make a nameless file
        tempfile.TemporaryFile(dir=place).close()
    except OSError as err:
        raise UsageError(f"{flag} {path} cannot be written: {place} takes no new files "
                         f"({err.strerror}); pass a path in a folder you can write to") from None


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _lock(path: Path):
    """An exclusive lock on ``.<name>.lock`` beside `path`, held while the file stays open."""
    import fcntl
    handle = open(path.parent / f".{path.name}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"another `laddertune train` is writing to {path}; wait for it to "
                         "finish or pass another --output") from None
    return handle


@contextlib.contextmanager
def _no_interrupt():
    """Hold Ctrl-C back until the block is done (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}"


def recover(path: str | Path) -> None:
    """Finish an overwrite that a kill stopped between its two renames (see `commit`)."""
    _recover_interrupted_swap(Path(path).expanduser().resolve())


def _recover_interrupted_swap(path: Path) -> None:
    """A kill between `commit`'s two renames leaves the finished new run in the 'overwrite'
    sibling and the old run in 'replaced': finish the swap. After both renames only the old
    run's removal was pending."""
    new, old = _sibling(path, "overwrite"), _sibling(path, "replaced")
    if old.exists() and not path.exists():
        if RunFolder(new).is_finished():
            new.rename(path)
        else:
            old.rename(path)
    shutil.rmtree(old, ignore_errors=True)
