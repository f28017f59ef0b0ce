"""transformers.Trainer trains an LSTModel: checkpoints hold the side network, resume exactly."""

import torch
from safetensors.torch import load_file
from tiny_models import tiny_backbone
from transformers import Trainer, TrainingArguments

from laddertune import LSTConfig, get_lst_model


class _Pairs(torch.utils.data.Dataset):
    """32 random token rows; the label says whether the first token is in the upper half."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 64, (32, 8), generator=generator)
        self.labels = (self.ids[:, 0] >= 32).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i]}


def _trainer(output_dir, model_seed=0, max_steps=6):
    backbone = tiny_backbone("bert")          # the same backbone every time (seed 0)
    torch.manual_seed(model_seed)             # the side network's initialisation
    model = get_lst_model(backbone, LSTConfig(num_labels=2, reduction_factor=2))
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8,
                             max_steps=max_steps, save_steps=3, learning_rate=1e-2, seed=0,
                             report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=100)
    return Trainer(model=model, args=args, train_dataset=_Pairs())


def test_trainer_checkpoints_hold_only_side_weights_and_resume_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    backbone_before = {k: v.clone() for k, v in full.model.backbone.state_dict().items()}
    side_before = {k: v.clone() for k, v in full.model.state_dict().items()}
    full.train()

    saved = load_file(str(tmp_path / "full" / "checkpoint-3" / "model.safetensors"))
    assert set(saved) == set(side_before)                        # side network only
    assert not any(k.startswith("backbone") for k in saved)
    assert sum(v.numel() for v in saved.values()) == full.model.get_nb_trainable_parameters()[0]
    for key, value in full.model.backbone.state_dict().items():  # the backbone never moved
        torch.testing.assert_close(value, backbone_before[key], rtol=0, atol=0)
    assert any(not torch.equal(v, side_before[k]) for k, v in full.model.state_dict().items())

    # Another initialisation: only loading checkpoint-3 can make it end where `full` ended.
    resumed = _trainer(tmp_path / "full", model_seed=1)
    assert any(not torch.equal(v, side_before[k]) for k, v in resumed.model.state_dict().items())
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
