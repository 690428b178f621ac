"""The rewrite registry: what a rewrite is, each target's defaults, and choosing, resolving and
applying a list of them. catalog.py registers the rewrites themselves."""


from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

from torch import nn

from md_export.core.errors import InputError, UnknownNameError


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


@dataclass(frozen=True, eq=False)
class RewriteSelection:
    """The rewrite names chosen for one target, and which of them are ``implicit``: they came from
    the target's defaults rather than a request. A default that matches nothing is recorded as
    skipped; a requested rewrite that matches nothing is an error. A value, so copying it (a
    recipe merging into it) cannot lose which names were asked for."""

    names: tuple[str, ...] = ()
    implicit: frozenset[str] = frozenset()

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        return self.names[i]

    def __eq__(self, other) -> bool:
        """Equal to another selection with the same names and defaults, or to a list of the names."""
        if isinstance(other, RewriteSelection):
            return (self.names, self.implicit) == (other.names, other.implicit)
        if isinstance(other, (list, tuple)):
            return list(self.names) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.names, self.implicit))

    def after(self, first) -> "RewriteSelection":
        """`first` (a recipe's list: requests) followed by these names."""
        names = tuple(dict.fromkeys([*first, *self.names]))
        return RewriteSelection(names, frozenset(self.implicit - set(first)))


def as_selection(names) -> RewriteSelection:
    """A RewriteSelection from a selection or a plain list of names (plain names are requests)."""
    return names if isinstance(names, RewriteSelection) else RewriteSelection(tuple(names or ()))


def _ordered(names, implicit=()) -> RewriteSelection:
    out = tuple(sorted(dict.fromkeys(names), key=lambda n: (REGISTRY[n].order, n)))
    return RewriteSelection(out, frozenset(n for n in implicit if n in out))


def choose(target: str, requested: list[str] | None = None, defaults: bool = True) -> RewriteSelection:
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


def resolve(target: str, requested) -> RewriteSelection:
    """The rewrites to run for a target, in run order: the requested ones (a selection or a list),
    or the target's defaults when nothing was asked for (None)."""
    if requested is None:
        selection = RewriteSelection(tuple(DEFAULTS.get(target, ())), frozenset(DEFAULTS.get(target, ())))
    else:
        selection = as_selection(requested)
    by_family: dict[str, str] = {}
    for n in selection.names:  # of alternatives (attention=...), the later one wins: a recipe's list, then the command line
        rw = get(n)
        if target not in rw.targets:
            raise InputError(f"rewrite '{n}' is for {', '.join(rw.targets)}, not {target}")
        by_family.pop(rw.family, None)
        by_family[rw.family] = n
    return _ordered(list(by_family.values()), selection.implicit)


def apply_rewrites(modules: dict[str, nn.Module], names, target: str) -> list[dict]:
    """Apply each rewrite to every component, in run order; return one record per rewrite.

    A requested rewrite that matches nothing is an error; one that came from the target's
    defaults (implicit in the selection) and does not apply to this model is recorded with changed = {}."""
    return rewrite_records(rewrite_counts(modules, names, target), names, target, list(modules))


def rewrite_counts(modules: dict[str, nn.Module], names, target: str) -> dict[str, dict[str, int]]:
    """Apply each rewrite to the given components, in run order: {rewrite: {component: changes}}.
    No check that a rewrite matched: an export that rewrites one component at a time adds the
    counts up and checks them once (rewrite_records)."""
    return {n: {comp: int(REGISTRY[n].apply(comp, m)) for comp, m in modules.items()} for n in resolve(target, names).names}


def rewrite_records(counts: dict[str, dict[str, int]], names, target: str, components: list[str]) -> list[dict]:
    """One record per rewrite from the counts over all components; a requested rewrite that
    matched nothing in any of them is an error."""
    selection = resolve(target, names)
    records = []
    for n in selection.names:
        rw = REGISTRY[n]
        changed = {k: v for k, v in counts.get(n, {}).items() if v}
        if not changed and n not in selection.implicit:
            why = f": {rw.no_match}" if rw.no_match else ""
            raise InputError(f"rewrite '{n}' matched nothing in {', '.join(components)} for {target}{why}")
        records.append({"name": n, "keeps_numerics": rw.keeps_numerics, "changed": changed})
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
    return [REGISTRY[n].to_json() for n in _ordered(list(REGISTRY)).names]
