"""--top-layers K: full, lora, adapter and ia3 train only the top K layers (and what sits above
them); below, nothing trains, nothing changes, and autograd keeps nothing for backward."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import (
    save_tiny_lm,
    save_tiny_text_model,
    symbol_pairs,
    tiny_config,
    topic_rows,
    write_csv,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from laddertune.app.cli import main
from laddertune.app.memory import training_memory_account
from laddertune.app.methods import build_method, load_trained, save_trained
from laddertune.app.options import TrainConfig, UsageError
from laddertune.app.top_layers import (
    BelowTopLayers,
    base_model,
    below_parameters,
    layer_list,
    replay_cached_states,
)
from laddertune.errors import LSTConfigError

METHODS = ("full", "lora", "adapter", "ia3")
FAMILIES = ("bert", "llama", "gpt2", "mpnet")
DEPTH = 4   # every tiny model's layers
FLAGS = ["--device", "cpu", "--no-progress", "--batch-size", "8", "--lr", "1e-2"]


def _task_model(family: str, lm: bool = False):
    """A freshly 'loaded' task model: the same weights every call."""
    torch.manual_seed(0)
    if family == "mpnet":   # read off its structure: no Family entry
        config = AutoConfig.for_model("mpnet", hidden_size=32, num_hidden_layers=DEPTH,
                                      num_attention_heads=4, intermediate_size=64, vocab_size=64,
                                      pad_token_id=0)
    else:
        config = tiny_config(family, pad_token_id=0)
    auto = AutoModelForCausalLM if lm else AutoModelForSequenceClassification
    return auto.from_config(config)


def _batch(lm: bool = False) -> dict:
    ids = torch.randint(3, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone() if lm else torch.tensor([0, 1, 0, 1])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _build(method: str, family: str, k: int | None, lm: bool = False):
    task_model = _task_model(family, lm)
    task_type = "CAUSAL_LM" if lm else "SEQ_CLS"
    return task_model, build_method(method, task_model, task_type, top_layers=k)


def _saved_bytes(method: str, family: str, k: int | None, lm: bool = False) -> int:
    _, model = _build(method, family, k, lm)
    model.train()
    batch = _batch(lm)
    return training_memory_account(model, lambda: model(**batch).loss)["saved_bytes"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_saved_bytes_fall_with_k_and_k_equal_to_depth_is_full_depth(method, family):
    saved = [_saved_bytes(method, family, k) for k in (1, 2, 3, DEPTH)]
    assert saved == sorted(set(saved)), saved          # strictly more kept with each layer
    assert saved[-1] == _saved_bytes(method, family, None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_nothing_below_the_top_layers_trains_or_changes(method, family):
    task_model, model = _build(method, family, 2)
    below = below_parameters(task_model, 2)
    assert not any(p.requires_grad for p in task_model.parameters() if id(p) in below)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        model(**_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    by_id = {id(p): n for n, p in model.named_parameters()}
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and not changed & {by_id[i] for i in below if i in by_id}
    # only the top two layers and what sits above them move
    for name in changed:
        assert not any(f".{i}." in name for i in (0, 1)) or "classifier" in name, name


def test_peft_transforms_only_the_top_layers():
    _, lora = _build("lora", "bert", 1)
    adapted = {n.split(".layer.")[1].split(".")[0] for n, _ in lora.named_parameters()
               if "lora_A" in n}
    assert adapted == {str(DEPTH - 1)}
    assert lora.peft_config["default"].layers_to_transform == [DEPTH - 1]
    _, ia3 = _build("ia3", "llama", 2)
    scaled = {n.split(".layers.")[1].split(".")[0] for n, _ in ia3.named_parameters()
              if "ia3_l" in n}
    assert scaled == {"2", "3"}


def test_adapters_go_into_the_top_layers_only_and_reload(tmp_path):
    _, model = _build("adapter", "bert", 1)
    adapters = {n.split(".layer.")[1].split(".")[0] for n, _ in model.named_parameters()
                if "bottleneck_adapter" in n}
    assert adapters == {str(DEPTH - 1)}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_trained(model, "adapter", tmp_path)
    loaded = load_trained(_task_model("bert"), "adapter", tmp_path)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits)


def test_top_layers_of_a_language_model_keep_its_tied_head_frozen():
    task_model, model = _build("full", "llama", 1, lm=True)
    if task_model.config.tie_word_embeddings:
        assert not task_model.get_output_embeddings().weight.requires_grad
    saved = [_saved_bytes("lora", "llama", k, lm=True) for k in (1, DEPTH)]
    assert saved[0] < saved[1]


def test_k_outside_the_depth_and_two_stacks_are_refused():
    with pytest.raises(LSTConfigError, match=f"outside 1..{DEPTH}.*has {DEPTH} layers"):
        _build("full", "bert", DEPTH + 1)
    torch.manual_seed(0)
    from transformers import AutoModelForSeq2SeqLM
    t5 = AutoModelForSeq2SeqLM.from_config(tiny_config("t5"))
    with pytest.raises(LSTConfigError, match="encoder and a decoder"):
        build_method("lora", t5, "SEQ_2_SEQ_LM", top_layers=1)


@pytest.mark.parametrize("flags, expected", [
    (["--method", "lst", "--top-layers", "1"], "--top-layers is for --method full, lora"),
    (["--method", "probe", "--top-layers", "1"], "--top-layers is for --method full, lora"),
    (["--method", "lora", "--top-layers", "0"], "--top-layers must be a whole number >= 1"),
    (["--method", "lora", "--top-layers", "1", "--cache-backbone", "--backbone-dtype", "int8"],
     "caches float32 layers below"),
    (["--method", "full", "--cache-backbone"], "or full, lora, adapter, ia3 with --top-layers K"),
    (["--method", "bitfit", "--cache-backbone"], "bitfit at full depth"),
])
def test_bad_top_layers_are_one_line(flags, expected, capsys):
    assert main(["train", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("top")
    save_tiny_text_model(root / "tiny")
    write_csv(root / "train.csv", topic_rows(32, seed=0))
    write_csv(root / "eval.csv", topic_rows(24, seed=1))
    save_tiny_lm(root / "llama", "llama")
    write_csv(root / "pairs.csv", symbol_pairs(32, seed=0, length=2))
    write_csv(root / "pairs_eval.csv", symbol_pairs(16, seed=1, length=2))
    return root


@pytest.mark.parametrize("method", METHODS)
def test_a_top_k_run_records_k_and_eval_reloads_it(method, files, capsys):
    out = files / f"run-{method}"
    assert main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--eval", str(files / "eval.csv"), "--output", str(out), "--method", method,
                 "--top-layers", "1", "--epochs", "1", *FLAGS]) == 0
    assert json.loads((out / "run.json").read_text())["top_layers"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["top_layers"] == 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(files / "eval.csv"),
                 "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["loss"] == pytest.approx(metrics["eval"]["loss"], rel=1e-4, abs=1e-4)


def test_a_run_past_the_depth_is_refused_naming_it(files, capsys):
    out = files / "too-deep"
    assert main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(out), "--method", "full", "--top-layers", "9", *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert f"has {DEPTH} layers" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_top_layers_train_a_generate_run_that_reloads(method, files, capsys):
    out = files / f"gen-{method}"
    assert main(["train", "--task", "generate", "--model", str(files / "llama"), "--train",
                 str(files / "pairs.csv"), "--eval", str(files / "pairs_eval.csv"), "--output",
                 str(out), "--method", method, "--top-layers", "2", "--epochs", "1",
                 *FLAGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["top_layers"] == 2 and "rouge_l" in metrics["eval"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(files / "pairs_eval.csv"),
                 "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["loss"] == pytest.approx(metrics["eval"]["loss"], rel=1e-4, abs=1e-4)


def test_the_config_takes_k_for_the_methods_that_can():
    assert TrainConfig(method="lora", top_layers=2).top_layers == 2
    with pytest.raises(UsageError, match="--top-layers is for"):
        TrainConfig(method="bitfit", top_layers=2)


# ---- --cache-backbone: the layers below run once ------------------------------------------------

def _counted_layers(model) -> list[int]:
    """Calls per layer of `model`'s stack, counted by forward hooks from now on."""
    layers = layer_list(base_model(model))[2]
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_states_replayed_into_the_top_layers_give_the_live_logits(method, family):
    task_model, model = _build(method, family, 2)
    model.eval()
    source = BelowTopLayers(model, 2)
    replay_cached_states(model, 2)
    batch = _batch()
    batch["attention_mask"][1, 5:] = 0                     # a padded row
    batch.pop("labels")
    with torch.no_grad():
        source.backbone_states(**batch)                    # the first batch checks the replay
        assert source.checked
        calls = _counted_layers(model)
        states = source.backbone_states(**batch)
        assert calls == [1, 1, 0, 0]                       # stopped at the top layers' input
        live = model(**batch).logits
        replayed = model(**batch, backbone_hidden_states=states).logits
        assert calls == [2, 2, 2, 2]                       # the replay ran only the top 2
        # the state fed in is what the top layers read: another one moves the logits
        moved = (*states[0][:2], states[0][2] + 1.0, *states[0][3:])
        other = model(**batch, backbone_hidden_states=(moved,)).logits
    torch.testing.assert_close(replayed, live, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(other, live)
    assert len(layer_list(base_model(model))[2]) == DEPTH  # the layer list is whole again


def test_the_cache_key_reads_only_the_layers_below():
    """Full, LoRA and IA3 at the same K share one cache; another K, or other weights below,
    another."""
    prints = {m: BelowTopLayers(_build(m, "bert", 2)[1], 2).fingerprint() for m in METHODS}
    assert all(p == prints["full"] for p in prints.values())
    assert BelowTopLayers(_build("full", "bert", 1)[1], 1).fingerprint() != prints["full"]
    _, changed = _build("full", "bert", 2)
    with torch.no_grad():
        layer_list(changed)[2][0].attention.self.query.weight.add_(0.1)
    assert BelowTopLayers(changed, 2).fingerprint() != prints["full"]


def _cached_run(files, out, states, *extra):
    return main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--eval", str(files / "eval.csv"), "--output", str(out), "--method", "lora",
                 "--top-layers", "1", "--epochs", "2", "--cache-backbone", "--cache-dtype",
                 "float32", "--cache-dir", str(states), *FLAGS, *extra])


