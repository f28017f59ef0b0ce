"""Cached backbone states: what the ladders read, stored once and read back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_backbone, tiny_inputs

from laddertune import CheckpointError, InputError, LSTConfig, LSTConfigError, get_lst_model
from laddertune.cache import (
    CachedStatesDataset,
    StateCache,
    cache_key,
    example_lengths,
    examples_digest,
)


def build(model_type="bert", task="SEQ_CLS", **config):
    backbone = tiny_backbone(model_type, task="lm" if "LM" in task else "bare")
    torch.manual_seed(0)
    return get_lst_model(backbone, LSTConfig(task_type=task, reduction_factor=4, **config))


def examples(n=10, seed=0):
    """Right-padded rows of varied lengths, as the CLI's collate makes them."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 64, (int(torch.randint(3, 9, (1,), generator=generator)),),
                          generator=generator) for _ in range(n)]
    return [row.tolist() for row in rows]


def batch_of(rows, indices, labels=None):
    width = max(len(rows[i]) for i in indices)
    ids = torch.zeros((len(indices), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(indices):
        ids[r, :len(rows[i])] = torch.tensor(rows[i])
        mask[r, :len(rows[i])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = labels[indices]
    return batch


def fill(model, rows, root, dtype="float32", batch_size=4, shard_size=3):
    cache = StateCache(root, cache_key(model, examples_digest(rows), dtype), len(rows),
                       shard_size=shard_size)
    for start in range(0, len(rows), batch_size):
        indices = list(range(start, min(start + batch_size, len(rows))))
        batch = batch_of(rows, indices)
        cache.add(indices, model.backbone_states(**batch), example_lengths(model, batch))
    cache.flush()
    return cache


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["bert", "llama", "t5", "vit"])
def test_backbone_states_in_place_of_the_backbone_give_the_same_output(model_type):
    model = build(model_type).eval()
    inputs = tiny_inputs(model_type)
    states = model.backbone_states(**inputs)
    assert len(states) == len(model.stacks)
    for index, stack_states in enumerate(states):
        read = [i for i, s in enumerate(stack_states) if s is not None]
        assert read == model.ladder_inputs(index)        # only what the ladders read is kept
    torch.testing.assert_close(model(**inputs, backbone_hidden_states=states).logits,
                               model(**inputs).logits, rtol=0, atol=0)


def test_states_missing_a_ladder_input_are_refused():
    model = build()
    inputs = tiny_inputs("bert")
    states = list(model.backbone_states(**inputs)[0])
    states[model.ladder_inputs()[-1]] = None
    with pytest.raises(InputError, match="backbone_states"):
        model(**inputs, backbone_hidden_states=tuple(states))


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_a_float32_cache_reads_back_exactly_what_the_backbone_computed(model_type, tmp_path):
    model = build(model_type).eval()
    rows = examples(10)
    cache = fill(model, rows, tmp_path)
    # a shard is written once 3 examples wait, after a batch of 4: 4 + 4 + 2
    assert cache.complete and len(list(cache.folder.glob("shard-*"))) == 3
    indices = [7, 2, 9]
    batch = batch_of(rows, indices)
    read = cache.read(indices)
    lengths = batch["attention_mask"].sum(-1)
    for row, (index, n) in enumerate(zip(indices, lengths)):
        # bitwise against the very batch that filled the cache: same shapes, same kernels
        start = index - index % 4
        filled = batch_of(rows, list(range(start, min(start + 4, len(rows)))))
        expected = model.backbone_states(**filled)
        for stack_expected, stack_read in zip(expected, read):
            for want, got in zip(stack_expected, stack_read):
                assert (want is None) == (got is None)
                if want is not None:
                    assert torch.equal(got[row, :n], want[index - start, :n])
                    assert not got[row, n:].any()       # padding is zeros
    # the states came from batches of 4, not this batch of 3: torch rounds them differently
    torch.testing.assert_close(model(**batch, backbone_hidden_states=read).logits,
                               model(**batch).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.numerics
def test_a_float16_cache_keeps_outputs_close(tmp_path):
    model = build().eval()
    rows = examples(8)
    cache = fill(model, rows, tmp_path, dtype="float16")
    batch = batch_of(rows, list(range(8)))
    cached = model(**batch, backbone_hidden_states=cache.read(range(8))).logits
    torch.testing.assert_close(cached, model(**batch).logits, rtol=0, atol=2e-3)
    float32 = fill(model, rows, tmp_path, dtype="float32")
    assert float32.folder != cache.folder
    assert sum(f.stat().st_size for f in cache.folder.glob("shard-*")) < 0.6 * sum(
        f.stat().st_size for f in float32.folder.glob("shard-*"))


def test_anything_that_changes_the_states_changes_the_key(tmp_path):
    model = build()
    rows = examples(6)
    folder = fill(model, rows, tmp_path).folder
    other_backbone = get_lst_model(tiny_backbone("bert", seed=1), LSTConfig(reduction_factor=4))
    others = [
        StateCache(tmp_path, cache_key(other_backbone, examples_digest(rows), "float32"), 6),
        StateCache(tmp_path, cache_key(model, examples_digest(rows[:-1] + [[5, 6]]), "float32"),
                   6),
        StateCache(tmp_path, cache_key(model, examples_digest(rows), "bfloat16"), 6),
        StateCache(tmp_path, cache_key(build(side_layers=[1, 2]), examples_digest(rows),
                                       "float32"), 6),
        StateCache(tmp_path, cache_key(build(ladder_last_layer="normed"),
                                       examples_digest(rows), "float32"), 6),
        # the same ids read as sentence pairs, with segment ids
        StateCache(tmp_path, cache_key(model, examples_digest(
            rows, [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]),
            "float32"), 6),
    ]
    assert all(cache.folder != folder and not cache.complete for cache in others)


def test_the_dataset_pads_segment_ids_with_zeros_when_examples_have_them(tmp_path):
    model = build()
    rows = examples(4)
    cache = fill(model, rows, tmp_path)
    items = [{"input_ids": r, "token_type_ids": [0, 0] + [1] * (len(r) - 2)} for r in rows]
    batch = CachedStatesDataset(cache, items).collate(
        [{"index": i, **item} for i, item in enumerate(items)])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert torch.equal(batch["token_type_ids"].sum(-1), torch.tensor([len(r) - 2 for r in rows]))
    single = CachedStatesDataset(cache, [{"input_ids": r} for r in rows])
    assert "token_type_ids" not in single.collate([single[0], single[1]])


def test_an_interrupted_cache_is_never_read_and_names_what_is_missing(tmp_path):
    model = build()
    rows = examples(10)
    key = cache_key(model, examples_digest(rows), "float32")
    cache = StateCache(tmp_path, key, 10, shard_size=4)
    for indices in ([0, 1, 2, 3], [4, 5]):
        batch = batch_of(rows, indices)
        cache.add(indices, model.backbone_states(**batch), example_lengths(model, batch))
    # killed here: examples 0-3 reached a shard, 4-5 were only in memory
    (cache.folder / ".shard-00001.safetensors.x1y2.tmp").write_bytes(b"half a shard")
    again = StateCache(tmp_path, key, 10, shard_size=4)
    assert not again.complete and again.missing() == [4, 5, 6, 7, 8, 9]
    with pytest.raises(CheckpointError, match="incomplete cache"):
        again.read([0])
    batch = batch_of(rows, again.missing())
    again.add(again.missing(), model.backbone_states(**batch), example_lengths(model, batch))
    again.flush()
    assert again.complete and StateCache(tmp_path, key, 10).complete
    torch.testing.assert_close(again.read([0, 5])[0][0][1, :len(rows[5])],
                               model.backbone_states(**batch_of(rows, [5]))[0][0][0])


def test_an_edited_manifest_is_not_trusted(tmp_path):
    model = build()
    rows = examples(4)
    cache = fill(model, rows, tmp_path)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    manifest["key"]["dtype"] = "float16"
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="delete the folder"):
        StateCache(tmp_path, cache.key, 4)


def test_a_backbone_with_dropout_cannot_be_cached():
    with pytest.raises(LSTConfigError, match="dropout"):
        cache_key(build(backbone_dropout=True), "digest", "float16")


def test_the_dataset_trains_from_the_cache_without_the_backbone(tmp_path):
    model = build()
    rows = examples(12)
    labels = torch.tensor([row[0] % 2 for row in rows])
    cache = fill(model, rows, tmp_path)
    dataset = CachedStatesDataset(cache, [{"input_ids": r, "labels": labels[i]}
                                          for i, r in enumerate(rows)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)
    calls = []
    hook = model.backbone.register_forward_hook(lambda *args: calls.append(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    hook.remove()
    assert not calls and losses[-1] < losses[0]


def test_two_writers_filling_one_cache_keep_every_example_in_its_place(tmp_path):
    """Runs of several methods may fill one cache at once: neither overwrites the other's
    shards or manifest entries, and each example reads back its own states."""
    model = build().eval()
    rows = examples(12)
    key = cache_key(model, examples_digest(rows), "float32")
    first, second = (StateCache(tmp_path, key, len(rows), shard_size=2) for _ in range(2))
    with torch.no_grad():
        for start in range(0, 12, 2):                     # interleaved: 0-1, 2-3, 4-5, ...
            writer = first if start % 4 == 0 else second
            indices = [start, start + 1]
            batch = batch_of(rows, indices)
            writer.add(indices, model.backbone_states(**batch), example_lengths(model, batch))
    reader = StateCache(tmp_path, key, len(rows))
    assert reader.complete and len(list(reader.folder.glob("shard-*"))) == 6
    with torch.no_grad():
        for index in range(12):
            want = model.backbone_states(**batch_of(rows, [index]))[0]
            got = reader.read([index])[0]
            for i in model.ladder_inputs():
                torch.testing.assert_close(got[i], want[i])


def test_a_shard_holding_other_examples_than_listed_is_refused(tmp_path):
    cache = fill(build().eval(), examples(10), tmp_path)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    first, second = manifest["shards"][:2]
    first["file"], second["file"] = second["file"], first["file"]     # swapped entries
    (cache.folder / "manifest.json").write_text(json.dumps(manifest))
    reread = StateCache(tmp_path, cache.key, cache.size)
    with pytest.raises(CheckpointError, match="damaged"):
        reread.read([0])
