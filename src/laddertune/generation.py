"""Text generation for LST models: greedy, sampling and beam search, one incremental step per
new token.

Backbone and side network each keep a key/value cache (`LSTOutput.cache`), so a step runs both
on the newest token only; an encoder-decoder model runs its two encoders once, on the first step.

    greedy:  every step appends argmax_token p(token | prefix) to each sequence
    sample:  every step draws a token from p(token | prefix)^(1/temperature), renormalised over
             the smallest set of likeliest tokens whose probability reaches top_p (nucleus
             sampling); a seeded generator makes it repeatable, temperature 0 is greedy
    beam:    keeps the k prefixes with the highest sum of log p; every step extends each of them
             by every token and keeps the best k of the k * vocab candidates

A sequence that has produced an `eos_token_id` is finished: from then on it is extended by
`pad_token_id` only, at no cost, so finished and unfinished beams compete on the same total
log-probability (no length penalty). Generation stops when every sequence is finished or after
`max_new_tokens` steps.

The result follows Hugging Face's convention: for ``SEQ_2_SEQ_LM`` the decoder tokens, starting
with the decoder start token; for ``CAUSAL_LM`` the prompt followed by the new tokens.
Decoder-only prompts of different lengths must be left-padded (padding first, attention_mask 0
there). Position ids are counted from the attention mask, so a left-padded prompt sees the same
positions it would see alone.

`on_token` streams: greedy search and sampling call it with each step's new tokens, (b,), as
they come; beam search only knows its best sequence at the end, and then calls it once per
token of it.

Side networks of generic blocks (`side_blocks="generic"`) keep no cache: each step then reruns
the whole sequence, which gives the same tokens, only slower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .backbones import max_positions
from .errors import InputError, MissingInputError, UnsupportedModelError

GENERATIVE_TASKS = ("SEQ_2_SEQ_LM", "CAUSAL_LM")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
             num_beams: int = 1, *, pixel_values: torch.Tensor | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             use_cache: bool = True, return_scores: bool = False, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0,
             on_token: Callable[[torch.Tensor], None] | None = None):
    """Generate up to `max_new_tokens` tokens per sequence: greedily, by sampling or by beam
    search.

    Args:
        model: an `LSTModel` (or `LSTVisionLanguageModel`) with task_type SEQ_2_SEQ_LM or
            CAUSAL_LM.
        input_ids: (b, t) prompts (questions, for vision-language models); left-padded for
            decoder-only models.
        attention_mask: (b, t), 1 for real tokens; all ones when omitted.
        max_new_tokens: the most tokens added to each sequence.
        num_beams: 1 for greedy search, k > 1 for beam search with k beams.
        pixel_values: images, for vision-language models.
        eos_token_id: token(s) that end a sequence; the backbone's own by default; ``[]``
            never stops early.
        pad_token_id: token that fills finished sequences; the backbone's own (else eos).
        use_cache: reuse key/value caches (one incremental step per token); False reruns the
            whole sequence every step, which is slower and gives the same result.
        return_scores: also return each sequence's total log-probability, shape (b,).
        temperature: 0 picks the likeliest token (greedy, or beams); above 0 samples from the
            distribution sharpened (< 1) or flattened (> 1) by it.
        top_p: sampling only: draw from the likeliest tokens whose probabilities add up to
            top_p (1 keeps every token).
        seed: sampling only: seeds the generator, so the same call draws the same tokens.
        on_token: called with each step's new tokens, (b,) (see the module doc).

    Returns:
        (b, t_out) token ids, or (ids, scores) when `return_scores`.

    Raises:
        UnsupportedModelError: the model's task type does not generate text.
        MissingInputError: input_ids are missing.
        InputError: a decoder-only prompt is right-padded, a count is below 1, temperature or
            top_p is out of range, or sampling is asked of beam search.
    """
    task = model.config.task_type
    if task not in GENERATIVE_TASKS:
        raise UnsupportedModelError(
            f"generate needs a text-generating model but this one has task_type {task}; "
            "build it with LSTConfig(task_type='SEQ_2_SEQ_LM') or 'CAUSAL_LM'")
    if input_ids is None:
        raise MissingInputError("generate needs a prompt; pass input_ids")
    if max_new_tokens < 1 or num_beams < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} and num_beams={num_beams} must both "
                         "be >= 1")
    check_sampling(temperature, top_p, num_beams)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    limit = max_positions(model.backbone)
    if task == "CAUSAL_LM" and limit and input_ids.shape[1] + max_new_tokens > limit:
        raise InputError(
            f"a prompt of {input_ids.shape[1]} tokens plus max_new_tokens={max_new_tokens} "
            f"exceeds the model's {limit} positions; shorten the prompt or max_new_tokens")
    if task == "CAUSAL_LM" and not attention_mask[:, -1].all():
        raise InputError("a decoder-only prompt is padded on the right; pad on the left "
                         "(tokenizer.padding_side = 'left') so new tokens follow every prompt")
    eos, pad = special_tokens(model.backbone, eos_token_id, pad_token_id)
    use_cache = use_cache and getattr(model, "side_blocks", "native") != "generic"
    decoder = Decoder(model, input_ids, attention_mask, pixel_values, use_cache)
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            sequences, scores = beam_search(decoder, max_new_tokens, num_beams, eos, pad)
            if on_token is not None:
                for tokens in sequences[:, decoder.start_length:].T:        # (b,) per step
                    on_token(tokens)
        else:
            choose = greedy_choice if temperature == 0 else Sampler(
                temperature, top_p, seed, input_ids.device)
            sequences, scores = greedy_search(decoder, max_new_tokens, eos, pad, choose,
                                              on_token)
    finally:
        model.train(was_training)
    return (sequences, scores) if return_scores else sequences


def check_sampling(temperature: float, top_p: float, num_beams: int = 1) -> None:
    """Raise InputError unless temperature >= 0, 0 < top_p <= 1, and beams are not sampled."""
    if not temperature >= 0:
        raise InputError(f"temperature={temperature} must be >= 0 (0 is greedy)")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p={top_p} must be in (0, 1] (1 keeps every token)")
    if temperature > 0 and num_beams > 1:
        raise InputError(f"sampling (temperature={temperature}) and beam search (num_beams="
                         f"{num_beams}) do not combine; pass num_beams=1 or temperature=0")


def greedy_choice(log_probs: torch.Tensor) -> torch.Tensor:
    """The likeliest token of each row: (b, vocab) -> (b,)."""
    return log_probs.argmax(-1)


class Sampler:
    """Draws each row's next token from its temperature-scaled nucleus (see the module doc)."""

    def __init__(self, temperature: float, top_p: float, seed: int, device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, log_probs: torch.Tensor) -> torch.Tensor:
        probs = (log_probs / self.temperature).softmax(-1)             # (b, vocab)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(-1, descending=True)
            # drop a token when the likelier ones already reach top_p; the first always stays
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


