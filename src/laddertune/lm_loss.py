"""Cross-entropy through a frozen LM head that keeps no (tokens x vocab) tensor for backward.

With a vocabulary of 32k-150k, the logits dwarf a side network's activations: the usual
`cross_entropy(linear(h, W))` saves the logits' log-softmax, (n, V) floats, for backward. The head
is frozen in LST, so its gradient is never needed, and the gradient with respect to h is

    dL/dh = (softmax(h W^T + b) - onehot(y)) W / n_valid

which needs only h. `FrozenHeadCrossEntropy` saves h and recomputes the logits chunk by chunk in
backward: one extra matrix product, and memory for `chunk_size` rows of logits at a time. Rows
whose label is ignored (a prompt, padding) have no gradient and are not recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels` (-100 = ignore)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, logits, chunk_size):
        # hidden (n, d) with grad; weight (V, d), bias (V,) frozen; logits (n, V) already computed
        total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX,
                                reduction="sum")
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        ctx.save_for_backward(hidden, labels)
        ctx.head, ctx.count, ctx.chunk_size = (weight, bias), count, chunk_size
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, labels = ctx.saved_tensors
        weight, bias = ctx.head
        # ignored rows (prompts, padding) get no gradient: only the others are recomputed
        grad_hidden = torch.zeros_like(hidden)
        valid_rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        for start in range(0, len(valid_rows), ctx.chunk_size):
            rows = valid_rows[start:start + ctx.chunk_size]
            probs = F.linear(hidden[rows], weight, bias).float().softmax(-1)  # (chunk, V)
            probs[torch.arange(len(rows), device=probs.device), labels[rows]] -= 1.0
            grad_hidden[rows] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)  # (chunk, d)
        return grad_hidden * (grad_loss / ctx.count), None, None, None, None, None


def frozen_head_logits_and_loss(hidden: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None, labels: torch.Tensor | None,
                                shift: bool, chunk_size: int = 1024):
    """Logits of a frozen LM head, and their cross-entropy loss when labels are given.

    Args:
        hidden: (b, t, d) inputs to the head, with autograd.
        weight, bias: the frozen head, detached.
        labels: (b, t) target ids or None; -100 is ignored.
        shift: predict token t+1 from position t (causal LMs).
        chunk_size: rows of logits recomputed at once in backward.

    Returns:
        (logits (b, t, V), loss or None). With labels, the logits carry no autograd graph: the
        loss is the differentiable output. Without labels they do, for a loss of your own.
    """
    if labels is None:
        return F.linear(hidden.to(weight.dtype), weight, bias).float(), None
    with torch.no_grad():
        logits = F.linear(hidden.to(weight.dtype), weight, bias)           # (b, t, V)
    if shift:
        hidden, logits_for_loss, labels = hidden[:, :-1], logits[:, :-1], labels[:, 1:]
    else:
        logits_for_loss = logits
    vocab = logits.shape[-1]
    loss = FrozenHeadCrossEntropy.apply(
        hidden.to(weight.dtype).reshape(-1, hidden.shape[-1]), weight, bias,
        labels.reshape(-1), logits_for_loss.reshape(-1, vocab), chunk_size)
    return logits.float(), loss
