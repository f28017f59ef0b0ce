"""The step profiler times the training loop's own step, for LST and each baseline."""

import profile_step

from laddertune.app import trainer


def test_the_profile_times_the_training_loops_own_step(monkeypatch):
    steps = []

    def counted(model, batch, optimization):
        steps.append(type(model).__name__)
        return trainer.train_step(model, batch, optimization)
    monkeypatch.setattr(profile_step, "train_step", counted)
    found = profile_step.breakdown("tiny-bert", batch_size=2, repeats=1, baselines=("lora",))
    for key in ("lst_forward", "lst_train_step", "lst_backbone_forward_no_grad",
                "lora_forward", "lora_train_step"):
        assert found[key] > 0, key
    assert "aten::" in found["lst_top_ops"]
    assert len(steps) == 2 + 1 + 2      # LST: warm-up and timed, profiled; LoRA: warm-up, timed
