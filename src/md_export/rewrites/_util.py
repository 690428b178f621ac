"""Module-tree helpers shared by the rewrites: find modules by type, swap one in place."""

from __future__ import annotations

from typing import Callable, Iterator

from torch import nn


def walk(root: nn.Module, kind: type | tuple[type, ...]) -> Iterator[tuple[str, nn.Module]]:
    for name, m in root.named_modules():
        if isinstance(m, kind):
            yield name, m


def swap(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def swap_all(root: nn.Module, kind, make: Callable[[nn.Module], nn.Module | None], *, exact: bool = False) -> int:
    """Swap every module of ``kind`` for ``make(module)`` (None = leave it); return how many."""
    found = [(n, m) for n, m in walk(root, kind) if n and (not exact or type(m) in (kind if isinstance(kind, tuple) else (kind,)))]
    count = 0
    for name, m in found:
        new = make(m)
        if new is not None:
            swap(root, name, new)
            count += 1
    return count


def diffusers_attention_class():
    from diffusers.models.attention_processor import Attention

    return Attention
