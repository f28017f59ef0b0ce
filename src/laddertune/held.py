"""Modules a model holds without registering them: the frozen backbone, a vision tower.

A held module is outside the holder's module tree, so `parameters()`, `state_dict()`, an
optimizer and DDP's all-reduce never see it: nothing trains, saves or synchronises the frozen
weights by accident. `HeldModules` is the one place that knows how they are kept; everyone else
asks `held_backbone()` or `held_modules()`.
"""

from __future__ import annotations

from torch import nn


class HeldModules:
    """Mixin for an `nn.Module` that holds modules outside its module tree.

    `held_names` lists the held modules that are frozen weights of the model: they follow the
    holder's `.to()` / `.half()` and count in `held_modules()`. A subclass may hold other modules
    (`_hold`) that stay where they are, such as a module it stands in for.
    """

    held_names: tuple[str, ...] = ()

    def _hold(self, name: str, module) -> None:
        object.__setattr__(self, name, module)   # plain attribute: not registered

    def _held(self, name: str):
        """The module held as `name`; None before it is held (in construction, or while
        torch copies the holder)."""
        return self.__dict__.get(name)

    def held_modules(self) -> list[nn.Module]:
        """The frozen modules this model holds outside its module tree."""
        return [m for m in (self._held(name) for name in self.held_names) if m is not None]

    def held_backbone(self) -> nn.Module | None:
        """The frozen backbone this model runs, held outside its module tree."""
        return self._held("backbone")

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for module in self.held_modules():
            module._apply(fn, recurse)
        return self


def held_modules(model: nn.Module) -> list[nn.Module]:
    """Every frozen module held anywhere inside `model` (a peft or DDP wrapper included), once."""
    found = {}
    for module in model.modules():
        if isinstance(module, HeldModules):
            found.update((id(m), m) for m in module.held_modules())
    return list(found.values())
