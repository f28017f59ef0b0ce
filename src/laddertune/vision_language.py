"""CLIP-T5 with ladder side-tuning: answer questions about images by generating text.

As in the paper's vision-and-language set-up (after VL-Adapter's CLIP-T5), a frozen CLIP vision
tower turns the image into patch features; a trainable linear layer projects them to the T5
width; the projected visual tokens go in front of the question's token embeddings; the frozen T5
encoder and the side encoder read the joint sequence; the answer is generated as text.

    patches = clip(pixel_values).last_hidden_state[:, 1:]    # (b, p, c), CLS token dropped
    visual = projection(patches)                             # (b, p, d), trainable
    e = cat([visual, embed(input_ids)])                      # (b, p + t, d)
    mask = cat([ones(b, p), attention_mask])                 # visual tokens are never padding
    x_0..x_L = t5_encoder(inputs_embeds=e.detach())          # frozen, no autograd
    side encoder: h_0 = down_0(e), then the ladders from x_l as usual

How the projection learns. It sits *before* the frozen backbone, and LST never back-propagates
through the backbone (that is where its memory saving comes from), so the projection cannot get
gradients the usual way. We keep it that way and give the projection its own gradient path
through the side network: the side encoder's first ladder, down_0, reads the embeddings e. The
backbone's hidden_states[0] *is* e (T5 applies dropout only, and the backbone runs in eval mode),
so we hand the ladder the same values with their autograd history kept. The forward pass is
exactly what the backbone computes (with `backbone_dropout` the backbone drops some of e, the
ladder none); only the backward differs: the loss reaches the projection through down_0 and the
side network, never through backbone activations. The projection thus
trains to be useful to the side network; the backbone sees its current output but is not
steered by gradients through its own layers. The alternative, back-propagating through the
frozen T5 encoder, would save every encoder activation for backward, the cost LST exists to
avoid. The paper uses reduction factor r = 4 for vision-and-language tasks.

Saved with `save_pretrained`: the side network (as `LSTModel` saves it) and the projection.
Neither T5 nor CLIP weights are saved.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_json, load_weights, save_json, save_weights
from .config import LSTConfig
from .errors import BackboneMismatchError, CheckpointError, MissingInputError, UnsupportedModelError
from .held import HeldModules
from .model import LSTModel, decay_groups, frozen

PROJECTION_NAME = "visual_projection.safetensors"
VISION_CONFIG_NAME = "vision_tower.json"


class LSTVisionLanguageModel(HeldModules, nn.Module):
    """A T5 backbone with a ladder side network that also reads images through CLIP.

    Args:
        backbone: a T5 (or other encoder-decoder) model with its LM head. Never modified.
        vision_tower: a `CLIPVisionModel` (or any vision model with `last_hidden_state` of
            shape (b, 1 + patches, c)). Frozen; never modified.
        config: an `LSTConfig` with task_type ``SEQ_2_SEQ_LM``; default r = 4 as in the paper.

    Raises:
        UnsupportedModelError: the backbone is not an encoder-decoder model, or the task is not
            SEQ_2_SEQ_LM.
    """

    def __init__(self, backbone, vision_tower, config: LSTConfig | None = None):
        super().__init__()
        config = config or LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=4)
        if config.task_type != "SEQ_2_SEQ_LM" or not backbone.config.is_encoder_decoder:
            raise UnsupportedModelError(
                "a vision-language model generates answers with an encoder-decoder backbone; "
                "pass a T5 model and LSTConfig(task_type='SEQ_2_SEQ_LM')")
        self.lst = LSTModel(backbone, config)
        self._hold("vision_tower", vision_tower)  # held, not registered: frozen
        vision_width = vision_tower.config.hidden_size
        self.visual_projection = nn.Linear(vision_width, self.lst.width)  # (b, p, c) -> (b, p, d)
        self.visual_projection.to(device=next(backbone.parameters()).device)

    # the vision tower moves with the model here; T5 moves with `self.lst`, which holds it
    held_names = ("vision_tower",)

    @property
    def backbone(self):
        return self.lst.backbone

    def held_backbone(self):
        return self.lst.held_backbone()

    @property
    def config(self) -> LSTConfig:
        return self.lst.config

    @property
    def side_blocks(self) -> str:
        return self.lst.side_blocks

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None,
                decoder_input_ids=None, decoder_attention_mask=None, encoder_outputs=None,
                cache=None, use_cache=False, return_loss=False, **kwargs):
        """Like `LSTModel.forward`, with `pixel_values` (b, 3, H, W) read by the encoder.

        `attention_mask` covers the text only; the visual tokens are added in front. Pass
        `encoder_outputs` (from `output.cache[1]`) to skip both encoders, as generation does.
        """
        if input_ids is None:
            raise MissingInputError("a vision-language model needs a question; pass input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if encoder_outputs is None:
            if pixel_values is None:
                raise MissingInputError("a vision-language model needs images; pass "
                                        "pixel_values")
            encoder_outputs = self.encode(input_ids, attention_mask, pixel_values)
        visual_tokens = encoder_outputs[0].shape[1] - attention_mask.shape[1]
        mask = _with_visual_tokens(attention_mask, visual_tokens)            # (b, p + t)
        return self.lst(input_ids=input_ids, attention_mask=mask, labels=labels,
                        decoder_input_ids=decoder_input_ids,
                        decoder_attention_mask=decoder_attention_mask,
                        encoder_outputs=encoder_outputs, cache=cache, use_cache=use_cache,
                        return_loss=return_loss)

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch features projected to the T5 width: (b, 3, H, W) -> (b, p, d)."""
        with frozen(self.vision_tower):
            patches = self.vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:]
        return self.visual_projection(patches.to(self.visual_projection.weight.dtype))

    def encode(self, input_ids, attention_mask, pixel_values):
        """Backbone and side encoders over [visual tokens; text]: ((b, s, d), (b, s, d/r))."""
        lst = self.lst
        side_encoder, ladder = lst.side_stacks[0], lst.ladders[0]
        visual = self.visual_tokens(pixel_values)                            # (b, p, d)
        with frozen(self.backbone):
            text = self.backbone.get_input_embeddings()(input_ids)           # (b, t, d)
        embeds = torch.cat([visual, text.to(visual.dtype)], dim=1)           # (b, p + t, d)
        mask = _with_visual_tokens(attention_mask, visual.shape[1])
        out, states = lst.run_backbone(0, inputs_embeds=embeds.detach().to(text.dtype),
                                       attention_mask=mask)
        # hidden_states[0] is embeds (after T5's dropout, with backbone_dropout): give the ladder
        # the copy that keeps its gradient
        with ladder.reading((embeds, *states[1:])):
            side = side_encoder(inputs_embeds=ladder.first(embeds), attention_mask=mask,
                                return_dict=True)                            # (b, p + t, d/r)
        return out.last_hidden_state, side.last_hidden_state

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens: int = 20,
                 num_beams: int = 1, pixel_values=None, **kwargs) -> torch.Tensor:
        """Generate answers; both encoders run once, then one cached step per token."""
        from .generation import generate
        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        num_beams=num_beams, pixel_values=pixel_values, **kwargs)

    # ---- parameters and saving ----------------------------------------------------------------

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as `LSTModel.parameter_groups`; the projection's weight decays."""
        decaying, still = self.lst.parameter_groups(weight_decay)
        projection = decay_groups(self.visual_projection.parameters(), weight_decay,
                                  lambda param: param.dim() >= 2)
        return [{**decaying, "params": decaying["params"] + projection[0]["params"]},
                {**still, "params": still["params"] + projection[1]["params"]}]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen_count = sum(p.numel() for module in (self.backbone, self.vision_tower)
                           for p in {id(p): p for p in module.parameters()}.values())
        return trainable, frozen_count + trainable

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    def save_pretrained(self, save_directory: str | Path) -> None:
        """The side network, the projection and the vision tower's type and width."""
        directory = Path(save_directory)
        self.lst.save_pretrained(directory)
        save_weights(self.visual_projection.state_dict(), directory / PROJECTION_NAME)
        save_json(_vision_meta(self.vision_tower), directory / VISION_CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, backbone, vision_tower, model_id: str | Path,
                        is_trainable: bool = False) -> LSTVisionLanguageModel:
        """Rebuild a saved model on the same T5 backbone and CLIP vision tower.

        `is_trainable=False` (as in PEFT) returns it in eval mode with frozen parameters.

        Raises:
            CheckpointError: a file is missing or corrupted.
            BackboneMismatchError: the folder was saved for another backbone or vision tower.
        """
        directory = Path(model_id)
        lst = LSTModel.from_pretrained(backbone, directory, is_trainable=True)
        saved = load_json(directory / VISION_CONFIG_NAME)
        if saved != _vision_meta(vision_tower):
            raise BackboneMismatchError(
                f"{directory} was saved with vision tower {saved}, not "
                f"{_vision_meta(vision_tower)}; pass the vision tower it was trained with")
        # a fresh side network (random init, no pruning pass) that the loaded one then replaces
        model = cls(backbone, vision_tower, dataclasses.replace(lst.config, side_init="random"))
        model.lst = lst
        state = load_weights(directory / PROJECTION_NAME)
        try:
            model.visual_projection.load_state_dict(state)
        except RuntimeError:
            raise CheckpointError(f"{directory / PROJECTION_NAME} does not match the vision "
                                  "tower's width; save the model again") from None
        if not is_trainable:
            model.eval().requires_grad_(False)
        return model


def _with_visual_tokens(attention_mask: torch.Tensor, visual_tokens: int) -> torch.Tensor:
    """Prepend ones for the visual tokens: (b, t) -> (b, p + t)."""
    ones = attention_mask.new_ones(len(attention_mask), visual_tokens)
    return torch.cat([ones, attention_mask], dim=1)


def _vision_meta(vision_tower) -> dict:
    config = vision_tower.config
    return {"model_type": config.model_type, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers}
