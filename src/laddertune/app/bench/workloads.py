"""Model shapes the bench trains, built from configs with random weights (no download).

Random weights are enough for memory and speed: they depend on shapes, not values. Each
workload is a task model, a task type and a recipe for one batch of random token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    LlamaConfig,
    T5Config,
)


@dataclass
class Workload:
    """One model shape and task.

    Args:
        name: what the tables call it.
        kind: ``t5`` (text-to-text), ``bert`` (sequence classification) or ``llama`` (causal LM).
        config: keyword arguments of the transformers config class.
        seq_len: source tokens per example.
        target_len: target tokens for text-to-text.
        num_labels: classes for sequence classification.
    """

    name: str
    kind: str
    config: dict = field(default_factory=dict)
    seq_len: int = 128
    target_len: int = 16
    num_labels: int = 2

    @property
    def task_type(self) -> str:
        return {"t5": "SEQ_2_SEQ_LM", "bert": "SEQ_CLS", "llama": "CAUSAL_LM"}[self.kind]

    def build(self, seed: int = 0) -> torch.nn.Module:
        """A fresh task model with random weights."""
        torch.manual_seed(seed)
        if self.kind == "t5":
            return AutoModelForSeq2SeqLM.from_config(T5Config(**self.config))
        if self.kind == "bert":
            return AutoModelForSequenceClassification.from_config(
                BertConfig(**self.config, num_labels=self.num_labels))
        return AutoModelForCausalLM.from_config(LlamaConfig(**self.config))

    def batch(self, batch_size: int, seq_len: int | None = None, seed: int = 0) -> dict:
        """Random inputs and labels; every row is full length (no padding)."""
        seq_len = seq_len or self.seq_len
        generator = torch.Generator().manual_seed(seed)
        vocab = self.config["vocab_size"]
        ids = torch.randint(3, vocab, (batch_size, seq_len), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.kind == "t5":
            batch["labels"] = torch.randint(3, vocab, (batch_size, self.target_len),
                                            generator=generator)
        elif self.kind == "bert":
            batch["labels"] = torch.randint(0, self.num_labels, (batch_size,), generator=generator)
        else:
            batch["labels"] = ids.clone()
        return batch


def _t5(name, d_model, d_ff, layers, heads, d_kv=64, vocab=32128, **kw) -> Workload:
    return Workload(name, "t5", dict(d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_layers=layers,
                                     num_decoder_layers=layers, num_heads=heads,
                                     vocab_size=vocab, decoder_start_token_id=0,
                                     dropout_rate=0.1), **kw)


WORKLOADS = {
    # The paper's setting: T5-base shape, text-to-text, source 128 tokens.
    "t5-base": _t5("t5-base", 768, 3072, 12, 12),
    "t5-small": _t5("t5-small", 512, 2048, 6, 8),
    "t5-large": _t5("t5-large", 1024, 4096, 24, 16),
    "bert-base": Workload("bert-base", "bert", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=30522)),
    "smollm2-135m": Workload("smollm2-135m", "llama", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=2048)),
    # Tiny shapes for tests.
    "tiny-t5": _t5("tiny-t5", 32, 64, 4, 4, d_kv=8, vocab=64, seq_len=16, target_len=4),
    "tiny-llama": Workload("tiny-llama", "llama", dict(
        # heads of 32 so that the side's (r = 8) are 4 wide: narrower ones fall back to SDPA's
        # math kernel on CPU, which keeps the (t, t) weights a real model's side would not
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256, vocab_size=64, max_position_embeddings=2048), seq_len=16),
    "tiny-bert": Workload("tiny-bert", "bert", dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        vocab_size=64), seq_len=16),
}

# Applicable methods per kind: BitFit needs biases, which T5 and Llama do not have.
METHODS_BY_KIND = {
    "t5": ("full", "lora", "adapter", "ia3", "prompt", "lst"),
    "bert": ("full", "lora", "adapter", "ia3", "bitfit", "prompt", "lst"),
    "llama": ("full", "lora", "adapter", "ia3", "prompt", "lst"),
}


def get_workload(name: str) -> Workload:
    from ...errors import LSTConfigError
    if name not in WORKLOADS:
        raise LSTConfigError(f"workload {name!r} is unknown; use one of {', '.join(WORKLOADS)}")
    return WORKLOADS[name]