def test_a_cached_top_k_run_trains_the_same_weights_from_its_cache(files, tmp_path, capsys):
    states = tmp_path / "states"
    assert _cached_run(files, tmp_path / "first", states) == 0
    assert "caching the training set's backbone states" in capsys.readouterr().out
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert first["backbone_seconds"] > 0
    assert _cached_run(files, tmp_path / "second", states) == 0
    assert "reading the training set's backbone states" in capsys.readouterr().out
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert second["backbone_seconds"] == 0
    assert second["eval"]["loss"] == pytest.approx(first["eval"]["loss"], rel=1e-4, abs=1e-5)
    # what eval reloads without the cache scores as training's eval did
    assert main(["eval", "--checkpoint", str(tmp_path / "second"), "--data",
                 str(files / "eval.csv"), "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["loss"] == pytest.approx(second["eval"]["loss"], rel=1e-4, abs=1e-4)


def test_a_cached_top_k_generate_run_trains(files, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["train", "--task", "generate", "--model", str(files / "llama"), "--train",
                 str(files / "pairs.csv"), "--eval", str(files / "pairs_eval.csv"), "--output",
                 str(out), "--method", "full", "--top-layers", "2", "--epochs", "1",
                 "--cache-backbone", "--cache-dir", str(tmp_path / "states"), *FLAGS]) == 0
    assert "rouge_l" in json.loads((out / "metrics.json").read_text())["eval"]


def test_caching_every_layer_is_refused_in_one_line(files, tmp_path, capsys):
    out = tmp_path / "all"
    assert main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--output", str(out), "--method", "full", "--top-layers", str(DEPTH),
                 "--cache-backbone", "--cache-dir", str(tmp_path / "states"), *FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing below is frozen to cache" in err and "\n" not in err


# families whose layer loop reads something by a layer's place in the list
_LLAMA_LIKE = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=64, vocab_size=64, pad_token_id=0)
PLACED = {
    # config.layer_types[i]: sliding-window or full attention (Gemma 3: and the rotary base)
    "gemma2": dict(_LLAMA_LIKE, head_dim=8, sliding_window=4),
    "gemma3_text": dict(_LLAMA_LIKE, head_dim=8, sliding_window=4),
    "qwen2": dict(_LLAMA_LIKE, use_sliding_window=True, sliding_window=4, max_window_layers=2),
    # a convolution after layer 0 only
    "deberta-v2": dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4,
                       intermediate_size=64, vocab_size=64, conv_kernel_size=3,
                       relative_attention=True, position_buckets=8, max_relative_positions=16,
                       pos_att_type=["p2c", "c2p"]),
}


