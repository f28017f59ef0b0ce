"""Backbone states on disk: pay for the frozen backbone once, across epochs, evaluations and runs.

An LST backbone is frozen and runs without autograd, in eval mode, so for a given example the
states its ladders read never change. `StateCache` stores them, per example, the first time the
backbone computes them; afterwards `LSTModel(backbone_hidden_states=...)` reads them and the
backbone never runs again.

    key          sha256 of what decides the states: the backbone's fingerprint, which states the
                 ladders read (layers kept, raw or normed last layer), the stored dtype, and the
                 examples' inputs (token ids: they carry the tokenizer, the max length and the
                 data; and sentence pairs' segment ids, where the backbone reads them). Another
                 key is another folder: a stale cache is never read.
    folder       <root>/<key>/: manifest.json, and shard-<random>.safetensors files each holding
                 some examples: for stack s and state i a tensor ``s{s}.i{i}`` of their tokens one
                 after another (tokens, d), with ``s{s}.offsets`` (n + 1,) and ``examples`` (n,)
    writing      examples gather in memory and are written a shard at a time (temporary file,
                 then rename); a shard counts once the manifest lists it. A killed writer loses
                 at most the unlisted examples, and `missing()` names them for the next run.
                 Several runs may fill one cache at once: shard names never collide, and each
                 writer merges its shard into the manifest on disk under a lock
    reading      only once the manifest says complete; each shard is read into memory once,
                 and a batch's examples are cut from it and right-padded with zeros (pad
                 positions are never read: attention masks them and the loss ignores them);
                 a shard whose examples are not those its manifest entry lists is refused

Examples are right-padded batches of the model's inputs. Padding is not stored: an example keeps
as many tokens as its attention mask has (decoder states: its labels, for text-to-text).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .checkpoint import atomic_write_bytes, load_json, save_json
from .errors import CheckpointError, LSTConfigError

FORMAT = 1
MANIFEST = "manifest.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def examples_digest(token_ids: Sequence[Sequence[int]],
                    token_type_ids: Sequence[Sequence[int]] | None = None) -> str:
    """sha256 of every example's token ids, in order, then of their segment ids when given:
    the data part of a cache key. The same ids read with segment ids give other states."""
    digest = hashlib.sha256()
    for ids in token_ids:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes())
    if token_type_ids is not None:
        digest.update(b"token_type_ids")
        for types in token_type_ids:
            digest.update(len(types).to_bytes(4, "little"))
            digest.update(torch.as_tensor(types, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model, data_digest: str, dtype: str) -> dict:
    """The parts of a cache key of `model`'s backbone states over data `data_digest`.

    Raises:
        LSTConfigError: the backbone runs with dropout (its states change every step), or the
            dtype is unknown.
    """
    if model.config.backbone_dropout:
        raise LSTConfigError("backbone states cannot be cached when the backbone runs with "
                             "dropout (backbone_dropout=True): they change every step; turn "
                             "one of them off")
    if dtype not in DTYPES:
        raise LSTConfigError(f"cache dtype {dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    key = {"format": FORMAT, "backbone": model.fingerprint(), "dtype": dtype,
           "ladder_inputs": [model.ladder_inputs(i) for i in range(len(model.stacks))],
           "ladder_last_layer": model.config.ladder_last_layer, "data": data_digest}
    # a reduced backbone computes other states; a float32 one keeps the keys it always had
    # (a probe's frozen backbone is always float32: it has no dtype settings)
    dtypes = [getattr(model.config, "backbone_dtype", "float32"),
              getattr(model, "backbone_compute_dtype", "float32")]
    if dtypes != ["float32", "float32"]:
        key["backbone_dtypes"] = dtypes        # storage, compute
    return key


def example_lengths(model, batch: dict) -> list[torch.Tensor]:
    """Tokens kept per example and stack, (b,) each: the attention mask's count (all positions
    without one); a text-to-text decoder keeps as many as the example's labels."""
    reference = batch.get("input_ids", batch.get("pixel_values"))
    b = reference.shape[0]
    mask = batch.get("attention_mask")
    lengths = [mask.sum(-1) if mask is not None else None]
    if len(model.stacks) == 2:
        labels = batch.get("labels")
        if model.config.task_type == "SEQ_2_SEQ_LM" and labels is not None:
            lengths.append((labels != -100).sum(-1))
        else:
            lengths.append(lengths[0])
    return [torch.full((b,), -1, dtype=torch.long) if n is None else n.long().cpu()
            for n in lengths]


