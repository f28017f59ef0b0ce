"""Baselines built by `build_method`: bottleneck adapters (Houlsby, Pfeiffer) and IA3.

The invariants PEFT's tests hold for every method, on tiny models of several families: the
model starts as the pretrained one, only the method's parameters change in training, and
save -> load gives identical logits from a folder without backbone weights.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import tiny_config
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from laddertune.app.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BottleneckAdapter,
    find_adapter_sites,
    layer_norm_params,
    task_head_params,
    trainable_parameter_names,
)
from laddertune.app.methods import (
    DEFAULT_LR,
    METHODS,
    REGISTRY,
    build_method,
    get_method,
    ia3_config,
    load_trained,
    save_trained,
)
from laddertune.app.options import TrainConfig
from laddertune.errors import CheckpointError, LSTConfigError

SRC = str(Path(__file__).resolve().parents[2] / "src")
FAMILIES = ("bert", "roberta", "mpnet", "llama", "gpt2", "t5", "bart")
LABELS = torch.tensor([0, 1, 0, 1])


def _config(family: str, **extra):
    if family == "mpnet":  # not among tiny_models' families: LST has no MPNet entry
        return AutoConfig.for_model("mpnet", hidden_size=32, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=64, vocab_size=64,
                                    **extra)
    return tiny_config(family, pad_token_id=0, **extra)


def _task_model(family: str, seed: int = 0, **extra):
    """A freshly 'loaded' classifier: the same seed gives the same pretrained weights."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(_config(family, **extra)).eval()


