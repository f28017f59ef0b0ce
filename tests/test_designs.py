"""The side-network designs of later work, each an LSTConfig option (docs/design.md): shapes,
parameter counts, training only what the design trains, save and reload, on several families.
Also: a warm-up asked for is never 0 steps."""

from __future__ import annotations

import pytest

from laddertune.app.trainer import warmup_steps


@pytest.mark.parametrize("ratio, total, expected", [
    (0.1, 8, 1),        # int(0.8) would be 0: the generation demo's short runs had no warm-up
    (0.1, 100, 10),
    (0.0, 100, 0),      # none asked for: none
    (0.5, 1, 1),
])
def test_a_warmup_asked_for_is_at_least_one_step(ratio, total, expected):
    assert warmup_steps(ratio, total) == expected
