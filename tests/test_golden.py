"""Golden values: whole-model outputs of a seeded tiny LSTModel for every family.

Each case builds a tiny random backbone (seed 0), an LSTModel with the default config at r = 4
(seed 0), runs fixed inputs in eval mode and compares the logits (a slice, their mean and
standard deviation) and the loss with `golden_values.json`, stored beside this file. A change that
moves any number (initialisation, pruning, the ladder, a task head) fails here.

When a change is meant to move them, regenerate and review the diff of the JSON file:

    PYTHONPATH=src python tests/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, when run as a script

from tiny_models import (  # noqa: E402
    ALL_FAMILIES,
    DECODER_FAMILIES,
    SEQ2SEQ_FAMILIES,
    VISION_FAMILIES,
    tiny_backbone,
    tiny_inputs,
)

from laddertune import LSTConfig, get_lst_model  # noqa: E402

GOLDEN_FILE = Path(__file__).with_name("golden_values.json")
CASES = ([f"{model_type}/SEQ_CLS" for model_type in [*sorted(ALL_FAMILIES), "mpnet"]]
         + [f"{model_type}/CAUSAL_LM" for model_type in sorted(DECODER_FAMILIES)]
         + [f"{model_type}/SEQ_2_SEQ_LM" for model_type in sorted(SEQ2SEQ_FAMILIES)])
pytestmark = pytest.mark.numerics
RTOL, ATOL = 1e-5, 1e-6    # float32 rounding on another BLAS or kernel; far below a change


def outputs(case: str, **config) -> dict[str, list[float] | float]:
    """The numbers a case pins: a slice of the logits, their mean and std, the loss."""
    model_type, task = case.split("/")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone = tiny_backbone(model_type, task="lm" if "LM" in task else "bare")
    torch.manual_seed(0)
    model = get_lst_model(backbone, LSTConfig(task_type=task, reduction_factor=4, **config))
    inputs = tiny_inputs("bert" if model_type == "mpnet" else model_type)
    if task != "SEQ_CLS":
        labels = inputs["input_ids"]
    elif model_type in VISION_FAMILIES:
        labels = (inputs["pixel_values"][:, 0].mean(dim=(1, 2)) > 0).long()
    else:
        labels = inputs["input_ids"][:, 1] % 2
    with torch.no_grad():
        out = model.eval()(**inputs, labels=labels)
    logits = out.logits.double()
    return {"logits_slice": logits.reshape(-1)[:8].tolist(),
            "logits_mean": logits.mean().item(), "logits_std": logits.std().item(),
            "loss": out.loss.item()}


def _goldens() -> dict:
    return json.loads(GOLDEN_FILE.read_text())


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_the_golden_values(case):
    golden = _goldens()[case]
    for name, value in outputs(case).items():
        torch.testing.assert_close(torch.tensor(value, dtype=torch.float64),
                                   torch.tensor(golden[name], dtype=torch.float64),
                                   rtol=RTOL, atol=ATOL, msg=f"{case} {name}")


def test_every_case_has_a_golden_value():
    assert sorted(_goldens()) == sorted(CASES)


def test_the_goldens_catch_a_change_in_what_the_last_ladder_reads():
    """Not trivially tolerant: reading the final norm's output instead moves the numbers."""
    golden = _goldens()["llama/CAUSAL_LM"]
    moved = outputs("llama/CAUSAL_LM", ladder_last_layer="normed")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(torch.tensor(moved["logits_slice"], dtype=torch.float64),
                                   torch.tensor(golden["logits_slice"], dtype=torch.float64),
                                   rtol=RTOL, atol=ATOL)


def regenerate() -> None:
    goldens = {case: outputs(case) for case in CASES}
    GOLDEN_FILE.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(goldens)} cases to {GOLDEN_FILE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: PYTHONPATH=src python tests/test_golden.py --regenerate")
    regenerate()
