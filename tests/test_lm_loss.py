"""The frozen-head cross-entropy: same loss and gradient as the textbook one, less kept."""

import pytest
import torch
import torch.nn.functional as F

from laddertune.app.memory import SavedTensorMeter
from laddertune.lm_loss import frozen_head_logits_and_loss


def reference(hidden, weight, bias, labels, shift):
    logits = F.linear(hidden, weight, bias)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


@pytest.mark.numerics
def test_loss_and_gradient_match_plain_cross_entropy():
    torch.manual_seed(0)
    weight, bias = torch.randn(50, 8), torch.randn(50)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :2] = -100
    for shift in (False, True):
        hidden = torch.randn(3, 7, 8, requires_grad=True)
        logits, loss = frozen_head_logits_and_loss(hidden, weight, bias, labels, shift,
                                                   chunk_size=4)
        loss.backward()
        expected_grad, hidden.grad = hidden.grad, None
        expected = reference(hidden, weight, bias, labels, shift)
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(expected_grad, hidden.grad)
        torch.testing.assert_close(logits, F.linear(hidden, weight, bias).detach())


def test_no_vocabulary_sized_tensor_is_saved():
    weight, bias = torch.randn(1000, 8), torch.zeros(1000)
    hidden = torch.randn(2, 16, 8, requires_grad=True)
    with SavedTensorMeter() as meter:
        _, loss = frozen_head_logits_and_loss(hidden, weight, bias,
                                              torch.randint(0, 1000, (2, 16)), shift=True)
    assert not [shape for shape in meter.shapes if 1000 in shape]
    loss.backward()
    assert hidden.grad is not None and weight.grad is None


def test_without_labels_logits_keep_their_graph():
    hidden = torch.randn(1, 3, 8, requires_grad=True)
    logits, loss = frozen_head_logits_and_loss(hidden, torch.randn(20, 8), None, None, False)
    assert loss is None and logits.requires_grad
