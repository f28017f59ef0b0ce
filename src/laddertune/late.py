"""The late route (SHERL, DTL): the side network's output goes back into the backbone stream
before its top K layers, and those K layers are tuned.

For a stack of L layers, side blocks on layers below L - K, and x_l the output of layer l:

    s = side network over the ladders of layers < L - K       # (b, t, d/r)
    h = x_{L-K-1} + up(s)                                     # (b, t, d); up starts at zero
    for l in L-K .. L-1:
        h = top_l(h)                      # a trained copy of backbone layer l (or LoRA on it)
    y = final_norm(h)                     # a copy of the stack's norm after its layers, if any

The head reads y as it reads the backbone's own final state. Memory: autograd keeps activations
for the K top layers and the side network, none below; `full` adds the K layers' gradients and
optimizer state. The issue that asked for it expects it between LST and top-K LoRA (unmeasured).

Running backbone layers on a new hidden state is what is family-specific (attention-mask
formats, rotary or relative position inputs). The route does not rebuild those: while the frozen
backbone runs, `block_calls` records what the stack passed to each of its top K blocks, and each
trained copy is called with the same arguments and the new hidden state. A key/value cache in
them is dropped (the copies keep none; generation then reruns the whole prompt each step).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from . import backbones as bb

# keyword arguments of a block call that carry a key/value cache: the copies get none
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")


class LoRALinear(nn.Module):
    """A frozen Linear plus a trained low-rank correction: W x + B A x, B starting at zero."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)     # (.., in) -> (.., k)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)    # (.., k) -> (.., out)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=5 ** 0.5)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x))


class LateRoute(nn.Module):
    """Trained copies of a stack's top K layers and of its final norm (see module doc).

    Args:
        stack: the backbone stack (its weights are copied, never changed).
        family: its `backbones.Family`.
        k: how many top layers to tune.
        tuning: ``full`` (every weight of the copies trains) or ``lora`` (the copies stay
            frozen; a rank-`lora_rank` correction of each of their Linear layers trains).
        lora_rank: the rank of those corrections.
    """

    def __init__(self, stack: nn.Module, family: bb.Family, k: int, tuning: str,
                 lora_rank: int):
        super().__init__()
        blocks = bb.get_path(stack, family.layers)
        self.first_layer = len(blocks) - k                 # L - K
        self.blocks = nn.ModuleList(copy.deepcopy(blocks[i]) for i in range(self.first_layer,
                                                                             len(blocks)))
        self.final_norms = nn.ModuleList(copy.deepcopy(m) for m in final_norms(stack, family))
        if tuning == "lora":
            self.requires_grad_(False)
            for block in self.blocks:
                linears = [name for name, m in block.named_modules() if isinstance(m, nn.Linear)]
                for name in linears:
                    bb.set_path(block, name, LoRALinear(bb.get_path(block, name), lora_rank))

    def forward(self, hidden: torch.Tensor, calls: list[tuple[tuple, dict]]) -> torch.Tensor:
        """The top layers on `hidden` (b, t, d), each called as the backbone called its own
        (`calls`, from `block_calls`); then the final norm. Returns (b, t, d)."""
        dtype = hidden.dtype
        for block, (args, kwargs) in zip(self.blocks, calls):
            args, kwargs = _side_call(args, kwargs, dtype)
            if args:        # blocks take hidden_states first, by position or by name
                out = block(hidden, *args[1:], **kwargs)
            else:
                out = block(**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, tuple) else out          # (b, t, d)
        for norm in self.final_norms:
            hidden = norm(hidden)
        return hidden


def final_norms(stack: nn.Module, family: bb.Family) -> list[nn.Module]:
    """The norms a stack applies after its last layer (Llama's `norm`, GPT-2's `ln_f`, ViT's
    `layernorm`, OPT's `final_layer_norm`; BERT has none), read off the structure: the norm
    modules beside the layer list (in its parent, then in the stack) registered after it, or
    named final; poolers' norms (`family.side_unused`) left out. `final_norms_agree` tests
    the guess on the backbone itself."""
    path = family.layers.split(".")
    owners = [("", stack, path[0])]
    if len(path) > 1:
        owners.insert(0, (path[0] + ".", bb.get_path(stack, path[0]), path[1]))
    found = []
    for prefix, holder, child in owners:
        names = list(dict(holder.named_children()))
        for position, name in enumerate(names):
            module = getattr(holder, name)
            after = child in names and position > names.index(child)
            if ("Norm" in type(module).__name__ and (after or "final" in name)
                    and prefix + name not in family.side_unused):
                found.append(module)
    return found


def final_norms_agree(stack: nn.Module, family: bb.Family, norms: list[nn.Module]) -> bool:
    """Whether `norms` after the last block give the stack's own final state, tried on two
    tokens (a vision stack, or one on the meta device, with no values to try, is taken as
    read). Run it without autograd, in eval mode."""
    if family.kind == bb.VISION or next(stack.parameters()).is_meta:
        return True
    ids = torch.tensor([[1, 2]], device=next(stack.parameters()).device)
    last = bb.get_path(stack, family.layers)[-1]
    outputs = []
    handle = last.register_forward_hook(
        lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        final = stack(input_ids=ids, return_dict=True).last_hidden_state     # (1, 2, d)
    finally:
        handle.remove()
    hidden = outputs[-1]
    for norm in norms:
        hidden = norm(hidden)
    return hidden.shape == final.shape and torch.allclose(hidden, final, atol=1e-5, rtol=1e-4)


@contextlib.contextmanager
def block_calls(blocks):
    """Record the arguments of every call of each of `blocks` inside the `with` block: a
    list of (args, kwargs) in `blocks`' order (the last call of each). Forward pre-hooks on the
    user's backbone, removed on the way out; they change no value."""
    calls: list = [None] * len(blocks)

    def recorder(i):
        def record(module, args, kwargs):
            calls[i] = (args, kwargs)
        return record

    handles = [block.register_forward_pre_hook(recorder(i), with_kwargs=True)
               for i, block in enumerate(blocks)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _side_call(args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    """A recorded block call made fit for a trained copy: no key/value cache, and floating
    tensors (masks, rotary tables) detached, in the copy's dtype. Detached: a stack may pass
    a weight of its own as it is (DeBERTa's relative embeddings), which must get no gradient."""
    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().to(dtype)
        if isinstance(value, tuple):
            return tuple(cast(v) for v in value)
        return value

    kwargs = {k: (None if k in _CACHE_KWARGS else cast(v)) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return tuple(cast(a) for a in args), kwargs
