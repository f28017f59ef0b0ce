"""LST keeps the backbone out of autograd: what a training step saves for backward."""

import torch
from tiny_models import tiny_inputs
from transformers import AutoConfig, AutoModelForSequenceClassification

from laddertune import LSTConfig, get_lst_model
from laddertune.app.memory import SavedTensorMeter, training_memory_account

WIDTH, FFN, LENGTH = 128, 512, 32


def make_backbone():
    config = AutoConfig.for_model("bert", hidden_size=WIDTH, num_hidden_layers=8,
                                  num_attention_heads=4, intermediate_size=FFN, vocab_size=64,
                                  num_labels=3)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def test_only_ladder_inputs_of_backbone_width_are_saved():
    backbone = make_backbone()
    model = get_lst_model(backbone, LSTConfig(num_labels=3))
    inputs = tiny_inputs("bert", batch=8, length=LENGTH)
    kept = model.kept_layers[0]
    assert kept == [1, 2, 3, 5, 6, 7]  # the paper's layer dropping: 0 and 4 feed no ladder

    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**inputs, labels=torch.zeros(8, dtype=torch.long)).loss
    loss.backward()
    backbone_storages = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    activations = [t for t in saved if t.untyped_storage().data_ptr() not in backbone_storages]

    # Nothing of the backbone's feed-forward width, and no backbone weight, is kept.
    assert not [t for t in activations if t.dim() and t.shape[-1] == FFN]
    assert not [t for t in saved if t.untyped_storage().data_ptr() in backbone_storages]
    # Of backbone width (and token count), only the ladders' inputs: the embeddings and the
    # outputs of the kept layers, which exist anyway because the side network reads them.
    wide = [t for t in activations
            if t.dim() >= 2 and t.shape[-1] == WIDTH and t.numel() == 8 * LENGTH * WIDTH]
    assert len(wide) == 1 + len(kept)
    assert not any(t.requires_grad for t in wide)  # computed without autograd


def test_lst_saves_under_15_percent_of_full_fine_tuning():
    inputs = tiny_inputs("bert", batch=8, length=LENGTH)
    labels = torch.tensor([0, 1, 2, 1, 0, 1, 2, 1])
    full = make_backbone()
    full_account = training_memory_account(full, lambda: full(**inputs, labels=labels).loss)
    lst = get_lst_model(make_backbone(), LSTConfig(num_labels=3))
    lst_account = training_memory_account(lst, lambda: lst(**inputs, labels=labels).loss)
    ratio = lst_account["saved_bytes"] / full_account["saved_bytes"]
    assert ratio < 0.15, ratio
    # and far fewer gradient and optimizer bytes: only the side network trains
    assert lst_account["gradient_bytes"] < 0.05 * full_account["gradient_bytes"]


def test_meter_counts_each_storage_once():
    weight = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4)
    with SavedTensorMeter() as meter:
        (x @ weight).sum() + (x @ weight).sum()
    # x is saved twice and counted once; weight is not saved, since x needs no gradient
    assert meter.saved_bytes == x.numel() * 4


def test_t5_side_attention_keeps_no_dropout_mask():
    """T5 has one dropout_rate for hidden states and attention probabilities alike."""
    from tiny_models import tiny_backbone

    model = get_lst_model(tiny_backbone("t5", task="lm"),
                          LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=4, dropout=0.1))
    attention = [m for m in model.side_model.modules() if type(m).__name__ == "T5Attention"]
    assert attention and all(m.dropout == 0.0 for m in attention)
    assert model.side_model.config.dropout_rate == 0.1   # hidden-state dropout stays


def test_the_whole_process_peak_survives_a_peak_reset():
    import sys

    import pytest

    from laddertune.app.memory import peak_memory_mb, peak_rss_mb, reset_peak_rss
    if not sys.platform.startswith("linux") or not reset_peak_rss():
        pytest.skip("resetting the peak needs Linux's /proc/self/clear_refs")
    block = torch.ones(64 * 2**20 // 4)      # 64 MiB resident (mmapped), then returned
    held_peak = peak_memory_mb()
    del block
    reset_peak_rss()
    # the reset lowers the kernel's figure by the freed block; the whole process's peak stays
    # (the kernel batches its RSS counters: they agree to within a fraction of a MiB)
    assert peak_rss_mb() < held_peak - 32
    assert peak_memory_mb() >= held_peak - 1


def test_library_pages_are_counted_on_linux():
    import sys

    from laddertune.app.memory import current_rss_mb, library_rss_mb
    pages = library_rss_mb()
    if not sys.platform.startswith("linux"):
        assert pages is None
        return
    assert 0 < pages < current_rss_mb()       # torch's own .so files are mapped and resident
