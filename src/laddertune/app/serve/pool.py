"""The tasks one server process answers, over one copy of the backbone.

A task is a finished `laddertune train` run. LST runs become side networks of one `LSTModel`
(`load_side`), so a batch of rows naming any tasks costs one backbone pass. LoRA runs become
adapters of one `PeftModel`, run by PEFT's mixed batches (`adapter_names`): the baseline arm
of benchmarks/serve_bench.py, which shares the base weights but adapts every layer, so k tasks
on one text cost k passes. Other methods hold the whole model per task and are refused.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoint import check_fingerprint, load_json
from ...errors import BackboneMismatchError, CheckpointError, LSTError
from ...model import DEFAULT_SIDE, LSTModel
from ..aliases import ALIASES, backbone_signature, load_backbone, load_tokenizer, resolve_model
from ..prompts import pad_rows
from ..run_folder import RunFolder, recover
from ..tasks import task_of_run

METHODS = ("lst", "lora")


class PoolError(LSTError):
    """A task cannot be loaded into, or removed from, the running pool (an HTTP 4xx)."""

    status = 400


class TaskNotFound(PoolError):
    status = 404


class TaskConflict(PoolError):
    status = 409


@dataclass
class ServedTask:
    """One loaded run: what the HTTP layer says about it and how it answers."""

    name: str
    kind: str                 # "classify" or "generate"
    labels: list[str]
    directory: str
    max_length: int           # the run's own --max-length
    chat: bool                # trained with --chat-template
    task: object              # its tasks.ClassifyTask or generate_task.GenerateTask, attached
    side: str                 # the LSTModel side network (or PEFT adapter) that answers it

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "laddertune", "kind": self.kind,
                "labels": self.labels, "chat": self.chat, "checkpoint": self.directory}


def parse_checkpoint(text: str) -> tuple[str, str]:
    """`NAME=DIR` or `DIR` (named after the folder) -> (name, dir)."""
    name, sep, directory = text.partition("=")
    if not sep:
        name, directory = Path(text).name, text
    if not name or not directory:
        raise PoolError(f"--checkpoint {text!r} names no run; pass NAME=DIR or DIR")
    return name, directory


class TaskPool:
    """Finished runs loaded over one backbone; `classify` answers rows naming any of them.

    Args:
        checkpoints: (name, run folder) pairs; all trained on one backbone, by one method.
        device: where the backbone and the side networks live.
    """

    def __init__(self, checkpoints: list[tuple[str, str]], device: torch.device):
        if not checkpoints:
            raise PoolError("no run to serve; pass --checkpoint NAME=DIR")
        self.device = device
        self.tasks: dict[str, ServedTask] = {}
        self.model = None
        self.backbone_passes = 0       # backbone forwards run, for tests and the benchmark
        self.lock = threading.Lock()   # loading and unloading against the batches
        infos = [(name, directory, _finished_info(directory)) for name, directory in checkpoints]
        first = infos[0][2]
        self.method = first["method"]
        if self.method not in METHODS:
            raise PoolError(f"{infos[0][1]} is a --method {self.method} run, which holds a whole "
                            "model per task; serve LST (or LoRA) runs")
        self.model_name = first["model"]
        source = resolve_model(first["model"] if first["model"] in ALIASES
                               else first["model_path"])
        self.tokenizer = load_tokenizer(source)
        self.pad = self.tokenizer.pad_token_id
        kinds = {info.get("task", "classify") for _, _, info in infos}
        if self.method == "lora":
            head, num_labels = _lora_head(infos)
        else:
            head, num_labels = ("lm" if "generate" in kinds else "bare"), 2
        self.head = head
        # stored as the first run trained on it: each side network meets the states it learned
        self.backbone_dtype = first.get("backbone_dtype", "float32")
        self.backbone = load_backbone(source, self.pad, head, num_labels, self.backbone_dtype,
                                      device).to(device).eval()
        self.fingerprint = backbone_signature(self.backbone)
        for name, directory, _ in infos:
            self.load(name, directory)

    # ---- loading --------------------------------------------------------------------------------

    def load(self, name: str, directory: str) -> ServedTask:
        """Add the run in `directory` as task `name`.

        Raises:
            PoolError: the name is taken, or the run cannot join this pool (another method or
                backbone, a generate run on a backbone loaded without its LM head).
            CheckpointError: the folder is not a finished run, or is damaged.
        """
        if not name or "/" in name:
            raise PoolError(f"task name {name!r} is empty or holds '/'; pick another")
        if name in self.tasks:
            raise TaskConflict(f"a task named {name!r} is loaded; unload it first or pick "
                               "another name")
        info = _finished_info(directory)
        kind = info.get("task", "classify")
        if info["method"] != self.method:
            raise TaskConflict(f"{directory} is a --method {info['method']} run; this server "
                               f"serves {self.method} runs")
        if kind == "generate" and self.head != "lm":
            raise TaskConflict(f"{directory} is a generate run, but the backbone was loaded "
                               "without its LM head; start the server with a generate run")
        if self.method == "lora" and kind == "generate":
            raise TaskConflict("LoRA runs are served for classification only; serve LST "
                               "generate runs")
        try:
            check_fingerprint(info["backbone_fingerprint"], self.fingerprint, directory)
        except BackboneMismatchError:
            raise TaskConflict(f"{directory} was trained on another backbone than this server's "
                               f"{self.model_name}; serve it from a server of its own") from None
        dtype = info.get("backbone_dtype", "float32")
        if dtype != self.backbone_dtype:
            raise TaskConflict(f"{directory} was trained on the backbone stored in {dtype}, and "
                               f"this server's is {self.backbone_dtype}; serve it from a server "
                               "of its own")
        task = task_of_run(info)
        with self.lock:
            side = self._attach(name, Path(directory))
            task.attach(self.model, self.tokenizer, info)
            served = ServedTask(name, kind, list(info["labels"]) if kind == "classify" else [],
                                str(directory), int(info["max_length"]),
                                bool(info.get("chat_template")), task, side)
            self.tasks[name] = served
        return served

    def _attach(self, name: str, directory: Path) -> str:
        """Load the run's trained weights beside the others; the side (adapter) name."""
        if self.method == "lora":
            from peft import PeftModel
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.backbone, str(directory),
                                                       adapter_name=name).eval()
            else:
                self.model.load_adapter(str(directory), adapter_name=name)
                self.model.eval()
            return name
        if self.model is None:
            self.model = LSTModel.from_pretrained(self.backbone, directory)
            return DEFAULT_SIDE
        self.model.load_side(name, directory)
        return name

    def unload(self, name: str) -> None:
        """Stop serving task `name` (the first LST task's side network stays resident: it is
        the model's own)."""
        served = self.get(name)
        with self.lock:
            del self.tasks[name]
            if self.method == "lora":
                self.model.delete_adapter(name)
            elif served.side != DEFAULT_SIDE:
                self.model.delete_side(served.side)

    def get(self, name: str) -> ServedTask:
        if name not in self.tasks:
            raise TaskNotFound(f"no task named {name!r}; GET /v1/models lists "
                               f"{', '.join(self.tasks) or 'none'}")
        return self.tasks[name]

    # ---- answering ------------------------------------------------------------------------------

    @torch.no_grad()
    def classify(self, rows: list[tuple[list[int], list[str]]], max_batch_size: int
                 ) -> list[dict[str, list[float]]]:
        """Per row (token ids, task names): each named task's class probabilities."""
        answers = []
        for start in range(0, len(rows), max_batch_size):
            answers += self._classify_batch(rows[start:start + max_batch_size])
        return answers

    def _classify_batch(self, rows):
        ids, mask = pad_rows([ids for ids, _ in rows], self.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self.lock:
            sides = [[self.get(name).side for name in names] for _, names in rows]
            if self.method == "lora":
                return self._classify_lora(ids, mask, rows, sides)
            out = self.model(input_ids=ids, attention_mask=mask, side_names=sides)
            self.backbone_passes += 1
        probs = {side: out.outputs[side].logits.float().softmax(-1).cpu() for side in out.rows}
        position = {side: {row: i for i, row in enumerate(r)} for side, r in out.rows.items()}
        return [{name: probs[side][position[side][row]].tolist()
                 for name, side in zip(names, sides[row])}
                for row, (_, names) in enumerate(rows)]

    def _classify_lora(self, ids, mask, rows, sides):
        """PEFT's mixed batch: one row per (text, adapter), so k tasks on a text are k rows."""
        pairs = [(row, name, side) for row, (_, names) in enumerate(rows)
                 for name, side in zip(names, sides[row])]
        index = torch.tensor([row for row, _, _ in pairs], device=ids.device)
        logits = self.model(input_ids=ids[index], attention_mask=mask[index],
                            adapter_names=[side for _, _, side in pairs]).logits
        self.backbone_passes += 1
        probs = logits.float().softmax(-1).cpu()
        answers = [{} for _ in rows]
        for i, (row, name, _) in enumerate(pairs):
            answers[row][name] = probs[i].tolist()
        return answers

    def generate(self, name: str, prompt_ids: list[int], settings: dict, on_token=None
                 ) -> tuple[str, list[int]]:
        """One answer by generate task `name` with `settings` (max_new_tokens, temperature,
        top_p, seed) over the run's own: its text and its new token ids."""
        return self._generate(name, [prompt_ids], settings, on_token)[0]

    def generate_batch(self, rows: list[tuple[str, list[int], dict]]
                       ) -> list[tuple[str, list[int]]]:
        """Per row (task name, prompt ids, settings), its answer: greedy rows of one task and
        settings share one generation; a sampled row runs alone, so its seed gives the answer
        it gives alone."""
        groups: dict[tuple, list[int]] = {}
        for i, (name, _, settings) in enumerate(rows):
            key = (name, *sorted(settings.items())) if not settings["temperature"] else (i,)
            groups.setdefault(key, []).append(i)
        answers: list = [None] * len(rows)
        for members in groups.values():
            name, _, settings = rows[members[0]]
            for i, answer in zip(members, self._generate(
                    name, [rows[i][1] for i in members], settings)):
                answers[i] = answer
        return answers

    @torch.no_grad()
    def _generate(self, name, prompts, settings, on_token=None) -> list[tuple[str, list[int]]]:
        served = self.get(name)
        task = copy.copy(served.task)
        task.settings = {**served.task.settings, **settings}
        with self.lock:
            side = self.model.side(served.side)
        ids, mask = pad_rows(prompts, self.pad, left=task.task_type == "CAUSAL_LM")
        new = task.generate_ids(side, ids.to(self.device), mask.to(self.device), on_token)
        answers = []
        for row in new.tolist():
            tokens = row[:row.index(task.eos) + 1] if task.eos in row else row
            answers.append((task.decode(tokens), tokens))
        return answers


def _finished_info(directory: str | Path) -> dict:
    """run.json of a finished run whose model files are the ones training wrote."""
    if not Path(directory).is_dir():
        raise PoolError(f"{directory} is not a folder; pass a run folder written by "
                        "`laddertune train`")
    recover(directory)
    folder = RunFolder(directory)
    info = folder.info()
    if not folder.is_finished():
        raise CheckpointError(f"{folder.path} is an unfinished run; finish it with `laddertune "
                              "train ... --resume` first")
    recorded = load_json(folder.metrics_file).get("model_files_sha256")
    if recorded:
        folder.check_model_files(recorded)
    return info


def _lora_head(infos) -> tuple[str, int]:
    """LoRA classifiers share the base model's head shape: one number of classes for all."""
    if any(info.get("task", "classify") != "classify" for _, _, info in infos):
        raise PoolError("LoRA runs are served for classification only; serve LST generate runs")
    counts = {len(info["labels"]) for _, _, info in infos}
    if len(counts) > 1:
        raise PoolError(f"LoRA runs with different numbers of classes ({sorted(counts)}) cannot "
                        "share one base model's head; serve them from separate servers")
    return "classifier", counts.pop()