class StateCache:
    """One cache folder: write states as the backbone computes them, then read them back.

    Args:
        root: the folder holding every cache (one sub-folder per key).
        key: `cache_key(...)`.
        size: how many examples the cache holds when complete.
        shard_size: examples per shard file.
    """

    def __init__(self, root: str | Path, key: dict, size: int, shard_size: int = 256):
        self.key, self.size, self.shard_size = key, size, shard_size
        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        self.folder = Path(root).expanduser() / name[:32]
        self.dtype = DTYPES[key["dtype"]]
        self.manifest = self._read_manifest()
        self._pending: list[tuple[int, list[list[torch.Tensor]]]] = []
        self._index: dict[int, tuple[str, int]] | None = None
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    # ---- state of the folder ---------------------------------------------------------------

    def _read_manifest(self) -> dict:
        path = self.folder / MANIFEST
        if not path.is_file():
            return {"key": self.key, "size": self.size, "shards": [], "complete": False}
        manifest = load_json(path)
        if manifest.get("key") != json.loads(json.dumps(self.key, default=str)):
            raise CheckpointError(f"{path} belongs to other states than its folder name says "
                                  "(edited or copied); delete the folder to rebuild it")
        return manifest

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def stored(self) -> set[int]:
        return {i for shard in self.manifest["shards"] for i in shard["examples"]}

    def missing(self) -> list[int]:
        """Example indices neither in a listed shard nor waiting to be written, in order."""
        have = self.stored() | {i for i, _ in self._pending}
        return [i for i in range(self.size) if i not in have]

    def bytes_needed(self, token_counts: Sequence[Sequence[int]], width: int) -> int:
        """Disk for the missing examples: `token_counts[s][i]` tokens of example i in stack s."""
        per_token = [len(inputs) * width * self.dtype.itemsize
                     for inputs in self.key["ladder_inputs"]]
        missing = self.missing()
        return sum(per_token[s] * sum(counts[i] for i in missing)
                   for s, counts in enumerate(token_counts))

    # ---- writing ------------------------------------------------------------------------------

    def add(self, indices: Sequence[int], states: tuple, lengths: list[torch.Tensor]) -> None:
        """Keep the states of a batch's examples (`backbone_states` output, padded on the
        right), writing a shard whenever `shard_size` examples are waiting."""
        stored = self.stored() | {i for i, _ in self._pending}
        for row, index in enumerate(indices):
            if index in stored:
                continue
            per_stack = []
            for s, stack_states in enumerate(states):
                n = int(lengths[s][row])
                per_stack.append([stack_states[i][row, : n if n >= 0 else None]
                                  .to("cpu", self.dtype) for i in self.key["ladder_inputs"][s]])
            self._pending.append((int(index), per_stack))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the waiting examples as one shard and list it in the manifest."""
        if not self._pending:
            return
        tensors = {"examples": torch.tensor([i for i, _ in self._pending], dtype=torch.long)}
        for s, inputs in enumerate(self.key["ladder_inputs"]):
            lengths = [example[s][0].shape[0] for _, example in self._pending]
            tensors[f"s{s}.offsets"] = torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)
            for k, state in enumerate(inputs):
                tensors[f"s{s}.i{state}"] = torch.cat(
                    [example[s][k] for _, example in self._pending]).contiguous()
        # a name no other writer picks: runs of several methods may fill one cache at once
        name = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / name, save(tensors))
        with _locked(self.folder):
            # what other writers listed since this one read the manifest stays listed
            self.manifest = self._read_manifest()
            self.manifest["shards"].append({"file": name,
                                            "examples": [i for i, _ in self._pending]})
            self.manifest["complete"] = len(self.stored()) == self.size
            save_json(self.manifest, self.folder / MANIFEST)
        self._pending = []
        self._index = None

    # ---- reading ------------------------------------------------------------------------------

    def read(self, indices: Sequence[int], device=None, dtype: torch.dtype = torch.float32
             ) -> tuple[tuple, ...]:
        """The stored states of `indices`, right-padded with zeros to the longest: per stack a
        tuple like `backbone_states` returns ((b, t, d) tensors, None where nothing is read).

        Raises:
            CheckpointError: the cache is not complete, or a shard is damaged.
        """
        if not self.complete:
            raise CheckpointError(f"{self.folder} is an incomplete cache; complete it before "
                                  "reading (the backbone fills in what is missing)")
        if self._index is None:
            self._index = {i: (shard["file"], row) for shard in self.manifest["shards"]
                           for row, i in enumerate(shard["examples"])}
        out = []
        for s, inputs in enumerate(self.key["ladder_inputs"]):
            rows = [self._rows(s, index) for index in indices]
            longest = max(end - start for _, start, end in rows)
            states = [None] * (max(inputs) + 1)
            for state in inputs:
                pieces = [self._slice(file, f"s{s}.i{state}", start, end)
                          for file, start, end in rows]
                batch = pieces[0].new_zeros((len(pieces), longest, pieces[0].shape[-1]))
                for row, piece in enumerate(pieces):
                    batch[row, : piece.shape[0]] = piece
                states[state] = batch.to(device=device, dtype=dtype)
            out.append(tuple(states))
        return tuple(out)

    def _rows(self, stack: int, index: int) -> tuple[str, int, int]:
        file, row = self._index[int(index)]
        offsets = self._shard(file)[f"s{stack}.offsets"]
        return file, int(offsets[row]), int(offsets[row + 1])

    def _slice(self, file: str, name: str, start: int, end: int) -> torch.Tensor:
        return self._shard(file)[name][start:end]

    def _shard(self, file: str) -> dict[str, torch.Tensor]:
        """A shard's tensors, read once and kept: later epochs read memory, not disk."""
        if file not in self._shards:
            try:
                tensors = load_file(str(self.folder / file))
                listed = next(shard["examples"] for shard in self.manifest["shards"]
                              if shard["file"] == file)
                if tensors["examples"].tolist() != listed:
                    raise ValueError("other examples than its manifest entry lists")
            except Exception as err:  # noqa: BLE001 - any read failure is a damaged shard
                raise CheckpointError(f"{self.folder / file} is damaged ({type(err).__name__});"
                                      f" delete {self.folder} to rebuild the cache") from None
            self._shards[file] = tensors
        return self._shards[file]

    def delete(self) -> None:
        self._shards.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on `folder`'s manifest, held while it is read, merged and written."""
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_bytes(path: str | Path) -> int:
    """Free disk space where `path` is (or would be)."""
    path = Path(path).expanduser()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def default_root() -> Path:
    """Where caches live unless told otherwise: $LADDERTUNE_CACHE/states, shared by runs."""
    base = os.environ.get("LADDERTUNE_CACHE", "~/.cache/laddertune")
    return Path(base).expanduser() / "states"


