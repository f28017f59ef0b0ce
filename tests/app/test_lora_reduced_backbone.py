"""LoRA on a reduced frozen backbone (--method lora --backbone-dtype bfloat16|int8|nf4): the fair
baseline for LST on the same backbone (QLoRA at nf4). Trained, evaluated and predicted through the
in-process CLI on the tiny BERT; the CUDA-only nf4 path is skipped without a GPU."""

from __future__ import annotations

import csv
import json
import warnings
from unittest import mock

import pytest
import torch
from cli_helpers import one_line_error, train_cli
from tiny_models import tiny_config, tiny_inputs

from laddertune import quant
from laddertune.app.cli import main
from laddertune.app.inference import load_run

pytest.importorskip("torchao")

FLAGS = ["--method", "lora", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
         "--no-progress"]

# (--backbone-dtype, whether the CPU is taken to have fast bf16 kernels): bf16 computes in bf16
# with them and upcasts one layer at a time to fp32 without (both are trained through)
SETTINGS = {"float32": ("float32", False), "int8": ("int8", False),
            "bf16-upcast": ("bfloat16", False), "bf16-compute": ("bfloat16", True)}


def _fast_bf16(fast: bool):
    return mock.patch.object(quant, "fast_bf16", lambda device: fast)


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    """One finished LoRA run per SETTINGS entry, by its name."""
    root = tmp_path_factory.mktemp("lora-runs")
    for name, (dtype, fast) in SETTINGS.items():
        with _fast_bf16(fast):
            assert train_cli(files, root / name, *FLAGS, "--backbone-dtype", dtype) == 0
    return {name: root / name for name in SETTINGS}


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("name", ["int8", "bf16-upcast", "bf16-compute"])
def test_eval_and_predict_rebuild_the_backbone_training_evaluated_on(runs, files, capsys, name):
    run, fast = runs[name], SETTINGS[name][1]
    capsys.readouterr()
    with _fast_bf16(fast):
        assert main(["eval", "--checkpoint", str(run), "--data", str(files / "eval.csv"),
                     "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        predictions = run / "predictions.csv"
        assert main(["predict", "--checkpoint", str(run), "--data", str(files / "eval.csv"),
                     "--device", "cpu", "--output", str(predictions)]) == 0
    scores, trained = json.loads(out[out.index("{"):]), _metrics(run)["eval"]
    # the same backbone, weights and batches: only the eval batch size may differ
    torch.testing.assert_close(scores["loss"], trained["loss"], rtol=1e-3, atol=1e-4)
    assert scores["accuracy"] == pytest.approx(trained["accuracy"])
    with open(predictions, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == trained["examples"]


@pytest.mark.parametrize("name, stored", [("int8", "int8"), ("bf16-upcast", "bfloat16")])
def test_the_backbone_is_stored_reduced_and_lora_and_the_head_stay_fp32(runs, name, stored):
    run = runs[name]
    record = json.loads((run / "run.json").read_text())
    assert (record["backbone_dtype"], record["backbone_compute_dtype"]) == (stored, "float32")
    saved = json.loads((run / "backbone_dtype.json").read_text())
    assert saved == {"backbone_dtype": stored, "backbone_compute_dtype": "float32"}
    with _fast_bf16(False):
        model, _, _ = load_run(run, device="cpu")
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    weight = query.base_layer.weight
    if stored == "int8":
        assert type(weight).__name__ == "Int8Tensor" and type(query).__name__ == "TorchaoLoraLinear"
    else:
        assert weight.dtype == torch.bfloat16
    assert query.lora_A["default"].weight.dtype == torch.float32
    assert query.lora_B["default"].weight.dtype == torch.float32
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert head.weight.dtype == torch.float32 and type(head.weight) is torch.nn.Parameter
    # the folder holds the adapter and the head, never the backbone's weights
    from safetensors.torch import load_file
    names = load_file(run / "adapter_model.safetensors")
    assert names and all("lora_" in n or "classifier" in n for n in names), sorted(names)


def test_a_float32_lora_folder_records_no_backbone_dtype(runs):
    assert not (runs["float32"] / "backbone_dtype.json").exists()


@pytest.mark.parametrize("name", ["int8", "bf16-upcast"])
def test_the_memory_account_holds_fewer_frozen_bytes_than_fp32(runs, name):
    frozen = {key: _metrics(runs[key])["memory_account"]["frozen_weight_bytes"]
              for key in ("float32", name)}
    assert frozen[name] < 0.75 * frozen["float32"], frozen


def test_resume_rebuilds_the_reduced_backbone_and_keeps_its_dtype(runs, files, tmp_path,
                                                                    capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["int8"], run)
    (run / "metrics.json").unlink()   # look unfinished, so --resume applies
    assert train_cli(files, run, *FLAGS, "--backbone-dtype", "bfloat16", "--resume") == 2
    assert "--backbone-dtype 'bfloat16' differs from the run's 'int8'" in one_line_error(capsys)
    assert train_cli(files, run, *FLAGS, "--resume") == 0    # the run's own int8
    assert json.loads((run / "run.json").read_text())["backbone_dtype"] == "int8"
    torch.testing.assert_close(_metrics(run)["eval"]["loss"],
                               _metrics(runs["int8"])["eval"]["loss"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("extra, words", [
    (["--method", "full", "--backbone-dtype", "int8"], "drop --backbone-dtype"),
    (["--method", "adapter", "--backbone-dtype", "int8"], "drop --backbone-dtype"),
    (["--method", "lora", "--backbone-dtype", "nf4"], "use --backbone-dtype int8"),
])
def test_methods_that_cannot_use_a_reduced_backbone_are_refused_in_one_line(
        files, tmp_path, capsys, extra, words):
    if "nf4" in extra and torch.cuda.is_available():
        pytest.skip("nf4 runs where CUDA is")
    assert train_cli(files, tmp_path / "run", "--device", "cpu", *extra) == 2
    assert words in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_bf16_upcast_backward_gives_the_gradients_of_the_rounded_fp32_model():
    """LoRA trains through a bf16 backbone upcast one layer at a time: backward must upcast
    the stored weights again (autograd kept the weight, bf16 again by then), and give the
    gradients of an fp32 model holding the same bf16-rounded weights and the same LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    def lora_model(convert: bool):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=2))
        model.eval()   # no dropout: the two models must see the same arithmetic
        if convert:
            with _fast_bf16(False):
                assert quant.convert_task_model(model, "bfloat16", "cpu") == "float32"
        else:
            for param in model.base_model.parameters():
                param.data = param.data.bfloat16().float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=4, init_lora_weights=False,
                              target_modules="all-linear")
            return get_peft_model(model, lora)

    reduced, rounded = lora_model(True), lora_model(False)
    # peft built the reduced model's LoRA through the bf16 base dtype: give both the same
    trained = {n: p for n, p in reduced.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trained.values())
    rounded.load_state_dict({n: p.detach() for n, p in trained.items()}, strict=False)
    grads = []
    for model in (reduced, rounded):
        model(**tiny_inputs("bert"), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == trained.keys() == grads[1].keys()
    for name in trained:   # the same fp32 arithmetic on the same values
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nf4 (QLoRA) needs a CUDA GPU")
def test_qlora_at_nf4_trains_evaluates_and_keeps_its_layers_in_4_bit(files, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    run = tmp_path / "run"
    flags = [f if f != "cpu" else "cuda" for f in FLAGS]
    assert train_cli(files, run, *flags, "--backbone-dtype", "nf4") == 0
    record = json.loads((run / "run.json").read_text())
    assert (record["backbone_dtype"], record["backbone_compute_dtype"]) == ("nf4", "bfloat16")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(files / "eval.csv"),
                 "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    torch.testing.assert_close(json.loads(out[out.index("{"):])["loss"],
                               _metrics(run)["eval"]["loss"], rtol=1e-2, atol=1e-3)
    model, _, _ = load_run(run, device="cuda")
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert type(query.base_layer.weight).__name__ == "Params4bit"
    assert query.lora_A["default"].weight.dtype == torch.float32


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_generate_task_lora_on_an_int8_backbone_trains_and_evaluates(tmp_path, capsys, family):
    from tiny_models import save_tiny_lm, symbol_pairs, write_csv
    extra = {"d_model": 64, "d_kv": 16} if family == "t5" else {}
    save_tiny_lm(tmp_path / family, family, **extra)
    write_csv(tmp_path / "train.csv", symbol_pairs(16, seed=0))
    run = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / family), "--task", "generate", "--train",
                 str(tmp_path / "train.csv"), "--output", str(run), *FLAGS,
                 "--backbone-dtype", "int8", "--max-new-tokens", "4"]) == 0
    assert json.loads((run / "run.json").read_text())["backbone_dtype"] == "int8"
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "train.csv"),
                 "--device", "cpu"]) == 0
    model, _, _ = load_run(run, device="cpu")
    assert quant.stored_dtype(model.base_model) == "int8"
    lm_head = model.base_model.model.get_output_embeddings()
    assert type(lm_head.weight) is torch.nn.Parameter   # kept as loaded, as for LST


def test_top_layers_lora_on_an_int8_backbone(files, tmp_path):
    run = tmp_path / "run"
    assert train_cli(files, run, *FLAGS, "--top-layers", "1", "--backbone-dtype", "int8") == 0
    model, _, _ = load_run(run, device="cpu")
    layers = model.base_model.model.bert.encoder.layer
    assert type(layers[-1].attention.self.query).__name__ == "TorchaoLoraLinear"
    bottom = layers[0].attention.self.query     # below the top layer: no LoRA, still int8
    assert type(bottom) is torch.nn.Linear and type(bottom.weight).__name__ == "Int8Tensor"


def test_the_adapter_on_a_backbone_in_another_dtype_warns_naming_its_own(runs):
    from transformers import AutoModelForSequenceClassification

    from laddertune.app.methods import load_trained
    from laddertune.errors import LSTWarning
    backbone = AutoModelForSequenceClassification.from_pretrained(
        json.loads((runs["int8"] / "run.json").read_text())["model_path"], num_labels=3)
    with pytest.warns(LSTWarning, match="stored in int8; this one is stored in float32"):
        load_trained(backbone, "lora", runs["int8"])
