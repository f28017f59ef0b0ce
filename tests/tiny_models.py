"""Tiny random models of every supported family, built from configs (no network)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

VOCAB = 64
IMAGE = 16  # pixels per side of the tiny images

# model_type -> config overrides giving width 32, 4 heads, 4 layers
TEXT_FAMILIES = {
    "bert": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=64, pad_token_id=1),
    "electra": dict(hidden_size=32, embedding_size=16, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=64),
    "deberta-v2": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=64, relative_attention=True, position_buckets=8,
                       max_relative_positions=16, pos_att_type=["p2c", "c2p"]),
    "distilbert": dict(dim=32, hidden_dim=64, n_layers=4, n_heads=4),
    "clip_text_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=32),
}
DECODER_FAMILIES = {
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=64),
    "llama": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64),
    "qwen2": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64),
    "mistral": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64, head_dim=8),
    "opt": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64,
                word_embed_proj_dim=32, max_position_embeddings=64),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64),
}
SEQ2SEQ_FAMILIES = {
    "t5": dict(d_model=32, d_ff=64, d_kv=8, num_layers=4, num_heads=4, decoder_start_token_id=0),
    "bart": dict(d_model=32, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=64,
                 decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4,
                 max_position_embeddings=64),
}
VISION_FAMILIES = {
    "vit": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                image_size=IMAGE, patch_size=4),
    "clip_vision_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, image_size=IMAGE, patch_size=4),
}
ALL_FAMILIES = {**TEXT_FAMILIES, **DECODER_FAMILIES, **SEQ2SEQ_FAMILIES, **VISION_FAMILIES}


def tiny_config(model_type: str, **extra):
    overrides = dict(ALL_FAMILIES[model_type])
    if model_type not in VISION_FAMILIES:
        overrides["vocab_size"] = VOCAB
    overrides.update(extra)
    return AutoConfig.for_model(model_type, **overrides)


def tiny_backbone(model_type: str, seed: int = 0, task: str = "bare", **extra):
    """A tiny random backbone: bare (AutoModel) or with its LM head ("lm")."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, **extra)
    if task == "lm" and model_type in DECODER_FAMILIES:
        return AutoModelForCausalLM.from_config(config).eval()
    if task == "lm" and model_type in SEQ2SEQ_FAMILIES:
        return AutoModelForSeq2SeqLM.from_config(config).eval()
    return AutoModel.from_config(config).eval()


def tiny_inputs(model_type: str, batch: int = 4, length: int = 8, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if model_type in VISION_FAMILIES:
        return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=generator)}
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded row, so masks are exercised
    return {"input_ids": ids, "attention_mask": mask}
