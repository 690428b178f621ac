"""Mobile rewrites: small registered units that swap modules before capture (issue 4 fills the
registry). Each says which targets it is for, whether it keeps numerics, and how many places it
changed; a requested rewrite that matches nothing is an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import InputError, UnknownNameError


@dataclass(frozen=True)
class Rewrite:
    name: str
    targets: tuple[str, ...]
    keeps_numerics: bool
    description: str
    apply: Callable[[str, nn.Module], int]  # (component name, module) -> places changed


REGISTRY: dict[str, Rewrite] = {}
DEFAULTS: dict[str, tuple[str, ...]] = {"coreml": (), "tflite": (), "onnx": ()}


def register(rewrite: Rewrite) -> Rewrite:
    REGISTRY[rewrite.name] = rewrite
    return rewrite


def resolve(target: str, requested: list[str] | None) -> list[str]:
    """The rewrites to run for a target: the requested ones, or the target's defaults."""
    names = list(DEFAULTS.get(target, ())) if requested is None else list(requested)
    for n in names:
        if n.split("=")[0] not in REGISTRY:
            raise UnknownNameError("rewrite", n, REGISTRY)
    return names


def apply_rewrites(modules: dict[str, nn.Module], names: list[str], target: str) -> list[dict]:
    """Apply each rewrite to every component; return one record per rewrite."""
    records = []
    for n in names:
        rw = REGISTRY[n.split("=")[0]]
        counts = {comp: rw.apply(comp, m) for comp, m in modules.items()}
        total = sum(counts.values())
        if total == 0:
            raise InputError(f"rewrite '{n}' matched nothing in {', '.join(modules)} for {target}")
        records.append({"name": n, "keeps_numerics": rw.keeps_numerics, "changed": {k: v for k, v in counts.items() if v}})
    return records
