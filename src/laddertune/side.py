"""The ladder side network: the only part of an LST model that learns.

For one backbone stack with kept layers l_1 < ... < l_n, hidden width d and side width d/r:

    h_0 = down_0(e)                                  # (b, t, d) -> (b, t, d/r); e = embeddings
    for k in 1..n:
        mu_k = sigmoid(alpha_k / T)                   # the gate: a scalar, or (d/r,) per channel
        h = mu_k * h + (1 - mu_k) * down_k(x_{l_k})   # x_l = output of backbone layer l
        h = side_block_k(h)                           # (b, t, d/r)
    h = final_norm(h)
    y = up(h)                                         # (b, t, d/r) -> (b, t, d), to the task head

down_k is one Linear(d -> d/r), or with `ladder_rank` k QST's low-rank ladder
LayerNorm(W_2 swish(W_1 x)) through k channels (`LowRankDown`); mu_k is one gate per block, or
with `gate_per_channel` one per side channel.

With `xladder_depth` delta the loop runs 2 delta more times after l_n, over the layers
L - delta, L - delta, ..., L - 1, L - 1 (xLadder: depth past the backbone's top, fed by its top
delta layers); the ladder's `kept_layers` lists every block's layer, repeats included.

x_l is transformers' `hidden_states[l + 1]`, except for a stack's last layer: there most families
report the output of their final norm, and with `ladder_last_layer="raw"` (the default, as the
reference code does) x_L is the last block's own output instead (`LSTModel.run_backbone`).

The ladder gets the backbone's states for one call by argument (`GenericSideStack`) or, where the
call goes through a Hugging Face model forward that cannot carry them, from a context:
`with ladder.reading(hidden_states): side_stack(...)`. Nothing is set on a module for the call.

The side blocks are the backbone's own block class, built from a copy of its config at width d/r
(`backbones.reduced_config`), inside a whole side model of the backbone's class. That model keeps
every detail of the family right (masks, rotary or relative positions, key/value caches,
cross-attention) without a line of per-family code here. Two small things make it a ladder:
its embedding module is replaced by `SideInput`, which hands it h_0, and a forward pre-hook on
each side block mixes the gated ladder in before the block runs. Whatever the family's model adds
after its token embedding (GPT-2, OPT and BART position embeddings, BART's embedding norm, CLIP's
pre-norm) then applies to h_0 too, with side-width weights that train with the rest.

When a family's model class cannot be built at width d/r (or `side_blocks="generic"`),
`GenericSideStack` runs the same loop with plain pre-norm transformer blocks, written out in full.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import DECODER, Family, get_path, set_path
from .held import HeldModules

# (ladder, backbone states) of every `Ladder.reading` under way, innermost last. A context
# variable: each thread (and asyncio task) sees its own calls, and no module holds the states.
_READINGS: ContextVar[tuple] = ContextVar("laddertune_ladder_readings", default=())


class LowRankDown(nn.Module):
    """QST's ladder: a low-rank adapter from the backbone's width to the side's, normalised.

        down(x) = LayerNorm(W_2 swish(W_1 x))     # (b, t, d) -> (b, t, k) -> (b, t, d/r)

    (d + 1) k + (k + 3) d/r parameters instead of the full projection's (d + 1) d/r: with k
    fixed, a wider side network (smaller r) costs little more in ladders.
    """

    def __init__(self, width: int, rank: int, side_width: int):
        super().__init__()
        self.inner = nn.Linear(width, rank)                 # (b, t, d) -> (b, t, k)
        self.outer = nn.Linear(rank, side_width)            # (b, t, k) -> (b, t, d/r)
        self.norm = nn.LayerNorm(side_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.outer(F.silu(self.inner(x))))


class Projected(tuple):
    """The ladder's inputs already down-projected, in place of the backbone's states: entry i
    is down_i's output, (b, t, d/r), for i = 0 (the embeddings' h_0) .. n. Several side
    networks that read one batch's states get theirs this way from one matmul per layer
    (`LSTModel`'s stacked calls) instead of one each."""


class Ladder(nn.Module):
    """Down-projections and gates from one backbone stack into one side stack.

    Args:
        width: backbone hidden width d.
        side_width: side hidden width d/r.
        kept_layers: backbone layers that feed the side stack, one side block each.
        temperature: T in mu = sigmoid(alpha / T).
        alpha_init: starting alpha (0 gives mu = 0.5).
        learnable_gates: train alpha (True) or keep it fixed as a buffer (False).
        rank: None: each ladder is one Linear(d -> d/r); k: QST's `LowRankDown` of rank k.
        per_channel_gates: one alpha per side channel, (n, d/r), instead of one per block, (n,).
    """

    def __init__(self, width: int, side_width: int, kept_layers: list[int], temperature: float,
                 alpha_init: float, learnable_gates: bool, rank: int | None = None,
                 per_channel_gates: bool = False):
        super().__init__()
        self.kept_layers = list(kept_layers)
        self.temperature = temperature
        # down[0] reads the embeddings, down[k] the output of backbone layer kept_layers[k-1]
        self.down = nn.ModuleList(
            (nn.Linear(width, side_width) if rank is None else LowRankDown(width, rank, side_width))
            for _ in range(len(kept_layers) + 1))
        for proj in self.down:
            for linear in (m for m in proj.modules() if isinstance(m, nn.Linear)):
                nn.init.normal_(linear.weight, std=0.01)
                nn.init.zeros_(linear.bias)
        shape = (len(kept_layers), side_width) if per_channel_gates else (len(kept_layers),)
        alphas = torch.full(shape, float(alpha_init))
        if learnable_gates:
            self.gate_alphas = nn.Parameter(alphas)
        else:
            self.register_buffer("gate_alphas", alphas)

    def gates(self) -> torch.Tensor:
        """mu_k = sigmoid(alpha_k / T) for every side block, (n,) or per channel (n, d/r)."""
        return torch.sigmoid(self.gate_alphas / self.temperature)

    def first(self, embeddings: torch.Tensor) -> torch.Tensor:
        """h_0 = down_0(embeddings): (b, t, d) -> (b, t, d/r)."""
        return self.down[0](embeddings.to(self.gate_alphas.dtype))

    def start(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """h_0 from the backbone's states, or given in `Projected` ones: (b, t, d/r)."""
        if isinstance(hidden_states, Projected):
            return hidden_states[0]
        return self.first(hidden_states[0])

    def mix(self, k: int, side_hidden: torch.Tensor, hidden_states: Sequence[torch.Tensor]
            ) -> torch.Tensor:
        """Gate the ladder from backbone layer kept_layers[k] into the side stream."""
        if isinstance(hidden_states, Projected):
            ladder = hidden_states[k + 1]                                  # (b, t, d/r)
        else:
            # hidden_states[l + 1] is the output of backbone layer l
            backbone_out = hidden_states[self.kept_layers[k] + 1]         # (b, t, d)
            ladder = self.down[k + 1](backbone_out.to(self.gate_alphas.dtype))  # (b, t, d/r)
        mu = self.gates()[k]                                   # () or (d/r,), over (b, t, d/r)
        return mu * side_hidden + (1 - mu) * ladder

    @contextlib.contextmanager
    def reading(self, hidden_states: Sequence[torch.Tensor]):
        """Hand the backbone's states (embeddings, then every layer's output) to this ladder's
        side stack while it runs inside the `with` block."""
        if not isinstance(hidden_states, Projected):
            hidden_states = tuple(hidden_states)
        token = _READINGS.set((*_READINGS.get(), (self, hidden_states)))
        try:
            yield
        finally:
            _READINGS.reset(token)

    def read(self) -> tuple[torch.Tensor, ...]:
        """The states (or `Projected` ladder inputs) of the innermost `reading` of this
        ladder."""
        for ladder, hidden_states in reversed(_READINGS.get()):
            if ladder is self:
                return hidden_states
        raise RuntimeError("a side stack ran outside ladder.reading(hidden_states)")  # internal


class SideInput(HeldModules, nn.Module):
    """Stands where the side model's embedding module was and returns h_0 = down_0(e).

    Some model forwards read an attribute off their embedding module (ViT reads the patch
    projection's dtype); those reads go to the replaced module, kept but not registered, so its
    unused weights are neither trained nor saved.
    """

    def __init__(self, ladder: Ladder, replaced: nn.Module):
        super().__init__()
        # held, not registered; neither is a frozen weight of the side stack (`held_names`)
        self._hold("ladder", ladder)
        self._hold("replaced", replaced)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        ladder = self._held("ladder")
        return ladder.start(ladder.read())

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._held("replaced"), name)


def attach_ladder(side_stack: nn.Module, family: Family, ladder: Ladder) -> None:
    """Make a side model of the backbone's class into a ladder side stack (see module doc)."""
    set_path(side_stack, family.side_input,
             SideInput(ladder, get_path(side_stack, family.side_input)))
    blocks = get_path(side_stack, family.layers)
    if len(blocks) != len(ladder.kept_layers):
        raise RuntimeError(f"side stack has {len(blocks)} blocks for {len(ladder.kept_layers)} "
                           "kept layers")  # an internal invariant, not a user error
    for k, block in enumerate(blocks):
        # a partial of a module-level function, so deepcopy and pickle carry the hook along
        block.register_forward_pre_hook(functools.partial(_mix_hook, ladder, k), with_kwargs=True)


def _mix_hook(ladder: Ladder, k: int, block: nn.Module, args: tuple, kwargs: dict):
    """Before side block k: h <- mu_k * h + (1 - mu_k) * down_k(x_{l_k})."""
    states = ladder.read()
    if args:  # blocks take hidden_states first, by position or by name
        return (ladder.mix(k, args[0], states), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": ladder.mix(k, kwargs["hidden_states"], states)}


def drop_unused(side_model: nn.Module, paths: tuple[str, ...]) -> None:
    """Replace side submodules the task never reads (poolers, tied vocab) by Identity."""
    for path in paths:
        try:
            get_path(side_model, path)
        except AttributeError:
            continue
        set_path(side_model, path, nn.Identity())


def set_attention_dropout(side_model: nn.Module, rate: float) -> None:
    """Set the dropout on attention probabilities of every side attention module to `rate`.

    Above 0, fused attention falls back to a kernel that keeps the (t x t) attention matrix and
    its dropout mask for backward, as large as the backbone's. `reduced_config` sets the config
    fields named for attention; this catches families with one shared rate (T5's dropout_rate).
    """
    for module in side_model.modules():
        if "Attention" in type(module).__name__:
            for name in ("dropout", "attention_dropout", "dropout_rate", "dropout_prob"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, rate)


class GenericSideBlock(nn.Module):
    """A pre-norm transformer block at side width, for families whose own block can't be built."""

    def __init__(self, width: int, heads: int, dropout: float, attention_dropout: float,
                 causal: bool):
        super().__init__()
        self.heads, self.causal, self.attention_dropout = heads, causal, attention_dropout
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attend(self.ln_1(x), pad_mask)
        x = x + self.mlp(self.ln_2(x))
        return x

    def attend(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        mask = None                                                    # (b, 1, t, t) or None
        if pad_mask is not None:
            mask = pad_mask[:, None, None, :].bool()
            if self.causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            mask = mask | torch.eye(t, dtype=torch.bool, device=x.device)  # no empty rows (NaN)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=self.causal and mask is None)                    # (b, h, t, c/h)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GenericSideStack(nn.Module):
    """The ladder loop written out, with `GenericSideBlock`s. No key/value cache."""

    def __init__(self, ladder: Ladder, side_width: int, heads: int, dropout: float,
                 attention_dropout: float, kind: str):
        super().__init__()
        self.ladder = [ladder]  # in a list: the LSTModel registers the ladder, not this stack
        self.blocks = nn.ModuleList(
            GenericSideBlock(side_width, heads, dropout, attention_dropout, causal=kind == DECODER)
            for _ in ladder.kept_layers)
        self.final_norm = nn.LayerNorm(side_width)

    def forward(self, hidden_states: Sequence[torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The side output (b, t, d/r) from the backbone's states: embeddings, layer outputs."""
        ladder = self.ladder[0]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None    # no padding: SDPA's fused kernels keep no (t, t) weights
        h = ladder.start(hidden_states)                # (b, t, d/r)
        for k, block in enumerate(self.blocks):
            h = ladder.mix(k, h, hidden_states)        # gated ladder from backbone layer l_k
            h = block(h, attention_mask)               # (b, t, d/r)
        return self.final_norm(h)


def generic_heads(side_width: int, backbone_heads: int | None) -> int:
    """Heads for a generic block: the backbone's count if it divides d/r, else fewer."""
    heads = backbone_heads or 1
    while side_width % heads:
        heads -= 1
    return heads