def _placed(model_type: str, lm: bool, k: int = 3):
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if lm else AutoModelForSequenceClassification
    task_model = auto.from_config(AutoConfig.for_model(model_type, **PLACED[model_type]))
    model = build_method("lora", task_model, "CAUSAL_LM" if lm else "SEQ_CLS", top_layers=k)
    ids = torch.randint(3, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type, lm", [(t, lm) for t in PLACED for lm in (False, True)
                                            if not (lm and t == "deberta-v2")])
def test_the_cut_follows_what_layers_read_by_their_place(model_type, lm):
    model, batch = _placed(model_type, lm)
    model.eval()
    source = BelowTopLayers(model, 3)
    replay_cached_states(model, 3)
    with torch.no_grad():
        states = source.backbone_states(**batch)        # checks the replay once, or raises
        live = model(**batch).logits
        replayed = model(**batch, backbone_hidden_states=states).logits
    if lm:                                              # padded positions are never read
        live, replayed = live[batch["attention_mask"].bool()], replayed[
            batch["attention_mask"].bool()]
    torch.testing.assert_close(replayed, live, rtol=1e-5, atol=1e-6)
    config = base_model(model).config
    assert getattr(config, "layer_types", [None] * DEPTH) is None or len(
        getattr(config, "layer_types", [None] * DEPTH)) == DEPTH       # restored


