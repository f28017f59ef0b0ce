"""The one eval loop: every eval pass (after an epoch, in a sweep, in `laddertune eval`) walks
the examples in order, in batches, through it.

`states`, for a model that reads the backbone's states (LST), gives each batch's states
(`trainer.BackboneStates`: computed, or read from a cache); several models evaluated together
(a sweep) share them, so the backbone runs once per batch for all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .data import Encoded, collate


@contextlib.contextmanager
def evaluating(*models) -> Iterator[None]:
    """The models in eval mode, without autograd; each back in its own mode after."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def eval_batches(encoded, batch_size: int, pad_token_id: int, device: torch.device,
                 states=None, collate_fn=collate) -> Iterator[tuple[list[int], dict]]:
    """(indices, batch on `device`) of every example in order, with the backbone's states when
    `states` is given; after the last batch, `states` stores what a resumed run skipped."""
    for start in range(0, len(encoded), batch_size):
        indices = list(range(start, min(start + batch_size, len(encoded))))
        batch = {k: v.to(device) for k, v in collate_fn(encoded, indices, pad_token_id).items()}
        if states is not None:
            batch["backbone_hidden_states"] = states(indices, batch)
        yield indices, batch
    if states is not None:
        states.end_of_pass(encoded)


def predict_probs_together(models: list, encoded: Encoded, pad_token_id: int, batch_size: int,
                           device: torch.device, states=None) -> list[torch.Tensor]:
    """Each model's class probabilities of every example, in order: (n, num_labels) each."""
    probs = [[] for _ in models]
    with evaluating(*models):
        for _, batch in eval_batches(encoded, batch_size, pad_token_id, device, states):
            batch.pop("labels", None)
            for k, model in enumerate(models):
                logits = model(**batch).logits                                # (b, num_labels)
                probs[k].append(torch.softmax(logits.float(), -1).cpu())
    return [torch.cat(p) for p in probs]


def predict_probs(model, encoded: Encoded, pad_token_id: int, batch_size: int,
                  device: torch.device, states=None) -> torch.Tensor:
    """Class probabilities of every example, in order: (n, num_labels)."""
    return predict_probs_together([model], encoded, pad_token_id, batch_size, device, states)[0]
