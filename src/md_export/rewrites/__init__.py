"""Mobile rewrites: small registered units that swap modules before capture.

Each rewrite says which targets it is for, whether it keeps numerics (equal up to float
rounding) or changes them (then it runs only when asked for by name, and the manifest records
it), what it matches, and its apply step returns how many places it changed. A requested rewrite
that matches nothing is an error saying why. Rewrites swap modules (or set a diffusers attention
processor) on copies of the reference modules; no global switches, no load_state_dict hooks:
when a weight changes shape it is reshaped visibly at the swap.

Names may carry a family before '=' (``attention=split-einsum``); a family takes one value per
target, so ``--rewrite attention=original`` replaces the default ``attention=split-einsum``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

from torch import nn

from ..errors import InputError, UnknownNameError


@dataclass(frozen=True)
class Rewrite:
    name: str
    targets: tuple[str, ...]
    keeps_numerics: bool
    description: str
    apply: Callable[[str, nn.Module], int]  # (component name, module) -> places changed
    matches: str = ""  # what it looks for, in words (shown by `md-export rewrites`)
    no_match: str = ""  # why it can match nothing (the error's reason)
    order: int = 100  # rewrites run in this order, whatever order they were asked for in
    lowering: Callable[[], ContextManager] | None = None  # a scope around the backend's lowering
    lowering_extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # merged into LowerOptions.extra (backend hints)

    @property
    def family(self) -> str:
        return self.name.split("=", 1)[0]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "targets": list(self.targets),
            "keeps_numerics": self.keeps_numerics,
            "default_for": [t for t, names in DEFAULTS.items() if self.name in names],
            "matches": self.matches,
            "description": self.description,
        }


REGISTRY: dict[str, Rewrite] = {}
# Only rewrites that keep numerics may be defaults (numerics-changing ones run only by name).
DEFAULTS: dict[str, tuple[str, ...]] = {"coreml": (), "tflite": (), "onnx": ()}


def register(rewrite: Rewrite) -> Rewrite:
    if rewrite.name in REGISTRY:
        raise ValueError(f"rewrite '{rewrite.name}' registered twice")
    REGISTRY[rewrite.name] = rewrite
    return rewrite


def set_defaults(target: str, names: tuple[str, ...]) -> None:
    for n in names:
        rw = REGISTRY[n]
        if not rw.keeps_numerics:
            raise ValueError(f"rewrite '{n}' changes numerics; it cannot be a default")
        if target not in rw.targets:
            raise ValueError(f"rewrite '{n}' is not for {target}")
    DEFAULTS[target] = tuple(names)


def get(name: str) -> Rewrite:
    if name in REGISTRY:
        return REGISTRY[name]
    family = name.split("=", 1)[0]
    choices = [n for n in REGISTRY if n.split("=", 1)[0] == family and "=" in n]
    if choices and "=" not in name:
        raise InputError(f"rewrite '{name}' needs a value: use one of {', '.join(choices)}")
    raise UnknownNameError("rewrite", name, REGISTRY)


class RewriteList(list):
    """Rewrite names in run order; ``implicit`` holds the ones that came from a target's defaults
    rather than a request (a default that matches nothing is recorded, a request is an error)."""

    implicit: frozenset = frozenset()


def _ordered(names: list[str], implicit=()) -> RewriteList:
    out = RewriteList(sorted(dict.fromkeys(names), key=lambda n: (REGISTRY[n].order, n)))
    out.implicit = frozenset(n for n in implicit if n in out)
    return out


def choose(target: str, requested: list[str] | None = None, defaults: bool = True) -> list[str]:
    """The command line's choice for one target: the target's defaults (unless ``defaults`` is
    false) plus the requested names; a requested name replaces a default of the same family."""
    requested = list(requested or [])
    for n in requested:
        rw = get(n)
        if target not in rw.targets:
            raise InputError(f"rewrite '{n}' is for {', '.join(rw.targets)}, not {target}")
    families = {}
    for n in requested:
        fam = get(n).family
        if fam in families and families[fam] != n and "=" in n:
            raise InputError(f"rewrites '{families[fam]}' and '{n}' are alternatives; ask for one")
        families[fam] = n
    base = [n for n in DEFAULTS.get(target, ()) if REGISTRY[n].family not in families] if defaults else []
    return _ordered(base + requested, implicit=[n for n in base if n not in requested])


def resolve(target: str, requested: list[str] | None) -> list[str]:
    """The rewrites to run for a target, in run order: the requested ones, or the defaults."""
    names = list(DEFAULTS.get(target, ())) if requested is None else list(requested)
    implicit = names if requested is None else getattr(requested, "implicit", ())
    by_family: dict[str, str] = {}
    for n in names:  # of alternatives (attention=...), the later one wins: a recipe's list, then the command line
        rw = get(n)
        if target not in rw.targets:
            raise InputError(f"rewrite '{n}' is for {', '.join(rw.targets)}, not {target}")
        by_family.pop(rw.family, None)
        by_family[rw.family] = n
    return _ordered(list(by_family.values()), implicit)


def apply_rewrites(modules: dict[str, nn.Module], names: list[str], target: str) -> list[dict]:
    """Apply each rewrite to every component, in run order; return one record per rewrite.

    A requested rewrite that matches nothing is an error; one that came from the target's
    defaults (``names.implicit``) and does not apply to this model is recorded with changed = {}."""
    records = []
    implicit = getattr(names, "implicit", frozenset())
    for n in resolve(target, names):
        rw = REGISTRY[n]
        counts = {comp: int(rw.apply(comp, m)) for comp, m in modules.items()}
        total = sum(counts.values())
        if total == 0 and n not in implicit:
            why = f": {rw.no_match}" if rw.no_match else ""
            raise InputError(f"rewrite '{n}' matched nothing in {', '.join(modules)} for {target}{why}")
        records.append({"name": n, "keeps_numerics": rw.keeps_numerics, "changed": {k: v for k, v in counts.items() if v}})
    return records


@contextlib.contextmanager
def lowering_scope(names: list[str]):
    """The scopes some rewrites need around the backend's lowering (e.g. litert-torch's GroupNorm
    composite flag), entered in run order and restored on exit."""
    with contextlib.ExitStack() as stack:
        for n in names:
            rw = REGISTRY.get(n)
            if rw is not None and rw.lowering is not None:
                stack.enter_context(rw.lowering())
        yield


def lowering_extra(names: list[str]) -> dict[str, list[str]]:
    """Backend hints from the rewrites, e.g. {"fp32_ops": ["softmax"]} from softmax-fp32 (a Core
    ML backend keeps those ops out of its fp16 compute-precision pass)."""
    out: dict[str, list[str]] = {}
    for n in names:
        rw = REGISTRY.get(n)
        for key, values in (rw.lowering_extra if rw else ()):
            out.setdefault(key, [])
            out[key] += [v for v in values if v not in out[key]]
    return out


def listing() -> list[dict]:
    return [REGISTRY[n].to_json() for n in _ordered(list(REGISTRY))]


from . import catalog as _catalog  # noqa: E402,F401  (registers the rewrites)
