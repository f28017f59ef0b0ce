"""Generation: cached steps equal full recomputes, beam search finds the best sequence, and a
trained tiny T5 generates the mapping it learned."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, tiny_backbone, tiny_inputs

from laddertune import InputError, LSTConfig, UnsupportedModelError, get_lst_model
from laddertune.generation import Decoder, beam_search, greedy_search, special_tokens

TASKS = {"t5": "SEQ_2_SEQ_LM", "bart": "SEQ_2_SEQ_LM", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}
NO_EOS = []  # never stop early, so every step is compared


def lst_lm(model_type, seed=0, **config):
    torch.manual_seed(seed)
    backbone = tiny_backbone(model_type, task="lm")
    config = {"reduction_factor": 4, "dropout": 0.0, **config}
    return get_lst_model(backbone, LSTConfig(task_type=TASKS[model_type], **config)).eval()


def greedy_by_recompute(model, inputs, steps):
    """Reference greedy search: the whole sequence through the model at every step, no cache."""
    seq2seq = model.config.task_type == "SEQ_2_SEQ_LM"
    if seq2seq:
        start = model.backbone.config.decoder_start_token_id
        sequences = torch.full((len(inputs["input_ids"]), 1), start)
    else:
        sequences = inputs["input_ids"]
    for _ in range(steps):
        if seq2seq:
            logits = model(**inputs, decoder_input_ids=sequences).logits
        else:
            mask = torch.cat([inputs["attention_mask"],
                              torch.ones(len(sequences), sequences.shape[1] - inputs[
                                  "attention_mask"].shape[1], dtype=torch.long)], dim=1)
            logits = model(input_ids=sequences, attention_mask=mask).logits
        sequences = torch.cat([sequences, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequences


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", list(TASKS))
def test_incremental_step_logits_equal_full_forward(model_type):
    model = lst_lm(model_type)
    inputs = tiny_inputs(model_type, batch=2, length=6)
    inputs["attention_mask"][0, -2:] = 1     # unpadded prompts: padding has its own test
    decoder = Decoder(model, inputs["input_ids"], inputs["attention_mask"], None, use_cache=True)
    sequences = decoder.start()
    with torch.no_grad():
        for _ in range(4):
            cached = decoder.next_log_probs(sequences)                 # one incremental step
            full = Decoder(model, inputs["input_ids"], inputs["attention_mask"], None,
                           use_cache=False).next_log_probs(sequences)  # whole sequence again
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
            sequences = torch.cat([sequences, cached.argmax(-1, keepdim=True)], dim=1)
    assert decoder.cache is not None and decoder.cache[0].get_seq_length() > 0
    assert decoder.cache[1].get_seq_length() > 0                       # side cache is used too


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", list(TASKS))
def test_cached_greedy_equals_recompute(model_type):
    model = lst_lm(model_type)
    inputs = tiny_inputs(model_type, batch=3, length=6)
    inputs["attention_mask"][0, -2:] = 1
    with torch.no_grad():
        expected = greedy_by_recompute(model, inputs, steps=6)
    generated = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS)
    assert torch.equal(generated, expected)
    uncached = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS, use_cache=False)
    assert torch.equal(uncached, expected)


def test_generic_side_blocks_generate_without_a_cache():
    model = lst_lm("gpt2", side_blocks="generic")
    inputs = tiny_inputs("gpt2", batch=2, length=6)
    inputs["attention_mask"][0, -2:] = 1
    with torch.no_grad():
        expected = greedy_by_recompute(model, inputs, steps=4)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, eos_token_id=NO_EOS), expected)


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_left_padded_prompt_generates_as_if_alone(model_type):
    model = lst_lm(model_type)
    long = torch.tensor([[5, 9, 13, 17, 21, 25]])
    short = torch.tensor([[7, 11, 19]])
    pad = 0
    batch = torch.cat([long, torch.cat([torch.full((1, 3), pad), short], dim=1)])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    together = model.generate(batch, mask, max_new_tokens=5, eos_token_id=NO_EOS)
    alone = model.generate(short, max_new_tokens=5, eos_token_id=NO_EOS)
    assert torch.equal(together[1, 3:], alone[0])
    assert torch.equal(together[0], model.generate(long, max_new_tokens=5, eos_token_id=NO_EOS)[0])


def test_right_padded_prompt_is_refused():
    model = lst_lm("gpt2")
    with pytest.raises(InputError, match="padding_side"):
        model.generate(torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]]))


def test_generate_needs_a_generative_task():
    backbone = tiny_backbone("t5", task="lm")
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_CLS", reduction_factor=4))
    with pytest.raises(UnsupportedModelError, match="SEQ_2_SEQ_LM"):
        model.generate(torch.tensor([[5, 6]]))


def test_eos_finishes_a_sequence_and_pad_fills_it():
    model = lst_lm("t5")
    inputs = tiny_inputs("t5", batch=3, length=6)
    free = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS)
    eos = int(free[0, 2])                             # a token row 0 generates by step 2
    stopped = model.generate(**inputs, max_new_tokens=6, eos_token_id=eos, pad_token_id=63)
    for row in range(3):                       # every row: identical up to its first eos, then pad
        hits = (free[row, 1:] == eos).nonzero()
        end = 1 + int(hits[0]) + 1 if len(hits) else free.shape[1]
        assert torch.equal(stopped[row, :end], free[row, :end])
        assert (stopped[row, end:] == 63).all()
    assert stopped.shape[1] < free.shape[1] or (stopped == 63).any()


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["t5", "gpt2"])
def test_one_beam_is_greedy(model_type):
    model = lst_lm(model_type)
    inputs = tiny_inputs(model_type, batch=3, length=6)
    inputs["attention_mask"][0, -2:] = 1
    eos, pad = special_tokens(model.backbone, NO_EOS)
    with torch.no_grad():
        greedy, greedy_scores = greedy_search(
            Decoder(model, inputs["input_ids"], inputs["attention_mask"], None, True), 5, eos, pad)
        beam, beam_scores = beam_search(
            Decoder(model, inputs["input_ids"], inputs["attention_mask"], None, True), 5, 1, eos,
            pad)
    assert torch.equal(beam, greedy)
    torch.testing.assert_close(beam_scores, greedy_scores)


def sequence_log_prob(model, inputs, sequence, eos):
    """Total log p of the new tokens of a T5 decoder sequence, by one full forward."""
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=sequence[None, :-1]).logits[0]
    log_probs = logits.log_softmax(-1).gather(1, sequence[1:, None]).squeeze(1)
    total = 0.0
    for token, log_prob in zip(sequence[1:].tolist(), log_probs.tolist()):
        total += log_prob
        if token == eos:
            break
    return total


def test_beam_search_returns_the_best_two_token_sequence():
    """With as many beams as tokens, two steps of beam search are exhaustive: compare with
    brute force over all vocab x vocab continuations (eos ends a sequence after one token)."""
    model = lst_lm("t5")
    inputs = {k: v[:1] for k, v in tiny_inputs("t5", batch=1, length=6).items()}
    eos = model.backbone.config.eos_token_id
    with torch.no_grad():
        first = model(**inputs, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long))
        first = first.logits[0, -1].log_softmax(-1)                        # (vocab,)
        prefixes = torch.stack([torch.zeros(VOCAB, dtype=torch.long), torch.arange(VOCAB)], 1)
        batch = {k: v.expand(VOCAB, -1) for k, v in inputs.items()}
        second = model(**batch, decoder_input_ids=prefixes).logits[:, -1].log_softmax(-1)
    totals = first[:, None] + second                                     # (vocab, vocab)
    totals[eos] = float("-inf")
    totals[eos, 0] = first[eos]                                          # eos, then padding
    best = int(totals.argmax())
    expected = [0, best // VOCAB, best % VOCAB]

    sequences, scores = model.generate(**inputs, max_new_tokens=2, num_beams=VOCAB,
                                       return_scores=True)
    assert sequences[0].tolist()[:len(expected)] == expected[:sequences.shape[1]]
    torch.testing.assert_close(scores[0], totals.max())


@pytest.mark.parametrize("early_eos", [False, True])
def test_beams_score_at_least_greedy_and_scores_are_true_log_probs(early_eos):
    model = lst_lm("t5", seed=0)
    with torch.no_grad():          # peakier next-token distributions, so greedy can go wrong
        model.up.weight.copy_(torch.randn(model.up.weight.shape,
                                          generator=torch.Generator().manual_seed(0)) * 0.3)
    inputs = tiny_inputs("t5", batch=3, length=6, seed=0)
    eos = 1
    if early_eos:  # the likeliest first token, so some beams finish early
        with torch.no_grad():
            start = torch.zeros(3, 1, dtype=torch.long)
            first = model(**inputs, decoder_input_ids=start).logits[:, -1]
        eos = int(first.log_softmax(-1).sum(0).argmax())
    greedy, greedy_scores = model.generate(**inputs, max_new_tokens=6, return_scores=True,
                                           eos_token_id=eos)
    beams, beam_scores = model.generate(**inputs, max_new_tokens=6, num_beams=4,
                                        return_scores=True, eos_token_id=eos)
    assert (beam_scores >= greedy_scores - 1e-5).all()
    assert (beam_scores > greedy_scores + 1e-3).any()      # beams found something better
    for row in range(3):
        one = {k: v[row:row + 1] for k, v in inputs.items()}
        recomputed = sequence_log_prob(model, one, beams[row], eos)
        assert abs(recomputed - float(beam_scores[row])) < 1e-4
        ended = (beams[row, 1:] == eos).nonzero()
        if len(ended):                                      # after eos: padding only
            assert (beams[row, 2 + int(ended[0]):] == 0).all()
    if early_eos:
        assert (beams[:, 1:] == eos).any()


@pytest.mark.slow
def test_trained_tiny_t5_learns_to_reverse_and_generates_it():
    """Reverse 3-token sequences: only the side network learns; greedy output is exact."""
    torch.manual_seed(0)
    backbone = tiny_backbone("t5", task="lm", d_model=64, d_ff=128, d_kv=16)
    # random side blocks: this tests generation, so it should not hinge on the default init
    model = get_lst_model(backbone, LSTConfig(task_type="SEQ_2_SEQ_LM", reduction_factor=2,
                                              dropout=0.0, side_init="random"))
    eos = backbone.config.eos_token_id
    generator = torch.Generator().manual_seed(0)
    symbols = torch.arange(3, 9)                                       # 6 symbols

    def batch(n):
        """(source + eos, reversed source + eos), as a T5 tokenizer would end both."""
        source = symbols[torch.randint(0, len(symbols), (n, 3), generator=generator)]
        end = torch.full((n, 1), eos)
        return torch.cat([source, end], dim=1), torch.cat([source.flip(1), end], dim=1)

    steps = 300
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    for _ in range(steps):
        source, target = batch(32)
        loss = model(input_ids=source, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert loss.item() < 0.05
    source, target = batch(64)
    generated = model.generate(source, max_new_tokens=8)
    assert generated.shape == (64, 5)              # start token, 3 tokens, eos: then it stops
    exact = (generated[:, 1:] == target).all(dim=1)
    # the side network alone learns the task; a rare slip on one row is training, not generation
    assert exact.sum() >= 62, f"{int(exact.sum())} of 64 reversed exactly"
    assert (generated[:, -1] == eos).all()
    assert model.training                          # generate restores the training mode


# ---- sampling and streaming ---------------------------------------------------------------------

def test_temperature_zero_is_greedy_and_a_seed_repeats_a_sample():
    model = lst_lm("llama")
    with torch.no_grad():
        model.up.weight *= 30                  # peaked enough that samples differ from greedy
    inputs = tiny_inputs("llama", batch=3, length=6)
    inputs["attention_mask"][0, -2:] = 1
    greedy = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS)
    assert torch.equal(model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS,
                                      temperature=0.0, top_p=0.5), greedy)
    first = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS, temperature=1.0,
                           seed=3)
    again = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS, temperature=1.0,
                           seed=3)
    other = model.generate(**inputs, max_new_tokens=6, eos_token_id=NO_EOS, temperature=1.0,
                           seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, greedy)


def test_a_tiny_top_p_keeps_only_the_likeliest_token():
    model = lst_lm("t5")
    inputs = tiny_inputs("t5", batch=3, length=6)
    greedy = model.generate(**inputs, max_new_tokens=5, eos_token_id=NO_EOS)
    for seed in range(3):
        sampled = model.generate(**inputs, max_new_tokens=5, eos_token_id=NO_EOS,
                                 temperature=2.0, top_p=1e-6, seed=seed)
        assert torch.equal(sampled, greedy)


def test_sampled_tokens_follow_the_tempered_distribution():
    """The sampler's choices, drawn many times from one distribution, match its frequencies."""
    from laddertune.generation import Sampler
    log_probs = torch.tensor([[0.6, 0.3, 0.1, 0.0]]).clamp_min(1e-9).log().expand(20000, -1)
    tokens = Sampler(temperature=1.0, top_p=1.0, seed=0, device=torch.device("cpu"))(log_probs)
    frequencies = torch.bincount(tokens, minlength=4) / len(tokens)
    torch.testing.assert_close(frequencies, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.015,
                               rtol=0)
    nucleus = Sampler(temperature=1.0, top_p=0.8, seed=0, device=torch.device("cpu"))(log_probs)
    assert set(nucleus.tolist()) == {0, 1}          # 0.6 + 0.3 reach 0.8: token 2 is cut
    sharp = Sampler(temperature=0.25, top_p=1.0, seed=0, device=torch.device("cpu"))(log_probs)
    assert (sharp == 0).float().mean() > 0.9        # 0.6^4 : 0.3^4 : 0.1^4 -> 94% token 0


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"temperature": 0.7, "num_beams": 2}, "do not combine")])
def test_bad_sampling_settings_are_refused(kwargs, message):
    model = lst_lm("gpt2")
    with pytest.raises(InputError, match=message):
        model.generate(torch.tensor([[5, 6, 7]]), **kwargs)


@pytest.mark.parametrize("num_beams, temperature", [(1, 0.0), (1, 1.0), (3, 0.0)])
def test_on_token_streams_every_new_token_in_order(num_beams, temperature):
    model = lst_lm("gpt2")
    prompt = torch.tensor([[5, 9, 13], [7, 11, 19]])
    streamed = []
    out = model.generate(prompt, max_new_tokens=4, eos_token_id=NO_EOS, num_beams=num_beams,
                         temperature=temperature, on_token=lambda t: streamed.append(t.clone()))
    assert len(streamed) == 4 and all(t.shape == (2,) for t in streamed)
    assert torch.equal(torch.stack(streamed, 1), out[:, 3:])
