"""The sweep file: TOML, `schema_version = 1`, validated on load. Every error is one line naming the
file and the key (`sweep.toml: targets.coreml.levels[2]: ...`), exit code 2.

    schema_version = 1
    name = "default-model levels"            # optional, shown in the report

    [[models]]                               # optional: none = the bundled default model
    checkpoint = "ckpt/"                     # a diffusers folder or a .safetensors (relative to this file)
    # family = "mobilediffusion"             # or: `md-export init FAMILY --size SIZE --seed SEED` once
    # size = "tiny"
    # seed = 0
    # name = "md-tiny"                       # the name in the report (default: from the path/family)

    [targets.coreml]
    levels = ["fp16", "int8", "palettize-6", "palettize-4"]   # "none" = the target's default precision
    keep = ["vae_decoder=fp16"]              # per-component overrides (--keep), this target only
    args = ["--minimum-deployment-target", "iOS18"]           # more export options, this target only

    [export]                                 # for every target
    keep = []
    args = []

    [check]
    parity = true                            # `md-export check` after each export
    samples = 2
    seed = 0
    end_to_end = true
    e2e_steps = 4
    thresholds = []                          # e.g. ["unet=45"] (--threshold)
    eval = false                             # `md-export eval` per cell (shapes-v1 models; else "not applicable")
    eval_prompts = 24                        # eval --prompts and --seeds (eval's defaults)
    eval_seeds = 2

    [resources]
    num_cpus = 2                             # a local Ray instance's CPUs (default: all cores)
    cpus_per_cell = 1
    memory_base_mb = 2048                    # memory request per cell = base + factor x weight bytes
    memory_factor = 4.0
    timeout_minutes = 0                      # per cell; 0 = none

Levels are checked by kind per target (the README's "Compression" list); a level's parameters
(palettize bits, int4 block size, mixed rules) are the exporter's to judge, so such a cell can
still fail, and it fails alone.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
TARGETS = ("coreml", "tflite", "onnx")
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
SIZES = ("tiny", "full")

# fixed names, then patterns: kinds per target as the README's "Compression" section lists them
LEVEL_NAMES = {
    "coreml": ("none", "fp32", "fp16", "int8", "w8a8"),
    "tflite": ("none", "fp16", "int8", "w8a8", "int4"),
    "onnx": ("none", "fp16", "int8", "w8a8"),
}
LEVEL_PATTERNS = {
    "coreml": (r"palettize-\d+(-g\d+)?", r"mixed-bit:\d+(\.\d+)?"),
    "tflite": (r"int4-block\d+", r"mixed:.+"),
    "onnx": (),
}
LEVEL_EXAMPLES = {
    "coreml": "none, fp16, int8, w8a8, palettize-8/6/4/2, palettize-4-g16, mixed-bit:4.5",
    "tflite": "none, fp16, int8, w8a8, int4-block32, mixed:fc=int8,conv=fp16",
    "onnx": "none, fp16, int8, w8a8",
}
# options the sweep sets itself; `args` may not carry them
MANAGED_OPTIONS = ("-o", "--out", "--json", "--quantize", "--keep", "--no-check", "--force", "--targets", "-q", "--quiet")

TOP_KEYS = ("schema_version", "name", "models", "targets", "export", "check", "resources")
MODEL_KEYS = ("name", "checkpoint", "family", "size", "seed")
TARGET_KEYS = ("levels", "keep", "args")
EXPORT_KEYS = ("keep", "args")
CHECK_KEYS = ("parity", "samples", "seed", "end_to_end", "e2e_steps", "thresholds", "eval", "eval_prompts", "eval_seeds")
RESOURCE_KEYS = ("num_cpus", "cpus_per_cell", "memory_base_mb", "memory_factor", "timeout_minutes")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    checkpoint: Path | None = None  # None and no family: the bundled default model
    family: str | None = None
    size: str = "tiny"
    seed: int = 0

    @property
    def kind(self) -> str:
        return "checkpoint" if self.checkpoint is not None else "family" if self.family else "default"


@dataclass(frozen=True)
class TargetEntry:
    target: str
    levels: tuple[str, ...]
    keep: tuple[str, ...] = ()
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckOptions:
    parity: bool = True
    samples: int = 2
    seed: int = 0
    end_to_end: bool = True
    e2e_steps: int = 4
    thresholds: tuple[str, ...] = ()
    eval: bool = False
    eval_prompts: int = 24  # `md-export eval --prompts` (its default)
    eval_seeds: int = 2  # `md-export eval --seeds`

    def key(self) -> dict:
        """What changes a check's result (part of each cell's hash; the eval sizes only when eval runs)."""
        return {"parity": self.parity, "samples": self.samples, "seed": self.seed, "end_to_end": self.end_to_end,
                "e2e_steps": self.e2e_steps, "thresholds": sorted(self.thresholds), "eval": self.eval,
                **({"eval_prompts": self.eval_prompts, "eval_seeds": self.eval_seeds} if self.eval else {})}


@dataclass(frozen=True)
class Resources:
    num_cpus: int | None = None
    cpus_per_cell: float = 1.0
    memory_base_mb: int = 2048
    memory_factor: float = 4.0
    timeout_minutes: float = 0.0


@dataclass(frozen=True)
class CellSpec:
    """One export + check: a model, a target, a level, what every cell of the target keeps."""

    model: ModelEntry
    target: str
    level: str
    keep: tuple[str, ...]
    args: tuple[str, ...]

    @property
    def label(self) -> str:
        keep = "+" + "+".join(self.keep) if self.keep else ""
        return f"{self.model.name}/{self.target}-{self.level}{keep}"


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    models: tuple[ModelEntry, ...]
    targets: tuple[TargetEntry, ...]
    check: CheckOptions = CheckOptions()
    resources: Resources = Resources()
    export_keep: tuple[str, ...] = ()
    export_args: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def cells(self) -> list[CellSpec]:
        """models x targets x levels, in file order."""
        out = []
        for m in self.models:
            for t in self.targets:
                keep = tuple(dict.fromkeys(self.export_keep + t.keep))
                for level in t.levels:
                    out.append(CellSpec(m, t.target, level, keep, self.export_args + t.args))
        return out


def level_ok(target: str, level: str) -> bool:
    if level in LEVEL_NAMES[target]:
        return True
    return any(re.fullmatch(p, level) for p in LEVEL_PATTERNS[target])


class _Where:
    """Builds `FILE: key: message` errors."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, message: str) -> InputError:
        return InputError(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")

    def table(self, data, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            raise self.error(key, f"must be a table, got {_kind(data)}")
        for k in data:
            if k not in known:
                raise self.error(f"{key}.{k}" if key else k, f"unknown key; known: {', '.join(known)}")
        return data

    def string(self, value, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def strings(self, value, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of strings, got {_kind(value)}")
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    def integer(self, value, key: str, lo: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_kind(value)}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        return value

    def number(self, value, key: str, lo: float = 0.0, strict: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {_kind(value)}")
        if value < lo or (strict and value == lo):
            raise self.error(key, f"must be {'>' if strict else '>='} {lo:g}, got {value}")
        return float(value)

    def boolean(self, value, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value


def _kind(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__) + (f" {v!r}" if isinstance(v, (bool, int, float, str)) else "")


def load_spec(path: Path | str) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sweep file not found (a TOML file with schema_version = 1; see sweeps/default.toml)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML: {str(e).splitlines()[0]}") from None
    return parse_spec(data, path)


def parse_spec(data: dict, path: Path) -> SweepSpec:
    w = _Where(path)
    w.table(data, "", TOP_KEYS)
    if "schema_version" not in data:
        raise w.error("schema_version", f"missing; add schema_version = {SCHEMA_VERSION}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise w.error("schema_version", f"{data['schema_version']!r} is not supported (this md-export reads {SCHEMA_VERSION})")
    name = w.string(data["name"], "name") if "name" in data else path.stem
    base = path.parent

    models = _models(w, data.get("models"), base)
    targets = _targets(w, data.get("targets"))
    export = w.table(data.get("export", {}), "export", EXPORT_KEYS)
    export_keep = _keeps(w, export.get("keep", []), "export.keep")
    export_args = _args(w, export.get("args", []), "export.args")

    c = w.table(data.get("check", {}), "check", CHECK_KEYS)
    check = CheckOptions(
        parity=w.boolean(c.get("parity", True), "check.parity"),
        samples=w.integer(c.get("samples", 2), "check.samples", 1),
        seed=w.integer(c.get("seed", 0), "check.seed", 0),
        end_to_end=w.boolean(c.get("end_to_end", True), "check.end_to_end"),
        e2e_steps=w.integer(c.get("e2e_steps", 4), "check.e2e_steps", 1),
        thresholds=w.strings(c.get("thresholds", []), "check.thresholds"),
        eval=w.boolean(c.get("eval", False), "check.eval"),
        eval_prompts=w.integer(c.get("eval_prompts", 24), "check.eval_prompts", 1),
        eval_seeds=w.integer(c.get("eval_seeds", 2), "check.eval_seeds", 1),
    )
    for i, t in enumerate(check.thresholds):
        model, sep, db = t.partition("=")
        if not sep or model not in ("text_encoder", "unet", "vae_decoder", "vae_encoder", "end_to_end", "all"):
            raise w.error(f"check.thresholds[{i}]", f"'{t}': use MODEL=DB with MODEL in text_encoder, unet, vae_decoder, end_to_end, all")
        try:
            float(db)
        except ValueError:
            raise w.error(f"check.thresholds[{i}]", f"'{t}': the floor must be a number of dB") from None

    r = w.table(data.get("resources", {}), "resources", RESOURCE_KEYS)
    resources = Resources(
        num_cpus=w.integer(r["num_cpus"], "resources.num_cpus", 1) if "num_cpus" in r else None,
        cpus_per_cell=w.number(r.get("cpus_per_cell", 1.0), "resources.cpus_per_cell", 0.0, strict=True),
        memory_base_mb=w.integer(r.get("memory_base_mb", 2048), "resources.memory_base_mb", 0),
        memory_factor=w.number(r.get("memory_factor", 4.0), "resources.memory_factor"),
        timeout_minutes=w.number(r.get("timeout_minutes", 0.0), "resources.timeout_minutes"),
    )
    spec = SweepSpec(path=path, name=name, models=models, targets=targets, check=check, resources=resources,
                     export_keep=export_keep, export_args=export_args, raw=data)
    labels = [cell.label for cell in spec.cells()]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise w.error("targets", f"cell {dup[0]} appears twice (a level listed twice?)")
    return spec


def _models(w: _Where, value, base: Path) -> tuple[ModelEntry, ...]:
    if value is None:
        return (ModelEntry(name="default"),)
    if not isinstance(value, list) or not value:
        raise w.error("models", "must be a non-empty array of tables ([[models]]), or absent for the bundled default model")
    out: list[ModelEntry] = []
    for i, m in enumerate(value):
        key = f"models[{i}]"
        w.table(m, key, MODEL_KEYS)
        if "checkpoint" in m and "family" in m:
            raise w.error(key, "give checkpoint or family, not both")
        if ("size" in m or "seed" in m) and "family" not in m:
            raise w.error(f"{key}.{'size' if 'size' in m else 'seed'}", "only with family (md-export init FAMILY --size SIZE --seed SEED)")
        if "checkpoint" in m:
            p = Path(w.string(m["checkpoint"], f"{key}.checkpoint")).expanduser()
            p = p if p.is_absolute() else (base / p)
            if not p.exists():
                raise w.error(f"{key}.checkpoint", f"{p} does not exist (paths are relative to the sweep file)")
            p = p.resolve()
            name = m.get("name") or (p.stem if p.is_file() else p.name)
            out.append(ModelEntry(name=w.string(name, f"{key}.name"), checkpoint=p))
        elif "family" in m:
            fam = w.string(m["family"], f"{key}.family")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", fam):
                raise w.error(f"{key}.family", f"'{fam}' is not a family name (see `md-export families`)")
            size = w.string(m.get("size", "tiny"), f"{key}.size")
            if size not in SIZES:
                raise w.error(f"{key}.size", f"'{size}': use {' or '.join(SIZES)}")
            seed = w.integer(m.get("seed", 0), f"{key}.seed", 0)
            name = w.string(m.get("name", f"{fam}-{size}" + (f"-s{seed}" if seed else "")), f"{key}.name")
            out.append(ModelEntry(name=name, family=fam, size=size, seed=seed))
        else:
            out.append(ModelEntry(name=w.string(m.get("name", "default"), f"{key}.name")))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", out[-1].name):
            raise w.error(f"{key}.name", f"'{out[-1].name}': use letters, digits, '.', '_', '-' (it names a folder)")
    names = [m.name for m in out]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise w.error(f"models[{i}].name", f"'{n}' is used by models[{names.index(n)}] too; give each a distinct name")
    return tuple(out)


def _targets(w: _Where, value) -> tuple[TargetEntry, ...]:
    if value is None:
        raise w.error("targets", "missing; add e.g. [targets.onnx] levels = [\"fp16\", \"int8\"]")
    w.table(value, "targets", TARGETS)
    if not value:
        raise w.error("targets", f"no target; use one or more of {', '.join(TARGETS)}")
    out = []
    for t, body in value.items():
        key = f"targets.{t}"
        w.table(body, key, TARGET_KEYS)
        if "levels" not in body:
            raise w.error(f"{key}.levels", "missing; list the compression levels, e.g. levels = [\"fp16\", \"int8\"]")
        levels = w.strings(body["levels"], f"{key}.levels")
        if not levels:
            raise w.error(f"{key}.levels", "is empty; list at least one level (\"none\" = the target's default precision)")
        norm = []
        for i, lv in enumerate(levels):
            lv = lv.lower()
            if not level_ok(t, lv):
                raise w.error(f"{key}.levels[{i}]", f"'{lv}' is not a {t} compression level; known: {LEVEL_EXAMPLES[t]}")
            norm.append(lv)
        out.append(TargetEntry(t, tuple(norm), _keeps(w, body.get("keep", []), f"{key}.keep"), _args(w, body.get("args", []), f"{key}.args")))
    return tuple(out)


def _keeps(w: _Where, value, key: str) -> tuple[str, ...]:
    items = w.strings(value, key)
    for i, k in enumerate(items):
        comp, sep, level = k.partition("=")
        if not sep or not level:
            raise w.error(f"{key}[{i}]", f"'{k}': use COMPONENT=LEVEL, e.g. vae_decoder=fp16")
        if comp not in COMPONENTS:
            raise w.error(f"{key}[{i}]", f"'{k}': unknown component '{comp}' (use {', '.join(COMPONENTS)})")
    return items


def _args(w: _Where, value, key: str) -> tuple[str, ...]:
    items = w.strings(value, key)
    for i, a in enumerate(items):
        if a.split("=", 1)[0] in MANAGED_OPTIONS:
            raise w.error(f"{key}[{i}]", f"'{a}' is set by the sweep itself; use levels/keep instead or drop it")
    return items