def greedy_search(decoder: Decoder, max_new_tokens: int, eos: torch.Tensor, pad: int,
                  choose: Callable[[torch.Tensor], torch.Tensor] = greedy_choice,
                  on_token: Callable[[torch.Tensor], None] | None = None):
    """Append a token chosen by `choose` from each row's log p (the likeliest, by default)
    until every sequence is finished: (ids, total log p of the chosen tokens)."""
    sequences = decoder.start()                                        # (b, t0)
    finished = torch.zeros(len(sequences), dtype=torch.bool, device=sequences.device)
    scores = torch.zeros(len(sequences), device=sequences.device)
    for _ in range(max_new_tokens):
        log_probs = decoder.next_log_probs(sequences)                  # (b, vocab)
        tokens = choose(log_probs).masked_fill(finished, pad)          # (b,)
        gained = log_probs.gather(1, tokens[:, None]).squeeze(1)
        scores += gained.masked_fill(finished, 0.0)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)     # (b, t + 1)
        if on_token is not None:
            on_token(tokens)
        finished |= torch.isin(tokens, eos)
        if finished.all():
            break
    return sequences, scores


def beam_search(decoder: Decoder, max_new_tokens: int, num_beams: int, eos: torch.Tensor,
                pad: int):
    """Keep the `num_beams` best prefixes per prompt; return the best one: (ids, total log p)."""
    batch, k = decoder.batch_size, num_beams
    decoder.expand(k)                           # each prompt repeated k times: rows b*k .. b*k+k-1
    sequences = decoder.start()                                        # (b*k, t0)
    device = sequences.device
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")          # the k beams start equal: extend only the first
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    group_start = torch.arange(batch, device=device)[:, None] * k      # (b, 1)
    for _ in range(max_new_tokens):
        log_probs = decoder.next_log_probs(sequences)                  # (b*k, vocab)
        vocab = log_probs.shape[-1]
        if k > vocab:
            raise InputError(f"num_beams={k} exceeds the vocabulary ({vocab}); use fewer beams")
        # a finished beam continues with padding only, at no cost
        log_probs[finished] = float("-inf")
        log_probs[finished, pad] = 0.0
        candidates = (beam_scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
        beam_scores, best = candidates.topk(k, dim=1)                  # (b, k), best first
        origin = (group_start + best // vocab).reshape(-1)             # (b*k,) row extended
        tokens = (best % vocab).reshape(-1)                            # (b*k,)
        sequences = torch.cat([sequences[origin], tokens[:, None]], dim=1)
        finished = finished[origin] | torch.isin(tokens, eos)
        decoder.reorder(origin)
        if finished.all():
            break
    sequences = sequences.reshape(batch, k, -1)[:, 0]                  # topk sorts: beam 0 is best
    return sequences, beam_scores[:, 0]


class Decoder:
    """Runs the model one step at a time and holds what carries over: masks, caches, encoder.

    `greedy_search` and `beam_search` drive it; `generate` builds it from the model inputs.
    """

    def __init__(self, model, input_ids, attention_mask, pixel_values, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.seq2seq = model.config.task_type == "SEQ_2_SEQ_LM"
        self.inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                       "pixel_values": pixel_values}
        self.cache = None               # (backbone cache, side cache) once a step has run
        self.encoder_outputs = None     # (backbone memory, side memory), encoder-decoder only

    @property
    def batch_size(self) -> int:
        return len(self.inputs["input_ids"])

    @property
    def start_length(self) -> int:
        """Tokens each sequence holds before the first new one."""
        return 1 if self.seq2seq else self.inputs["input_ids"].shape[1]

    def start(self) -> torch.Tensor:
        """The sequences before any new token: decoder start tokens, or the prompts."""
        if not self.seq2seq:
            return self.inputs["input_ids"]
        return torch.full((self.batch_size, 1), decoder_start_token(self.model.backbone),
                          dtype=torch.long, device=self.inputs["input_ids"].device)

    def expand(self, k: int) -> None:
        self.inputs = {name: None if value is None else value.repeat_interleave(k, dim=0)
                       for name, value in self.inputs.items()}

    def next_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        """log p(next token | sequence) for every row: (b, vocab)."""
        step = self.cache is not None    # after the first step, feed only the newest token
        if self.seq2seq:
            kwargs = {**self.inputs, "decoder_input_ids": sequences[:, -1:] if step else sequences}
            if self.encoder_outputs is not None:
                kwargs.update(encoder_outputs=self.encoder_outputs, pixel_values=None)
        else:
            mask = self.inputs["attention_mask"]
            new = sequences.shape[1] - mask.shape[1]
            mask = torch.cat([mask, mask.new_ones(len(mask), new)], dim=1)     # (b, t)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)              # (b, t)
            kwargs = {"input_ids": sequences[:, -1:] if step else sequences,
                      "attention_mask": mask,
                      "position_ids": positions[:, -1:] if step else positions}
        out = self.model(**kwargs, cache=self.cache, use_cache=self.use_cache)
        if self.seq2seq:
            cache, self.encoder_outputs = out.cache
        else:
            cache = out.cache
        self.cache = cache if self.use_cache else None
        return out.logits[:, -1].float().log_softmax(-1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Make row i hold what row rows[i] held: inputs, both caches and encoder outputs."""
        self.inputs = {name: None if value is None else value.index_select(0, rows)
                       for name, value in self.inputs.items()}
        if self.cache is not None:
            for cache in self.cache:     # backbone's and side network's
                cache.reorder_cache(rows)
        if self.encoder_outputs is not None:
            self.encoder_outputs = tuple(h.index_select(0, rows) for h in self.encoder_outputs)


def special_tokens(backbone, eos_token_id=None, pad_token_id=None) -> tuple[torch.Tensor, int]:
    """(eos ids as a tensor, pad id): the arguments, else the backbone's own."""
    if eos_token_id is None:
        eos_token_id = _backbone_token(backbone, "eos_token_id")
    if eos_token_id is None:
        eos_token_id = []
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                       dtype=torch.long, device=_device(backbone))
    if pad_token_id is None:
        pad_token_id = _backbone_token(backbone, "pad_token_id")
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    return eos, pad_token_id


def decoder_start_token(backbone) -> int:
    start = _backbone_token(backbone, "decoder_start_token_id")
    if start is None:
        start = _backbone_token(backbone, "pad_token_id")
    if start is None:
        raise UnsupportedModelError(
            f"{type(backbone).__name__} names no decoder_start_token_id; set "
            "backbone.config.decoder_start_token_id")
    return start


def _backbone_token(backbone, name: str):
    generation_config = getattr(backbone, "generation_config", None)
    value = getattr(generation_config, name, None)
    return value if value is not None else getattr(backbone.config, name, None)


def _device(module) -> torch.device:
    return next(module.parameters()).device