def test_a_replay_that_differs_from_the_live_model_is_refused_in_one_line(monkeypatch):
    """Should a family read something else by a layer's place, the first batch's check stops
    the run instead of training on wrong states: shown by a cut that forgets layer_types."""
    from laddertune.app import top_layers
    monkeypatch.setattr(top_layers.cut_layers, "_swap", lambda *args: None)
    model, batch = _placed("gemma2", lm=False)
    source = BelowTopLayers(model, 3)
    replay_cached_states(model, 3)
    with pytest.raises(LSTConfigError, match="cannot replay cached states into this gemma2"):
        source.backbone_states(**batch)


def test_a_cached_top_k_run_killed_mid_epoch_completes_its_cache_on_resume(
        files, tmp_path, monkeypatch, capsys):
    from cli_helpers import interrupt_at_step
    states = tmp_path / "states"
    interrupt_at_step(monkeypatch, 3)
    out = tmp_path / "killed"
    assert _cached_run(files, out, states, "--save-every", "2") == 130
    monkeypatch.undo()
    assert _cached_run(files, out, states, "--save-every", "2", "--resume") == 0
    manifests = [json.loads(p.read_text()) for p in states.glob("*/manifest.json")]
    assert manifests and all(m["complete"] for m in manifests)
    train_manifest = next(m for m in manifests if m["size"] == 32)
    assert sorted(i for s in train_manifest["shards"] for i in s["examples"]) == list(range(32))


def test_a_top_k_sweep_trains_each_rate_as_a_cached_run_alone(files, tmp_path, capsys):
    common = ["--model", str(files / "tiny"), "--train", str(files / "train.csv"), "--eval",
              str(files / "eval.csv"), "--method", "lora", "--top-layers", "1", "--epochs", "2",
              "--cache-backbone", "--cache-dtype", "float32", "--cache-dir",
              str(tmp_path / "states"), "--device", "cpu", "--no-progress", "--batch-size", "8"]
    assert main(["sweep", *common, "--output", str(tmp_path / "sweep"),
                 "--grid", "lr=3e-3,1e-2"]) == 0
    assert main(["train", *common, "--lr", "1e-2", "--output", str(tmp_path / "alone")]) == 0
    swept = json.loads((tmp_path / "sweep" / "lr-0.01" / "metrics.json").read_text())
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert swept["eval"]["loss"] == pytest.approx(alone["eval"]["loss"], rel=1e-4, abs=1e-5)
    assert swept["eval"]["accuracy"] == alone["eval"]["accuracy"]
    capsys.readouterr()
    assert main(["sweep", *common, "--output", str(tmp_path / "seeds"), "--grid",
                 "seed=0,1"]) == 2
    assert "sweep seeds in separate sweeps" in capsys.readouterr().err
