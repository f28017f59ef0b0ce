"""CLIP-T5: frozen CLIP patches, a trained projection, T5 + ladders, answers generated as text."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE, tiny_backbone

from laddertune import BackboneMismatchError, LSTConfig, MissingInputError, UnsupportedModelError
from laddertune.vision_language import LSTVisionLanguageModel

PATCHES = (IMAGE // 4) ** 2                    # tiny CLIP: 16 x 16 images, 4 x 4 patches


def tiny_clip_t5(seed=0, **config):
    torch.manual_seed(seed)
    t5 = tiny_backbone("t5", task="lm", seed=seed)
    clip = tiny_backbone("clip_vision_model", seed=seed, hidden_size=48, intermediate_size=96)
    config = {"task_type": "SEQ_2_SEQ_LM", "reduction_factor": 4, "dropout": 0.0, **config}
    return LSTVisionLanguageModel(t5, clip, LSTConfig(**config))


def questions(batch=2, length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def test_encoder_reads_visual_tokens_before_the_text():
    model = tiny_clip_t5()
    inputs = questions()
    backbone_memory, side_memory = model.encode(**inputs)
    assert backbone_memory.shape == (2, PATCHES + 5, 32)
    assert side_memory.shape == (2, PATCHES + 5, 8)
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])
    logits = model(**inputs, labels=labels).logits
    other_images = model(**{**inputs, "pixel_values": inputs["pixel_values"].flip(0)},
                         labels=labels).logits
    assert not torch.allclose(logits, other_images)           # the answer depends on the image


@pytest.mark.numerics
def test_backbone_sees_exactly_the_projected_features():
    """The frozen T5 encoder on [projection(patches); embeddings] equals encode()'s output."""
    model = tiny_clip_t5()
    inputs = questions()
    with torch.no_grad():
        patches = model.vision_tower(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 1:]
        embeds = torch.cat([model.visual_projection(patches),
                            model.backbone.get_input_embeddings()(inputs["input_ids"])], dim=1)
        mask = torch.cat([torch.ones(2, PATCHES, dtype=torch.long), inputs["attention_mask"]], 1)
        expected = model.backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        backbone_memory, _ = model.encode(**inputs)
    torch.testing.assert_close(backbone_memory, expected.last_hidden_state)


def test_projection_and_side_train_while_t5_and_clip_get_no_gradient():
    model = tiny_clip_t5()
    model.train()
    loss = model(**questions(), labels=torch.tensor([[5, 6, 1], [7, 1, -100]])).loss
    loss.backward()
    assert model.visual_projection.weight.grad.abs().sum() > 0
    assert model.lst.ladders[0].down[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.vision_tower.parameters())
    names = {name for name, _ in model.named_parameters()}
    assert "visual_projection.weight" in names
    assert not any("vision_tower" in n or n.startswith("backbone") for n in names)
    trainable, total = model.get_nb_trainable_parameters()
    frozen = sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.vision_tower.parameters())
    assert total == trainable + frozen


@pytest.mark.numerics
def test_cached_generation_with_images_equals_recompute_and_beams_run():
    model = tiny_clip_t5().eval()
    inputs = questions(batch=3)
    cached = model.generate(**inputs, max_new_tokens=5, eos_token_id=[])
    recomputed = model.generate(**inputs, max_new_tokens=5, eos_token_id=[], use_cache=False)
    assert torch.equal(cached, recomputed)
    sequences = torch.zeros(3, 1, dtype=torch.long)              # reference: full forwards
    with torch.no_grad():
        for _ in range(5):
            logits = model(**inputs, decoder_input_ids=sequences).logits[:, -1]
            sequences = torch.cat([sequences, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, sequences)
    beams = model.generate(**inputs, max_new_tokens=5, num_beams=3)
    assert beams.shape[0] == 3 and beams[:, 0].eq(0).all()


def test_learns_to_answer_from_the_image():
    """Same question, answer 'bright' or 'dark' by the image: only the image can tell."""
    model = tiny_clip_t5(seed=1)
    bright, dark, eos = 10, 11, 1
    question = torch.tensor([[5, 6, 7, eos]])
    generator = torch.Generator().manual_seed(0)

    def batch(n):
        is_bright = torch.randint(0, 2, (n,), generator=generator)
        pixels = torch.randn(n, 3, IMAGE, IMAGE, generator=generator) * 0.3
        pixels += (is_bright * 2 - 1).float()[:, None, None, None]
        answers = torch.where(is_bright.bool(), bright, dark)
        labels = torch.stack([answers, torch.full_like(answers, eos)], dim=1)
        return {"input_ids": question.expand(n, -1), "pixel_values": pixels}, labels

    projection_before = model.visual_projection.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        inputs, labels = batch(16)
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.visual_projection.weight, projection_before)
    inputs, labels = batch(32)
    generated = model.generate(**inputs, max_new_tokens=4)
    assert torch.equal(generated[:, 1:3], labels)


def test_save_and_load_give_identical_answers(tmp_path):
    model = tiny_clip_t5().eval()
    with torch.no_grad():
        model.visual_projection.weight.add_(0.5)             # not the fresh initialisation
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lst_config.json", "lst_model.safetensors", "vision_tower.json",
        "visual_projection.safetensors"]
    loaded = LSTVisionLanguageModel.from_pretrained(model.backbone, model.vision_tower, tmp_path)
    inputs = questions()
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs, labels=labels).logits,
                                   model(**inputs, labels=labels).logits)
    other_clip = tiny_backbone("clip_vision_model")                    # width 32, not 48
    with pytest.raises(BackboneMismatchError, match="vision tower"):
        LSTVisionLanguageModel.from_pretrained(model.backbone, other_clip, tmp_path)


def test_errors_name_the_fix():
    model = tiny_clip_t5()
    with pytest.raises(MissingInputError, match="pixel_values"):
        model(input_ids=torch.tensor([[5, 1]]), labels=torch.tensor([[5, 1]]))
    with pytest.raises(UnsupportedModelError, match="SEQ_2_SEQ_LM"):
        LSTVisionLanguageModel(tiny_backbone("gpt2", task="lm"),
                               tiny_backbone("clip_vision_model"),
                               LSTConfig(task_type="CAUSAL_LM", reduction_factor=4))
