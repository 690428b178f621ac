"""Recipes: TOML files naming a family, a resolution, targets and, per target, the rewrites,
compression, per-component overrides and parity floors. Loaded into frozen dataclasses and
validated on load: a bad key is one line naming the file and the key.

Rewrite names and compression levels are checked against their registries when an export
starts (`validate_names`), not on load, so a recipe can name a level another part of
md-export has not registered yet and fail clearly when used.

    schema_version = 1
    family = "mobilediffusion"
    description = "..."
    height = 512                     # optional; default: the family's resolution
    width = 512
    targets = ["coreml"]
    steps = 8                        # optional pipeline facts recorded for apps
    scheduler = "ddim"
    unet_batch = 2
    with_encoder = false

    [coreml]
    precision = "fp16"
    rewrites = ["attention=split-einsum"]   # omit for the target's defaults; [] for none
    compression = "palettize-6"
    minimum_deployment_target = "iOS17"
    compute_units = "ALL"
    chunk_over_mb = 1000             # split the UNet into pieces under 1 GB when its package is larger

    [coreml.components.text_encoder] # per-component overrides
    compression = "none"

    [coreml.parity]                  # PSNR floors in dB (text_encoder, unet, vae_decoder, vae_encoder, end_to_end, all)
    unet = 30.0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from md_export.core.errors import InputError, UnknownNameError
from md_export.core.names import COMPONENTS, COMPUTE_UNITS, DEPLOYMENT_TARGETS, PARITY_KEYS, PRECISIONS, SCHEDULERS, TARGETS
from md_export.families.registry import all_families

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1


def shipped_recipes() -> dict[str, Path]:
    """The recipes packaged with md-export (src/md_export/recipes/*.toml), by name. Read through
    importlib.resources so a bare `--recipe NAME` works from an installed wheel, not only a checkout."""
    folder = resources.files("md_export") / "recipes"
    return {f.name[: -len(".toml")]: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".toml")}


@dataclass(frozen=True)
class ComponentRecipe:
    compression: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class TargetRecipe:
    name: str
    precision: str | None = None
    rewrites: tuple[str, ...] | None = None
    compression: str | None = None
    components: Mapping[str, ComponentRecipe] = field(default_factory=lambda: MappingProxyType({}))
    parity: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    minimum_deployment_target: str | None = None
    compute_units: str | None = None
    chunk_over_mb: int | None = None

    def quantize(self) -> dict[str, str]:
        """ExportOptions.quantize entries: "target" and "target:component" -> level."""
        out = {}
        if self.compression:
            out[self.name] = self.compression
        for comp, c in self.components.items():
            if c.compression:
                out[f"{self.name}:{comp}"] = c.compression
        return out


@dataclass(frozen=True)
class Recipe:
    path: Path
    schema_version: int
    family: str
    description: str = ""
    height: int | None = None
    width: int | None = None
    targets: tuple[str, ...] = TARGETS
    steps: int | None = None
    scheduler: str | None = None
    unet_batch: int | None = None
    with_encoder: bool | None = None
    target: Mapping[str, TargetRecipe] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "family": self.family,
            "targets": list(self.targets),
            "height": self.height,
            "width": self.width,
            "per_target": {
                t: {"precision": r.precision, "rewrites": list(r.rewrites) if r.rewrites is not None else None,
                    "compression": r.compression,
                    "components": {c: {k: v for k, v in vars(x).items() if v is not None} for c, x in r.components.items()},
                    "parity": dict(r.parity), "chunk_over_mb": r.chunk_over_mb}
                for t, r in self.target.items()
            },
        }


# -- loading and validation --------------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table; every complaint names the file and the dotted key."""

    def __init__(self, path: Path, table: dict, prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, msg: str):
        raise InputError(f"{self.path}: key '{self.key(k)}': {msg}")

    def get(self, k: str, kind, default=None, choices=None):
        self.used.add(k)
        if k not in self.table:
            return default
        v = self.table[k]
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            self.fail(k, f"expected an integer, found {v!r}")
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                self.fail(k, f"expected a finite number, found {v!r}")
            v = float(v)
        if kind is str and not isinstance(v, str):
            self.fail(k, f"expected a string, found {v!r}")
        if kind is bool and not isinstance(v, bool):
            self.fail(k, f"expected true or false, found {v!r}")
        if kind is list:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                self.fail(k, f"expected a list of strings, found {v!r}")
            v = tuple(v)
        if kind is dict and not isinstance(v, dict):
            self.fail(k, f"expected a table, found {v!r}")
        if choices is not None:
            for x in v if isinstance(v, tuple) else (v,):
                if x not in choices:
                    self.fail(k, f"{x!r} is not one of {', '.join(map(str, choices))}")
        return v

    def positive(self, k: str, multiple_of: int = 1):
        v = self.get(k, int)
        if v is not None and (v <= 0 or v % multiple_of):
            self.fail(k, f"expected a positive integer{f' multiple of {multiple_of}' if multiple_of > 1 else ''}, found {v}")
        return v

    def finish(self, extra_known: tuple[str, ...] = ()):
        unknown = [k for k in self.table if k not in self.used and k not in extra_known]
        if unknown:
            known = sorted(self.used | set(extra_known))
            self.fail(unknown[0], f"unknown key (known here: {', '.join(known)})")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. A bare name ("sd15", "mobilediffusion-ios") that is not a
    file here means the recipe of that name shipped with md-export."""
    p = Path(path)
    if not p.is_file():
        shipped = shipped_recipes()
        if p.suffix or len(p.parts) > 1 or p.name not in shipped:
            raise InputError(f"--recipe {path}: no such file or shipped recipe; shipped: {', '.join(sorted(shipped))}")
        p = shipped[p.name]
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot be read ({e})") from None
    return parse_recipe(data, p)


def parse_recipe(data: dict, path: Path) -> Recipe:
    r = _Reader(path, data)
    version = r.get("schema_version", int)
    if version is None:
        r.fail("schema_version", f"missing (this md-export reads schema_version = {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        r.fail("schema_version", f"{version} is not supported (this md-export reads {SCHEMA_VERSION})")
    family = r.get("family", str)
    if family is None:
        r.fail("family", "missing (name a registered family; see `md-export families`)")
    families = all_families()
    if family not in families:
        r.fail("family", str(UnknownNameError("family", family, families)))
    fam = families[family]
    step = 8 * 2 ** (len(fam.unet_config("full").get("down_block_types", ())) - 1)
    targets = r.get("targets", list, default=TARGETS, choices=TARGETS)
    if not targets:
        r.fail("targets", "empty; name at least one of coreml, tflite, onnx")
    per_target = {}
    for t in TARGETS:
        r.used.add(t)
        if t in data:
            if not isinstance(data[t], dict):
                r.fail(t, f"expected a table [{t}], found {data[t]!r}")
            per_target[t] = _parse_target(path, t, data[t])
    recipe = Recipe(
        path=path,
        schema_version=version,
        family=family,
        description=r.get("description", str, default=""),
        height=r.positive("height", step),
        width=r.positive("width", step),
        targets=tuple(dict.fromkeys(targets)),
        steps=r.positive("steps"),
        scheduler=r.get("scheduler", str, choices=SCHEDULERS),
        unet_batch=r.get("unet_batch", int, choices=(1, 2)),
        with_encoder=r.get("with_encoder", bool),
        target=MappingProxyType(per_target),
    )
    r.finish()
    return recipe


def _parse_target(path: Path, name: str, table: dict) -> TargetRecipe:
    r = _Reader(path, table, f"{name}.")
    comps = {}
    raw = r.get("components", dict, default={})
    for comp, ctable in raw.items():
        if comp not in COMPONENTS:
            r.fail(f"components.{comp}", f"unknown component (use {', '.join(COMPONENTS)})")
        if not isinstance(ctable, dict):
            r.fail(f"components.{comp}", f"expected a table, found {ctable!r}")
        cr = _Reader(path, ctable, f"{name}.components.{comp}.")
        comps[comp] = ComponentRecipe(compression=cr.get("compression", str), precision=cr.get("precision", str, choices=PRECISIONS))
        cr.finish()
    floors = {}
    ptable = r.get("parity", dict, default={})
    pr = _Reader(path, ptable, f"{name}.parity.")
    for k in ptable:
        if k not in PARITY_KEYS:
            pr.fail(k, f"unknown parity floor (use {', '.join(PARITY_KEYS)})")
        floors[k] = pr.get(k, float)
    out = TargetRecipe(
        name=name,
        precision=r.get("precision", str, choices=PRECISIONS),
        rewrites=r.get("rewrites", list),
        compression=r.get("compression", str),
        components=MappingProxyType(comps),
        parity=MappingProxyType(floors),
        minimum_deployment_target=r.get("minimum_deployment_target", str, choices=DEPLOYMENT_TARGETS) if name == "coreml" else None,
        compute_units=r.get("compute_units", str, choices=COMPUTE_UNITS) if name == "coreml" else None,
        chunk_over_mb=r.positive("chunk_over_mb") if name == "coreml" else None,
    )
    r.finish()
    return out


def recipes_of(family: str) -> list[str]:
    """Names of the shipped recipes for a family (what `--recipe NAME` takes)."""
    return sorted(name for name, path in shipped_recipes().items() if load_recipe(path).family == family)
