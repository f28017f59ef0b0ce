"""A frozen backbone stored in bf16 or int8 (laddertune.quant): what is stored, what it computes
in, that it is converted one unit at a time, and what a run records and refuses."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_text_model, tiny_backbone, tiny_inputs, topic_rows, write_csv

from laddertune import LSTConfig, LSTModel, get_lst_model, quant
from laddertune.app.cli import main
from laddertune.errors import LSTConfigError, LSTWarning

pytest.importorskip("torchao")

LABELS = torch.tensor([0, 1, 0, 1])


def _weight_bytes(module) -> int:
    total = 0
    for param in {id(p): p for p in module.parameters()}.values():
        if quant._is_int8(param):
            total += param.qdata.numel() + param.scale.numel() * param.scale.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def _model(dtype: str, fast_bf16: bool = False, family: str = "bert", task: str = "bare",
           **config):
    with mock.patch.object(quant, "fast_bf16", lambda device: fast_bf16):
        return get_lst_model(tiny_backbone(family, task=task),
                             LSTConfig(backbone_dtype=dtype, **config))


@pytest.mark.parametrize("dtype, fast, compute", [("bfloat16", True, "bfloat16"),
                                                  ("bfloat16", False, "float32"),
                                                  ("int8", False, "float32")])
def test_reduced_backbone_stores_less_and_gives_nearly_the_fp32_output(dtype, fast, compute):
    reference = _model("float32").eval()
    model = _model(dtype, fast).eval()
    assert model.backbone_compute_dtype == compute
    assert quant.stored_dtype(model.backbone) == dtype
    assert _weight_bytes(model.backbone) < 0.6 * _weight_bytes(reference.backbone)
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the side stays fp32
    out, ref = model(**tiny_inputs("bert"), labels=LABELS), reference(**tiny_inputs("bert"))
    # bf16 keeps 8 mantissa bits and int8 one scale per row: a few tenths of a percent here
    torch.testing.assert_close(out.logits, ref.logits, rtol=0.05, atol=0.02)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_int8_quantises_linear_layers_and_embeddings_but_not_the_lm_head():
    model = _model("int8", family="llama", task="lm", task_type="CAUSAL_LM", side_init="random")
    backbone = model.backbone
    assert not quant._is_int8(backbone.get_output_embeddings().weight)
    assert isinstance(backbone.get_input_embeddings(), quant.Int8Embedding)   # untied
    assert quant._is_int8(backbone.model.layers[0].mlp.up_proj.weight)
    with mock.patch.object(quant, "fast_bf16", lambda device: False):
        bare = get_lst_model(tiny_backbone("llama", tie_word_embeddings=True),
                             LSTConfig(backbone_dtype="int8", task_type="CAUSAL_LM",
                                       side_init="random")).backbone
    assert type(bare.get_input_embeddings()) is torch.nn.Embedding   # the bare model's head
    inputs = tiny_inputs("llama")
    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)


def test_int8_embeddings_keep_int8_rows_and_dequantise_only_the_rows_looked_up():
    reference = tiny_backbone("bert").embeddings.word_embeddings
    model = _model("int8")
    embeddings = model.backbone.embeddings
    word = embeddings.word_embeddings
    assert isinstance(word, quant.Int8Embedding)
    assert isinstance(embeddings.position_embeddings, quant.Int8Embedding)
    assert word.qdata.dtype == torch.int8 and word.scale.shape == (word.num_embeddings, 1)
    ids = torch.tensor([[3, 5, 5, 60]])
    torch.testing.assert_close(word(ids), word.dequantize()[ids], rtol=0, atol=0)
    # absmax / 127 per row: each weight within half a step of its original
    error = (word.dequantize() - reference.weight).abs()
    assert bool((error <= word.scale / 2 + 1e-7).all())
    with mock.patch.object(quant.Int8Embedding, "dequantize", side_effect=AssertionError):
        word(ids)                                        # a lookup never builds the table


def test_bf16_upcast_keeps_one_layer_in_fp32_at_a_time():
    model = _model("bfloat16", fast_bf16=False).eval()
    blocks = model._backbone_blocks()
    seen = []

    def count_fp32(module, args, output):
        seen.append(sum(p.numel() for p in model.backbone.parameters()
                        if p.dtype == torch.float32))

    # prepended: runs before the hook that restores the bf16 weights
    handles = [block.register_forward_hook(count_fp32, prepend=True) for block in blocks]
    model(**tiny_inputs("bert"))
    for handle in handles:
        handle.remove()
    largest_block = max(sum(p.numel() for p in block.parameters()) for block in blocks)
    assert len(seen) == len(blocks) and max(seen) == largest_block
    assert all(p.dtype == torch.bfloat16 for p in model.backbone.parameters())


def test_conversion_goes_one_unit_at_a_time_and_never_holds_two_copies():
    backbone = tiny_backbone("bert")
    fp32_bytes = _weight_bytes(backbone)
    live, converted = [], []
    convert_unit = quant.convert_unit

    def recording(unit, *args, **kwargs):
        live.append(_weight_bytes(backbone))
        convert_unit(unit, *args, **kwargs)
        converted.append(unit)

    with mock.patch.object(quant, "convert_unit", recording):
        model = get_lst_model(backbone, LSTConfig(backbone_dtype="int8"))
    assert converted[:len(model._backbone_blocks())] == model._backbone_blocks()
    assert max(live) <= fp32_bytes and live == sorted(live, reverse=True)
    assert len(converted) > len(model._backbone_blocks())     # embeddings and pooler too


def test_int8_lets_go_of_the_checkpoints_memory_map(tmp_path):
    """from_pretrained maps model.safetensors; the norms and biases int8 leaves in float32 were
    views into that map, which kept the whole float32 file resident after conversion (MPNet-
    base: 418 MiB). They are copied out, so the map is released."""
    import gc

    from transformers import AutoModel
    tiny_backbone("bert").save_pretrained(tmp_path)
    backbone = AutoModel.from_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")

    def mapped() -> bool:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith(file) for line in maps)
    norm = backbone.encoder.layer[0].output.LayerNorm.weight
    before, values = norm.untyped_storage().data_ptr(), norm.detach().clone()
    was_mapped = mapped()
    model = get_lst_model(backbone, LSTConfig(backbone_dtype="int8"))
    gc.collect()
    norm = model.backbone.encoder.layer[0].output.LayerNorm.weight
    assert norm.untyped_storage().data_ptr() != before and torch.equal(norm, values)
    if was_mapped:       # transformers mapped the file: nothing holds the map any more
        assert not mapped()


def test_pruning_reads_the_original_weights_and_the_fingerprint_is_the_originals():
    reference = _model("float32")
    model = _model("int8")
    for (name, ref), (_, side) in zip(reference.side_model.named_parameters(),
                                      model.side_model.named_parameters()):
        torch.testing.assert_close(side, ref, rtol=0, atol=0, msg=name)  # same weights, copied
    assert model.fingerprint() == reference.fingerprint()


def test_backbone_cache_is_keyed_by_both_dtypes():
    from laddertune.cache import cache_key
    keys = [cache_key(_model(dtype, fast), "data", "float16")
            for dtype, fast in (("float32", False), ("bfloat16", False), ("bfloat16", True),
                                ("int8", False))]
    assert "backbone_dtypes" not in keys[0]       # float32 caches keep their old keys
    assert [key.get("backbone_dtypes") for key in keys[1:]] == [
        ["bfloat16", "float32"], ["bfloat16", "bfloat16"], ["int8", "float32"]]
    assert len({json.dumps(key, sort_keys=True) for key in keys}) == 4


def test_nf4_on_cpu_is_one_line_naming_int8():
    with pytest.raises(LSTConfigError, match="use int8"):
        get_lst_model(tiny_backbone("bert"), LSTConfig(backbone_dtype="nf4"))


def test_a_converted_backbone_is_not_converted_again_to_another_dtype():
    model = _model("int8")
    with pytest.raises(LSTConfigError, match="already stored in int8"):
        get_lst_model(model.backbone, LSTConfig(backbone_dtype="bfloat16"))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_a_backbone_converted_here_is_not_pruned_again(dtype):
    """A sweep builds each configuration on one shared backbone: after the first converts it,
    the originals pruning reads are gone, and a later pruned build says so."""
    backbone = _model(dtype).backbone
    with pytest.raises(LSTConfigError, match="--lst-side-init random"):
        _ = get_lst_model(backbone, LSTConfig(backbone_dtype=dtype))
    with mock.patch.object(quant, "fast_bf16", lambda device: False):
        again = get_lst_model(backbone, LSTConfig(backbone_dtype=dtype, side_init="random"))
    assert quant.stored_dtype(again.backbone) == dtype


def test_side_network_on_a_backbone_in_another_dtype_warns_once_naming_its_own(tmp_path):
    trained = _model("bfloat16", fast_bf16=False)
    trained.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "lst_config.json").read_text())
    assert (saved["backbone_dtype"], saved["backbone_compute_dtype"]) == ("bfloat16", "float32")
    with pytest.warns(LSTWarning, match="trained on a bfloat16 backbone") as caught:
        LSTModel.from_pretrained(tiny_backbone("bert"), tmp_path)    # fp32, and unchanged
    assert len([w for w in caught if issubclass(w.category, LSTWarning)]) == 1
    with warnings.catch_warnings(), mock.patch.object(quant, "fast_bf16", lambda device: False):
        warnings.simplefilter("error", LSTWarning)
        loaded = LSTModel.from_pretrained(trained.backbone, tmp_path)   # its own: no warning
    assert loaded.config.backbone_dtype == "bfloat16"


# ---- through the command line ---------------------------------------------------------------

FLAGS = ["--epochs", "1", "--batch-size", "8", "--reduction-factor", "2", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    save_tiny_text_model(root / "tiny")
    write_csv(root / "train.csv", topic_rows(24, seed=0))
    write_csv(root / "eval.csv", topic_rows(12, seed=1))
    return root


def _train(files, output, *extra):
    return main(["train", "--model", str(files / "tiny"), "--train", str(files / "train.csv"),
                 "--eval", str(files / "eval.csv"), "--output", str(output), *FLAGS, *extra])


def _one_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_train_records_both_dtypes_in_run_json_and_the_side_checkpoint(files, tmp_path):
    with mock.patch.object(quant, "fast_bf16", lambda device: False):
        assert _train(files, tmp_path / "run", "--backbone-dtype", "bfloat16") == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["backbone_dtype"], run["backbone_compute_dtype"]) == ("bfloat16", "float32")
    saved = json.loads(next((tmp_path / "run").rglob("lst_config.json")).read_text())
    assert (saved["backbone_dtype"], saved["backbone_compute_dtype"]) == ("bfloat16", "float32")


def test_resume_on_a_machine_computing_in_another_dtype_is_refused(files, tmp_path, capsys):
    with mock.patch.object(quant, "fast_bf16", lambda device: False):
        assert _train(files, tmp_path / "run", "--backbone-dtype", "bfloat16") == 0
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    (run / "metrics.json").unlink(missing_ok=True)   # look unfinished, so --resume applies
    with mock.patch.object(quant, "fast_bf16", lambda device: True):
        code = _train(files, run, "--backbone-dtype", "bfloat16", "--resume")
    assert code == 2
    line = _one_error(capsys)
    assert "float32" in line and "bfloat16" in line, line
    assert json.loads((run / "run.json").read_text()) == record


def test_a_pruned_sweep_on_a_reduced_backbone_trains_each_configuration_as_alone(files,
                                                                                tmp_path):
    """Every configuration prunes from the original weights, then the backbone they share is
    converted once: each equals the same configuration trained on its own."""
    common = ["--model", str(files / "tiny"), "--train", str(files / "train.csv"), "--eval",
              str(files / "eval.csv"), *FLAGS, "--backbone-dtype", "int8",
              "--lst-dropout", "0"]   # configurations draw dropout masks from one generator
    assert main(["sweep", *common, "--output", str(tmp_path / "sweep"),
                 "--grid", "lr=1e-3,3e-3"]) == 0
    assert main(["train", *common, "--output", str(tmp_path / "alone"), "--lr", "3e-3"]) == 0
    ours, theirs = (tmp_path / "sweep" / "lr-0.003", tmp_path / "alone")
    for name in ("backbone_dtype", "backbone_compute_dtype", "backbone_fingerprint"):
        assert _run_json(ours)[name] == _run_json(theirs)[name], name
    mine = load_file(str(ours / "lst_model.safetensors"))
    alone = load_file(str(theirs / "lst_model.safetensors"))
    assert mine.keys() == alone.keys()
    for name in mine:   # float rounding apart: the states are computed once, not per model
        torch.testing.assert_close(mine[name], alone[name], rtol=1e-4, atol=1e-5)


def _run_json(run):
    return json.loads((run / "run.json").read_text())


@pytest.mark.parametrize("extra, words", [
    (["--backbone-dtype", "nf4"], "use --backbone-dtype int8"),
    (["--backbone-dtype", "int8", "--method", "full"], "drop --backbone-dtype"),
])
def test_bad_backbone_dtype_is_one_line(files, tmp_path, capsys, extra, words):
    assert _train(files, tmp_path / "run", *extra) == 2
    assert words in _one_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("capability, fast", [("DEFAULT", False), ("AVX2", False),
                                              ("AVX512", True)])
def test_a_cpu_computes_in_bf16_only_where_aten_dispatches_avx512(capability, fast):
    """oneDNN may report bf16 support while ATen runs lower kernels (ATEN_CPU_CAPABILITY):
    ATen's bf16 attention then refuses to run, so the backbone upcasts instead."""
    with mock.patch.object(torch.backends.cpu, "get_cpu_capability", lambda: capability), \
            mock.patch.object(torch.backends.mkldnn, "is_available", lambda: True), \
            mock.patch.object(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                              create=True):
        assert quant.fast_bf16("cpu") is fast
        assert quant.compute_dtype("bfloat16", "cpu") == ("bfloat16" if fast else "float32")