def _batch(family: str, seed: int = 0) -> dict:
    """4 rows of 8 tokens; for T5 and BART, which classify from it, each row ends in EOS."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (4, 8), generator=generator)
    config = _config(family)
    if config.is_encoder_decoder:
        ids[:, -1] = config.eos_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(model, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_batch(family)).logits


def _train(model, family: str, steps: int, lr: float = 1e-2) -> list[float]:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**_batch(family), labels=LABELS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _changed_parameters(model, family: str, steps: int = 3) -> set[str]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, family, steps)
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


def _adapters(model) -> list[BottleneckAdapter]:
    return [m for m in model.modules() if isinstance(m, BottleneckAdapter)]


def test_methods_and_default_learning_rates_cover_the_new_baselines():
    assert {"adapter", "ia3"} <= set(METHODS)
    assert set(DEFAULT_LR) == set(METHODS)
    assert DEFAULT_LR["adapter"] == 3e-4 and DEFAULT_LR["ia3"] == 3e-3


def test_every_registry_entry_names_real_settings_a_known_head_and_its_own_rate():
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    for method in REGISTRY.values():
        assert set(method.fields) <= settings, method.name
        assert method.head in ("bare", "classifier")
        assert TrainConfig(method=method.name).lr == method.default_lr
    # only LST and the probe take the backbone's states as an input, so only they may cache or
    # share them
    assert [m.name for m in REGISTRY.values() if m.reads_backbone_states] == ["lst", "probe"]
    with pytest.raises(LSTConfigError, match="unknown; use one of lst, full"):
        get_method("qlora")


# ---- bottleneck adapters ------------------------------------------------------------------------

@pytest.mark.parametrize("family, layer0, sites", [
    ("bert", "bert.encoder.layer.0.", ["attention.output.dense", "output.dense"]),
    ("roberta", "roberta.encoder.layer.0.", ["attention.output.dense", "output.dense"]),
    ("mpnet", "mpnet.encoder.layer.0.", ["attention.attn.o", "output.dense"]),
    ("llama", "model.layers.0.", ["self_attn.o_proj", "mlp.down_proj"]),
    ("gpt2", "transformer.h.0.", ["attn.c_proj", "mlp.c_proj"]),                 # Conv1D
    ("t5", "transformer.decoder.block.0.", ["layer.0.SelfAttention.o", "layer.1.EncDecAttention.o",
                                            "layer.2.DenseReluDense.wo"]),
    ("bart", "model.decoder.layers.0.", ["self_attn.out_proj", "encoder_attn.out_proj", "fc2"]),
])
def test_adapter_sites_are_the_output_projections_of_each_sublayer(family, layer0, sites):
    found = find_adapter_sites(_task_model(family), "houlsby")
    in_layer0 = [s for s in found if s.path.startswith(layer0)]
    assert [s.path.removeprefix(layer0) for s in in_layer0] == sites
    assert [s.sublayer for s in in_layer0] == ["attention"] * (len(sites) - 1) + ["feed_forward"]
    assert {s.width for s in found} == {32}


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_houlsby_has_twice_pfeiffers_adapters(family):
    houlsby = build_method("adapter", _task_model(family), adapter_kind="houlsby")
    pfeiffer = build_method("adapter", _task_model(family), adapter_kind="pfeiffer")
    assert len(_adapters(houlsby)) == 2 * len(_adapters(pfeiffer)) == 2 * 4  # 4 layers


def test_t5_houlsby_adds_an_adapter_after_cross_attention_too():
    houlsby = build_method("adapter", _task_model("t5"), adapter_kind="houlsby")
    pfeiffer = build_method("adapter", _task_model("t5"), adapter_kind="pfeiffer")
    assert len(_adapters(houlsby)) == 4 * 2 + 4 * 3 and len(_adapters(pfeiffer)) == 4 + 4


@pytest.mark.parametrize("reduction_factor, bottleneck", [(16, 2), (4, 8), (1, 32)])
def test_reduction_factor_sets_the_bottleneck_width(reduction_factor, bottleneck):
    model = build_method("adapter", _task_model("bert"), adapter_kind="pfeiffer",
                         adapter_reduction_factor=reduction_factor)
    adapters = _adapters(model)
    assert {(a.down.in_features, a.down.out_features, a.up.out_features)
            for a in adapters} == {(32, bottleneck, 32)}
    per_adapter = 32 * bottleneck + bottleneck + bottleneck * 32 + 32
    assert sum(p.numel() for a in adapters for p in a.parameters()) == 4 * per_adapter


def test_adapter_settings_out_of_range_name_the_fix():
    with pytest.raises(LSTConfigError, match="houlsby, pfeiffer"):
        build_method("adapter", _task_model("bert"), adapter_kind="lora")
    with pytest.raises(LSTConfigError, match="use at most 32"):
        build_method("adapter", _task_model("bert"), adapter_reduction_factor=64)
    with pytest.raises(LSTConfigError, match="at least 1"):
        build_method("adapter", _task_model("bert"), adapter_reduction_factor=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_start_as_the_pretrained_model(family):
    pretrained = _logits(_task_model(family), family)
    adapted = build_method("adapter", _task_model(family), adapter_kind="houlsby")
    torch.testing.assert_close(_logits(adapted, family), pretrained, rtol=0, atol=0)


def test_trainable_parameters_are_adapters_layer_norms_and_the_head():
    model = build_method("adapter", _task_model("bert"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == trainable_parameter_names(model)
    adapters = {n for n in trainable if ".bottleneck_adapter." in n}
    assert len(adapters) == 8 * 4                  # 8 adapters: down and up, weight and bias
    assert set(task_head_params(model)) == {"classifier.weight", "classifier.bias"}
    assert trainable == adapters | set(layer_norm_params(model)) | set(task_head_params(model))
    assert "bert.embeddings.LayerNorm.weight" in trainable
    assert not any("attention.self" in n or "word_embeddings" in n for n in trainable)


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_only_adapters_layer_norms_and_head_change_in_training(family):
    # 8 bottleneck units, not 2: two ReLU units can both start dead and leave `up` untouched
    model = build_method("adapter", _task_model(family), adapter_reduction_factor=4)
    assert _changed_parameters(model, family) == trainable_parameter_names(model)


def test_adapters_learn_a_toy_task():
    model = build_method("adapter", _task_model("bert"))
    before = [a.up.weight.detach().clone() for a in _adapters(model)]
    losses = _train(model, "bert", steps=30)
    assert losses[-1] < 0.2 * losses[0]
    assert all(not torch.equal(b, a.up.weight) for b, a in zip(before, _adapters(model)))


def test_an_lm_head_stays_frozen_so_tied_embeddings_do():
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(_config("llama", tie_word_embeddings=True))
    model = build_method("adapter", lm, task_type="CAUSAL_LM")
    assert not model.lm_head.weight.requires_grad
    assert not model.model.embed_tokens.weight.requires_grad


@pytest.mark.parametrize("family", FAMILIES)
def test_every_trainable_parameter_gets_a_gradient(family):
    """What DDP without find_unused_parameters needs: no trainable parameter is left unused."""
    model = build_method("adapter", _task_model(family)).train()
    model(**_batch(family), labels=LABELS).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("family, kind", [("bert", "houlsby"), ("gpt2", "houlsby"),
                                          ("t5", "houlsby"), ("llama", "pfeiffer")])
def test_adapter_save_load_gives_identical_logits(tmp_path, family, kind):
    model = build_method("adapter", _task_model(family), adapter_kind=kind,
                         adapter_reduction_factor=8)
    _train(model, family, steps=3)
    trained = _logits(model, family)
    save_trained(model, "adapter", tmp_path)

    loaded = load_trained(_task_model(family), "adapter", tmp_path)
    torch.testing.assert_close(_logits(loaded, family), trained, rtol=0, atol=0)
    assert not loaded.training
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert (config["kind"], config["reduction_factor"]) == (kind, 8)


def test_the_saved_folder_holds_no_backbone_weights(tmp_path):
    model = build_method("adapter", _task_model("bert"))
    save_trained(model, "adapter", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), framework="pt") as saved:
        assert set(saved.keys()) == trainable_parameter_names(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & trainable_parameter_names(model)


def test_loading_adapters_into_another_model_names_the_fix(tmp_path):
    save_trained(build_method("adapter", _task_model("bert")), "adapter", tmp_path)
    with pytest.raises(CheckpointError, match="load it with the model it was trained on"):
        load_trained(_task_model("roberta"), "adapter", tmp_path)
    with pytest.raises(CheckpointError, match="load it with the model it was trained on"):
        load_trained(_task_model("bert", num_hidden_layers=2), "adapter", tmp_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_trained(_task_model("bert", num_labels=3), "adapter", tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_trained(_task_model("bert"), "adapter", tmp_path)


@pytest.mark.slow
def test_adapters_under_ddp_without_find_unused_parameters(tmp_path):
    """Two gloo ranks train Houlsby adapters with DDP's default (find_unused_parameters=False)
    on different batches and end with the same, changed, adapter weights."""
    script = tmp_path / "ddp_adapters.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(Path(__file__).parents[1])]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
                           str(tmp_path / "result.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["same_on_both_ranks"] and result["adapters_changed"]


DDP_SCRIPT = '''
import json, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tiny_models import tiny_config
from transformers import AutoModelForSequenceClassification
from laddertune.app.methods import build_method

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = build_method("adapter", AutoModelForSequenceClassification.from_config(
    tiny_config("bert", pad_token_id=0)))
start = [p.detach().clone() for n, p in model.named_parameters() if "bottleneck_adapter" in n]
ddp = DistributedDataParallel(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
generator = torch.Generator().manual_seed(rank)
for _ in range(3):
    ids = torch.randint(3, 64, (4, 8), generator=generator)
    ddp(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
end = [p.detach() for n, p in model.named_parameters() if "bottleneck_adapter" in n]
flat = torch.cat([p.reshape(-1) for p in end])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
if rank == 0:
    json.dump({"same_on_both_ranks": torch.equal(gathered[0], gathered[1]),
               "adapters_changed": all(not torch.equal(a, b) for a, b in zip(start, end))},
              open(sys.argv[1], "w"))
dist.barrier()  # neither rank tears gloo down while the other still uses it
dist.destroy_process_group()
'''


# ---- IA3 (peft) ---------------------------------------------------------------------------------

def test_ia3_uses_peft_defaults_where_peft_lists_the_family_and_the_structure_elsewhere():
    assert ia3_config(_task_model("bert")).target_modules is None   # peft fills its defaults
    mpnet = ia3_config(_task_model("mpnet"))
    assert sorted(mpnet.target_modules)[:2] == ["mpnet.encoder.layer.0.attention.attn.o",
                                                "mpnet.encoder.layer.0.output.dense"]
    assert mpnet.target_modules == mpnet.feedforward_modules and len(mpnet.target_modules) == 8
    assert ia3_config(_task_model("t5")).modules_to_save == ["classification_head"]


@pytest.mark.parametrize("family", ["bert", "llama", "t5", "mpnet"])
def test_ia3_starts_as_the_pretrained_model_and_trains_only_its_vectors_and_head(family):
    pretrained = _logits(_task_model(family), family)
    model = build_method("ia3", _task_model(family))
    torch.testing.assert_close(_logits(model, family), pretrained, rtol=0, atol=0)
    changed = _changed_parameters(model, family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert any("ia3_l" in n for n in changed)
    assert all("ia3_l" in n or "modules_to_save" in n for n in changed)


@pytest.mark.parametrize("family", ["bert", "t5", "mpnet"])
def test_ia3_save_load_gives_identical_logits(tmp_path, family):
    model = build_method("ia3", _task_model(family))
    _train(model, family, steps=3)
    trained = _logits(model, family)
    save_trained(model, "ia3", tmp_path)
    loaded = load_trained(_task_model(family), "ia3", tmp_path)
    torch.testing.assert_close(_logits(loaded, family), trained, rtol=0, atol=0)


def test_loading_an_ia3_folder_as_lora_names_the_fix(tmp_path):
    save_trained(build_method("ia3", _task_model("bert")), "ia3", tmp_path)
    with pytest.raises(CheckpointError, match="holds a peft IA3 adapter, not lora"):
        load_trained(_task_model("bert"), "lora", tmp_path)


# ---- the other baselines' bookkeeping -----------------------------------------------------------

@pytest.mark.parametrize("family, head", [("t5", {"classification_head"}),
                                          ("distilbert", {"pre_classifier", "classifier"})])
def test_bitfit_trains_biases_and_the_whole_task_head(family, head):
    model = build_method("bitfit", _task_model(family))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable if not n.endswith("bias")} == head


def test_bitfit_keeps_a_pretrained_lm_head_frozen():
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_config("gpt2", tie_word_embeddings=False))
    model = build_method("bitfit", lm, task_type="CAUSAL_LM")
    assert not model.lm_head.weight.requires_grad


def test_loading_a_lora_folder_as_prompt_tuning_names_the_fix(tmp_path):
    save_trained(build_method("lora", _task_model("bert"), lora_rank=2), "lora", tmp_path)
    with pytest.raises(CheckpointError, match="holds a peft LORA adapter, not prompt"):
        load_trained(_task_model("bert"), "prompt", tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        load_trained(_task_model("bert"), "lora", tmp_path / "nowhere")


@pytest.mark.parametrize("method, batch, given, expected", [
    ("lst", 16, None, 16),      # its eval holds every layer's state: no more than a step's batch
    ("lst", 128, None, 64),
    ("probe", 8, None, 64),     # fitted on pooled features: one state an example
    ("lora", 16, None, 64),     # its eval keeps one layer's working set: the usual 64
    ("full", 16, None, 64),
    ("lst", 16, 32, 32),        # --eval-batch-size wins
])
def test_the_eval_batch_defaults_to_the_training_batch_for_state_readers(tmp_path, method, batch,
                                                                         given, expected):
    from laddertune.app.options import TrainConfig
    cfg = TrainConfig(model="x", train=str(tmp_path / "t.csv"), method=method, batch_size=batch,
                      eval_batch_size=given)
    assert cfg.eval_batch_size == expected
