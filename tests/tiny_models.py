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
# families without an entry in laddertune.backbones.FAMILIES: read off their structure
UNLISTED_FAMILIES = {
    "mpnet": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64),
    "gemma": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, intermediate_size=64),
}


def tiny_config(model_type: str, **extra):
    overrides = dict({**ALL_FAMILIES, **UNLISTED_FAMILIES}[model_type])
    if model_type not in VISION_FAMILIES:
        overrides["vocab_size"] = VOCAB
    overrides.update(extra)
    return AutoConfig.for_model(model_type, **overrides)


def tiny_backbone(model_type: str, seed: int = 0, task: str = "bare", **extra):
    """A tiny random backbone: bare (AutoModel) or with its LM head ("lm")."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, **extra)
    if task == "lm" and (model_type in DECODER_FAMILIES or model_type == "gemma"):
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


# ---- a tiny model folder with its own tokenizer, for the CLI (`--model <path>`) -----------------

TOPIC_WORDS = {
    "sport": ["match", "goal", "team", "coach", "league", "score"],
    "tech": ["phone", "chip", "software", "robot", "laptop", "code"],
    "money": ["bank", "market", "price", "stock", "trade", "profit"],
}
FILLER = ["the", "a", "of", "in", "on", "today", "new", "big"]


def save_tiny_text_model(path, model_type: str = "bert", seed: int = 0, **extra) -> str:
    """Save a tiny random model and a word-level tokenizer over TOPIC_WORDS to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(FILLER))
    vocab = {token: i for i, token in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                                        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                        model_max_length=64)
    torch.manual_seed(seed)
    config = tiny_config(model_type, vocab_size=len(vocab), pad_token_id=0,
                         max_position_embeddings=64, **extra)
    AutoModel.from_config(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def topic_rows(n: int, seed: int = 0, topics=None) -> list[dict]:
    """`n` short texts, cycling through the topics, each with 3-8 topic words among filler."""
    import random
    rng = random.Random(seed)
    topics = topics or list(TOPIC_WORDS)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        words = [rng.choice(TOPIC_WORDS[topic]) for _ in range(rng.randint(3, 8))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(1, 6))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topic})
    return rows


def write_csv(path, rows: list[dict]) -> str:
    import csv
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


# ---- a tiny language model folder (decoder-only or encoder-decoder), for --task generate -------

SYMBOLS = ["red", "green", "blue", "gold", "pink", "gray"]
CHAT_TEMPLATE = ("{% for m in messages %}user {{ m['content'] }} [SEP]{% endfor %}"
                 "{% if add_generation_prompt %} bot{% endif %}")


def save_tiny_lm(path, model_type: str = "gpt2", seed: int = 0, chat_template: bool = False,
                 **extra) -> str:
    """Save a tiny random language model with its LM head (AutoModelForCausalLM, or
    AutoModelForSeq2SeqLM for t5/bart) and a word-level tokenizer with BOS and EOS: over
    TOPIC_WORDS, FILLER, SYMBOLS and a few prompt words; with `chat_template`, a template that
    wraps a prompt as "user PROMPT [SEP] bot"."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]"]
    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(FILLER) | set(SYMBOLS)
                   | {"copy", "reverse", "user", "bot", "positive", "negative"})
    vocab = {token: i for i, token in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    seq2seq = model_type in SEQ2SEQ_FAMILIES
    tok.post_processor = processors.TemplateProcessing(
        single="$A [EOS]" if seq2seq else "[BOS] $A",
        special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                                        unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                        sep_token="[SEP]", model_max_length=64)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    ids = dict(vocab_size=len(vocab), pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if seq2seq:
        config = tiny_config(model_type, decoder_start_token_id=0, **ids, **extra)
        model = AutoModelForSeq2SeqLM.from_config(config)
    else:
        config = tiny_config(model_type, **ids, **extra)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def symbol_pairs(n: int, seed: int = 0, task: str = "copy", length: int = 3) -> list[dict]:
    """`n` prompts "copy w1 w2 w3" (or "reverse ...") over SYMBOLS, with their answers."""
    import random
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(SYMBOLS) for _ in range(length)]
        answer = words if task == "copy" else words[::-1]
        rows.append({"prompt": f"{task} " + " ".join(words), "target": " ".join(answer)})
    return rows
