"""The linear probe: the floor of every frozen-backbone method (`--method probe`).

A multinomial logistic regression with an L2 penalty on the frozen backbone's pooled final
state: the mean of the non-padding tokens for encoders, the last one for decoders, the first
for vision models (each family's `backbones.Family.pooling`, as LST's head pools). Encoder-
decoders are probed on their encoder.

It is fitted, not stepped: full-batch L-BFGS in float64 on standardised features, to a
gradient norm below `GRAD_TOLERANCE`, once for every value of the penalty in `C_GRID`
(scikit-learn's C: the loss summed over examples, plus half the squared weights over C). The
eval split chooses C (accuracy, then macro-F1, then the lower eval loss), and metrics.json
records the grid, each value's eval scores, the chosen one, and each fit's iterations and final
gradient norm. A weak probe would make every comparison with it meaningless, so each fit is
checked for convergence.

The probe reads the backbone the way LST does (`backbone_states`), so `--cache-backbone`
caches its features. The training loop calls `fit_probe` once instead of its epochs
(`methods.Method.fit`). The model keeps the standardisation apart from the linear layer (the
features' training mean and scale as buffers), and `probe.safetensors` saves all four:
folding a scale near zero into the weights (W / s) would cancel catastrophically in float32.
A feature whose training spread is below `SCALE_FLOOR` of the typical one is scaled by that
floor: it carries no signal, and dividing by its own spread would turn the noise of another
split (or of a float16 cache) into huge logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import backbones as bb
from ..checkpoint import backbone_fingerprint, load_weights, save_weights
from ..errors import CheckpointError
from ..held import HeldModules
from ..model import LSTOutput, frozen
from .evaluation import eval_batches
from .report import classification_metrics

PROBE_WEIGHTS = "probe.safetensors"
SCALE_FLOOR = 1e-3     # of the mean feature spread: below it a feature is scaled by the floor
C_GRID = tuple(10.0 ** e for e in range(-4, 3))   # 1e-4 .. 1e2, weakest penalty last
GRAD_TOLERANCE = 1e-6     # the largest gradient entry of the mean objective at convergence
MAX_ITERATIONS = 5000


@dataclass(frozen=True)
class ProbeSettings:
    """What the backbone-state cache reads off a model (`cache.cache_key`): the probe's
    backbone never runs with dropout, and it reads the final state ("final")."""

    num_labels: int
    task_type: str = "SEQ_CLS"
    backbone_dropout: bool = False
    ladder_last_layer: str = "final"


class ProbeModel(HeldModules, nn.Module):
    """A linear classifier on the frozen backbone's pooled final state.

    Holds the backbone outside its module tree (`held.HeldModules`): only `classifier` is a
    parameter. Takes the inputs every method takes and, like LST, `backbone_hidden_states`
    (what `backbone_states` returns, or a cache of it) in place of running the backbone.
    """

    held_names = ("backbone",)

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        self._hold("backbone", backbone)
        for param in backbone.parameters():
            param.requires_grad_(False)
        self.family = bb.detect_family(backbone)
        self.stacks = bb.backbone_stacks(backbone, self.family)[:1]   # an encoder-decoder's encoder
        self.layers = bb.num_layers(self.stacks[0], self.family)
        self.width = bb.model_width(backbone.config)
        self.config = ProbeSettings(num_labels)
        self.classifier = nn.Linear(self.width, num_labels)
        # the features' standardisation, fitted with the classifier: (x - mean) / scale
        self.register_buffer("feature_mean", torch.zeros(self.width))
        self.register_buffer("feature_scale", torch.ones(self.width))

    def ladder_inputs(self, index: int = 0) -> list[int]:
        """The one state read: the final one, at index L of the (L + 1) states."""
        return [self.layers]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameters, the frozen backbone counted in all."""
        trainable = sum(p.numel() for p in self.classifier.parameters())
        return trainable, trainable + sum(p.numel() for p in self.backbone.parameters())

    def fingerprint(self) -> dict:
        return backbone_fingerprint(self.backbone.config, self.stacks)

    @torch.no_grad()
    def backbone_states(self, input_ids=None, attention_mask=None, pixel_values=None,
                        token_type_ids=None, **_) -> tuple[tuple, ...]:
        """The backbone's final state, (b, t, d), at index L of one stack's tuple (None
        elsewhere), the layout LST's cache keeps."""
        inputs = {"pixel_values": pixel_values} if pixel_values is not None else {
            "input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with frozen(self.backbone):
            final = self.stacks[0](**inputs, return_dict=True).last_hidden_state
        return ((None,) * self.layers + (final,),)

    def features(self, attention_mask=None, backbone_hidden_states=None, **inputs
                 ) -> torch.Tensor:
        """The pooled final state, (b, d): from the given states, or the backbone's."""
        states = backbone_hidden_states
        if states is None:
            states = self.backbone_states(attention_mask=attention_mask, **inputs)
        if isinstance(states[0], torch.Tensor):     # one stack's tuple, passed bare
            states = (states,)
        return pool(states[0][self.layers].float(), attention_mask, self.family.pooling)

    def forward(self, input_ids=None, attention_mask=None, labels=None,
                backbone_hidden_states=None, **inputs) -> LSTOutput:
        features = self.features(attention_mask, backbone_hidden_states, input_ids=input_ids,
                                 **inputs)                                       # (b, d)
        logits = self.classifier((features - self.feature_mean) / self.feature_scale)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return LSTOutput(loss, logits, None, None)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per sequence, (b, t, d) -> (b, d): the mean of the non-padding tokens, the
    first token, or the last non-padding one."""
    if pooling == "mean":
        if mask is None:
            return hidden.mean(1)
        weights = mask.to(hidden.dtype)[..., None]                            # (b, t, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "first":
        return hidden[:, 0]
    if mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (mask.to(positions.dtype) * positions).argmax(-1)             # last non-padding index
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


# ---- the fit ------------------------------------------------------------------------------------

def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_labels: int, c: float,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias), by
    full-batch L-BFGS with a strong-Wolfe line search, in float64.

    Minimises scikit-learn's objective divided by C * n (the same minimum, a scale that does not
    grow with n): mean cross-entropy + |W|^2 / (2 C n).

    Args:
        x: (n, d) standardised features; y: (n,) class indices.
        c: the inverse penalty strength, as scikit-learn's C.
        start: (weight, bias) to start from (the previous C's solution: a warm start).

    Returns:
        {"weight" (k, d), "bias" (k,), "iterations", "grad_norm" (largest entry of the final
        gradient), "converged", "objective"}.
    """
    x, y = x.double(), y.long()
    n, d = x.shape
    weight = torch.zeros(num_labels, d, dtype=torch.float64)
    bias = torch.zeros(num_labels, dtype=torch.float64)
    if start is not None:
        weight, bias = (t.detach().clone().double() for t in start)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    penalty = 1.0 / (2.0 * c * n)
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=MAX_ITERATIONS,
                               max_eval=2 * MAX_ITERATIONS, history_size=20,
                               tolerance_grad=GRAD_TOLERANCE, tolerance_change=0.0,
                               line_search_fn="strong_wolfe")

    def objective():
        solver.zero_grad()
        loss = (nn.functional.cross_entropy(x @ weight.T + bias, y)
                + penalty * weight.pow(2).sum())
        loss.backward()
        return loss

    solver.step(objective)
    loss = objective()
    grad_norm = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    iterations = solver.state[solver._params[0]]["n_iter"]
    return {"weight": weight.detach(), "bias": bias.detach(), "iterations": iterations,
            "grad_norm": grad_norm, "converged": grad_norm <= GRAD_TOLERANCE,
            "objective": loss.item()}