# ---- converting as the backbone loads ---------------------------------------------------------

def test_loading_converts_each_unit_as_it_arrives_with_one_unit_in_fp32(tmp_path):
    from laddertune.app.aliases import ModelSource, backbone_signature, load_backbone
    from laddertune.checkpoint import check_fingerprint
    save_tiny_text_model(tmp_path / "model", hidden_size=64, intermediate_size=256)
    source = ModelSource("tiny", str(tmp_path / "model"))
    reference = load_backbone(source, 0, "bare")
    largest_unit = max(sum(p.numel() * 4 for p in _loaded_matrices(unit))
                       for unit in quant.conversion_units(reference, _blocks(reference)))
    live_fp32, loading = [], {}
    convert_unit, conversion_units = quant.convert_unit, quant.conversion_units

    def units(model, blocks):
        loading["model"] = model        # the skeleton being filled
        return conversion_units(model, blocks)

    def recording(unit, *args, **kwargs):
        live_fp32.append(sum(p.numel() * 4 for p in _loaded_matrices(loading["model"])))
        convert_unit(unit, *args, **kwargs)

    with mock.patch.object(quant, "convert_unit", recording), \
            mock.patch.object(quant, "conversion_units", units):
        backbone = load_backbone(source, 0, "bare", backbone_dtype="int8")
    assert quant.stored_dtype(backbone) == "int8"
    assert len(live_fp32) == len(quant.conversion_units(backbone, _blocks(backbone)))
    # when a unit converts, the only fp32 matrices in memory are its own
    assert 0 < max(live_fp32) <= largest_unit
    check_fingerprint(backbone_signature(reference), backbone_signature(backbone), "test")
    inputs = {"input_ids": torch.randint(0, backbone.config.vocab_size, (2, 8),
                                         generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        out = backbone(**inputs).last_hidden_state
        ref = reference(**inputs).last_hidden_state
    # int8 weights, one scale per row: about 1% of the states' size on this model
    assert (out - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("model_type", ["bert", "mpnet", "llama"])
@pytest.mark.parametrize("storage", ["int8", "bfloat16"])
def test_a_classifier_backbone_converts_as_it_loads_and_equals_the_late_conversion(
        tmp_path, model_type, storage):
    """LoRA on a reduced backbone loads its classifier model streamed: each unit's fp32
    matrices are the only ones alive when it converts, the fresh head is drawn as
    from_pretrained draws it and stays fp32, and the model is the one a float32 load
    converted afterwards would be."""
    from laddertune.app import aliases
    from laddertune.app.aliases import ModelSource, backbone_signature, load_backbone
    save_tiny_text_model(tmp_path / "model", model_type, hidden_size=64, intermediate_size=256)
    source = ModelSource("tiny", str(tmp_path / "model"))
    live_fp32, loading = [], {}
    convert_unit, conversion_units = quant.convert_unit, quant.conversion_units

    def units(model, blocks):
        loading["base"] = model
        return conversion_units(model, blocks)

    def recording(unit, *args, **kwargs):
        live_fp32.append(sum(p.numel() * 4 for p in _loaded_matrices(loading["base"])))
        convert_unit(unit, *args, **kwargs)

    torch.manual_seed(0)
    with mock.patch.object(quant, "convert_unit", recording), \
            mock.patch.object(quant, "conversion_units", units):
        streamed = load_backbone(source, 0, "classifier", 3, backbone_dtype=storage)
    with mock.patch.object(aliases, "load_converted", lambda *a, **k: None):
        torch.manual_seed(0)
        late = load_backbone(source, 0, "classifier", 3, backbone_dtype=storage)
    largest_unit = max(sum(p.numel() * 4 for p in unit.parameters() if p.dim() >= 2)
                       for unit in conversion_units(late.base_model, _blocks_of(late)))
    assert live_fp32 and max(live_fp32) <= largest_unit
    assert quant.stored_dtype(streamed.base_model) == storage
    assert backbone_signature(streamed) == backbone_signature(late)
    assert [n for n, p in streamed.named_parameters()] == [n for n, p in late.named_parameters()]
    for (name, ours), (_, theirs) in zip(streamed.named_parameters(), late.named_parameters()):
        assert ours.dtype == theirs.dtype, name
        dense = quant.dense(ours, torch.float32), quant.dense(theirs, torch.float32)
        assert torch.equal(*dense), name
    head = [p for n, p in streamed.named_parameters()
            if not n.startswith(streamed.base_model_prefix)]
    assert head and all(p.dtype == torch.float32 for p in head)
    ids = torch.randint(4, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = streamed(input_ids=ids).logits
        torch.testing.assert_close(logits, late(input_ids=ids).logits)
    assert logits.dtype == torch.float32


def _blocks_of(task_model):
    from laddertune import backbones as bb
    base = task_model.base_model
    family = bb.detect_family(base)
    return [block for stack in bb.backbone_stacks(base, family)
            for block in bb.get_path(stack, family.layers)]


def test_the_streamed_fingerprint_is_the_float32_one(tmp_path):
    from laddertune.app.aliases import ModelSource, backbone_signature, load_backbone
    save_tiny_text_model(tmp_path / "model")
    source = ModelSource("tiny", str(tmp_path / "model"))
    reference = backbone_signature(load_backbone(source, 0, "bare"))
    streamed = backbone_signature(load_backbone(source, 0, "bare", backbone_dtype="bfloat16"))
    assert streamed["architecture_sha256"] == reference["architecture_sha256"]
    assert streamed["weight_samples"] == reference["weight_samples"]       # the same numbers
    torch.testing.assert_close(streamed["weight_abs_means"], reference["weight_abs_means"],
                               rtol=1e-12, atol=0)                        # summed in chunks


def test_a_random_side_init_run_loads_converted_and_keeps_the_fp32_fingerprint(files, tmp_path):
    from laddertune.checkpoint import check_fingerprint
    loads = []
    load_converted = __import__("laddertune.app.aliases", fromlist=["x"]).load_converted

    def counting(*args, **kwargs):
        loads.append(args[1])
        return load_converted(*args, **kwargs)

    with mock.patch("laddertune.app.aliases.load_converted", counting):
        assert _train(files, tmp_path / "int8", "--backbone-dtype", "int8",
                      "--lst-side-init", "random") == 0
        assert _train(files, tmp_path / "pruned", "--backbone-dtype", "int8") == 0
    assert loads == ["int8"]            # pruning reads the float32 weights: converted later
    assert _train(files, tmp_path / "fp32") == 0
    fingerprints = [json.loads((tmp_path / run / "run.json").read_text())["backbone_fingerprint"]
                    for run in ("int8", "pruned", "fp32")]
    for fingerprint in fingerprints[:2]:
        check_fingerprint(fingerprints[2], fingerprint, "run")


def _blocks(backbone):
    return list(backbone.encoder.layer)


def _loaded_matrices(module):
    return [p for p in module.parameters() if p.dtype == torch.float32 and not p.is_meta
            and p.dim() >= 2 and min(p.shape) > 1 and not quant._is_int8(p)]   # not scales


def test_eval_of_an_int8_run_meets_the_int8_backbone_it_trained_on(files, tmp_path):
    """`laddertune eval` rebuilds the backbone at the run's dtype: its scores are training's
    own eval, with no warning about another dtype (at float32 it would warn and differ)."""
    from laddertune.app.inference import load_run
    run = tmp_path / "run"
    assert _train(files, run, "--backbone-dtype", "int8") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no "trained with int8" warning
        model, _, _ = load_run(run, device="cpu")
    assert quant.stored_dtype(model.backbone) == "int8"
    trained = json.loads((run / "metrics.json").read_text())["eval"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", "--checkpoint", str(run), "--data",
                     str(files / "eval.csv")]) == 0
    again = json.loads(out.getvalue())
    assert again["accuracy"] == trained["accuracy"]
    assert again["loss"] == pytest.approx(trained["loss"], rel=1e-4)   # batches may differ