class CachedStatesDataset(torch.utils.data.Dataset):
    """Examples with their cached backbone states, for a `DataLoader(..., collate_fn=
    dataset.collate)`: item i is example i's inputs (1-D tensors and a label), and `collate`
    pads a list of items into a batch holding its `backbone_hidden_states`.

    Args:
        cache: a complete `StateCache` of these examples, in this order.
        examples: per example a dict of ``input_ids``, optional ``attention_mask``,
            ``token_type_ids`` (padded with 0) and ``labels``.
        pad_token_id: what right-pads ``input_ids``.
    """

    def __init__(self, cache: StateCache, examples: Sequence[dict], pad_token_id: int = 0):
        if len(examples) != cache.size:
            raise CheckpointError(f"the cache holds {cache.size} examples, not "
                                  f"{len(examples)}; pass the examples it was built from")
        self.cache, self.examples, self.pad = cache, examples, pad_token_id

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, **self.examples[index]}

    def collate(self, items: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad, dtype=torch.long)    # (b, t)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)         # (b, t)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.as_tensor(item["input_ids"])
            attention_mask[row, :n] = torch.as_tensor(item.get("attention_mask", [1] * n))
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "backbone_hidden_states": self.cache.read([item["index"] for item in items])}
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = torch.zeros_like(input_ids)                 # (b, t)
            for row, item in enumerate(items):
                types = torch.as_tensor(item["token_type_ids"])
                batch["token_type_ids"][row, :len(types)] = types
        if "labels" in items[0]:
            batch["labels"] = torch.stack([torch.as_tensor(item["labels"]) for item in items])
        return batch