def _features(model: ProbeModel, encoded, run, states) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) pooled features and (n,) labels of every example of `encoded`, in order,
    through `states` (computed, or read from the cache, which a first pass completes)."""
    rows = []
    with torch.no_grad():
        for _, batch in eval_batches(encoded, run.cfg.eval_batch_size, run.pad, run.device,
                                     states, run.task.collate):
            batch.pop("labels", None)
            rows.append(model.features(**batch).cpu())
    return torch.cat(rows), torch.as_tensor(encoded.labels, dtype=torch.long)


def fit_probe(run) -> dict:
    """Fit `run.model` (a `ProbeModel`) on `run`'s training set for every C of `C_GRID`, keep
    the one the eval set scores best, and return the record metrics.json keeps as "fit"."""
    model: ProbeModel = run.model
    x, y = _features(model, run.train_set, run, run.train_states)
    x_eval, y_eval = _features(model, run.eval_set, run, run.eval_states)
    mean = x.double().mean(0)
    spread = x.double().std(0, unbiased=False)
    scale = spread.clamp(min=max(SCALE_FLOOR * spread.mean().item(), 1e-12))
    standard, standard_eval = (x.double() - mean) / scale, (x_eval.double() - mean) / scale
    num_labels = model.config.num_labels
    grid, solutions, start = [], [], None
    for c in C_GRID:              # strongest penalty first: each solution warm-starts the next
        fit = fit_logistic(standard, y, num_labels, c, start)
        start = (fit["weight"], fit["bias"])
        probs = torch.softmax(standard_eval @ fit["weight"].T + fit["bias"], -1).float()
        scores = classification_metrics(probs, y_eval, run.labels)
        grid.append({"C": c, "eval_accuracy": scores["accuracy"],
                     "eval_macro_f1": scores["macro_f1"], "eval_loss": scores["loss"],
                     "iterations": fit["iterations"],
                     "grad_norm": fit["grad_norm"], "converged": fit["converged"],
                     "objective": fit["objective"]})
        solutions.append(fit)
    best = max(range(len(grid)), key=lambda i: (grid[i]["eval_accuracy"],
                                               grid[i]["eval_macro_f1"], -grid[i]["eval_loss"]))
    weight, bias = solutions[best]["weight"], solutions[best]["bias"]
    with torch.no_grad():
        model.classifier.weight.copy_(weight.float())
        model.classifier.bias.copy_(bias.float())
        model.feature_mean.copy_(mean.float())
        model.feature_scale.copy_(scale.float())
    return {"solver": "L-BFGS (float64, full batch, standardised features)",
            "objective": "mean cross-entropy + |W|^2 / (2 C n)",
            "grad_tolerance": GRAD_TOLERANCE, "chosen_C": C_GRID[best],
            "chosen_by": "eval accuracy, then macro-F1, then eval loss",
            "all_converged": all(g["converged"] for g in grid), "grid": grid}


# ---- build, save, load --------------------------------------------------------------------------

def build_probe(task_model: nn.Module, settings) -> ProbeModel:
    return ProbeModel(task_model, settings.num_labels)


def save_probe(model: ProbeModel, directory: Path) -> None:
    save_weights({**dict(model.classifier.named_parameters()),
                  "feature_mean": model.feature_mean, "feature_scale": model.feature_scale},
                 Path(directory) / PROBE_WEIGHTS)


def load_probe(task_model: nn.Module, directory: Path) -> ProbeModel:
    state = load_weights(Path(directory) / PROBE_WEIGHTS)
    weight = state.get("weight")
    if weight is None or "bias" not in state or weight.dim() != 2:
        raise CheckpointError(f"{Path(directory) / PROBE_WEIGHTS} holds no probe (weight, "
                              "bias); train the run again")
    model = ProbeModel(task_model, weight.shape[0])
    if weight.shape[1] != model.width:
        raise CheckpointError(f"{Path(directory) / PROBE_WEIGHTS} is a probe of width "
                              f"{weight.shape[1]}, not this backbone's {model.width}; load it "
                              "with the model it was trained on")
    # probes saved before the standardisation was kept apart hold it folded in: mean 0, scale 1
    for name in ("feature_mean", "feature_scale"):
        value = state.pop(name, None)
        if value is not None:
            if value.shape != (model.width,):
                raise CheckpointError(f"{Path(directory) / PROBE_WEIGHTS} holds a {name} of "
                                      f"shape {tuple(value.shape)}, not ({model.width},); "
                                      "train the run again")
            getattr(model, name).copy_(value)
    model.classifier.load_state_dict(state)
    return model.eval()
