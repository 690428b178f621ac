"""Cells: one export + check each, named for people and identified by a hash.

A cell's hash covers what decides its result: the sha256 of the checkpoint's files (content, not
names or dates), the target, level, kept components, extra export options, the check options, and
the md-export version. A cell is skipped only when a finished cell with the same hash is on disk
(`cells/<model>/<target>-<level>/cell.json`, written last and renamed into place with its bundle).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from md_export.checkpoint.files import default_model_dir

from .spec import CellSpec, CheckOptions, Resources

CELL_JSON = "cell.json"
CELLS_DIR = "cells"
FINISHED = ("pass", "below-floor", "exported")  # a result; "failed" is not
# exit codes md-export uses for a failure the same inputs reproduce: bad input, conversion failure, bug
DETERMINISTIC_EXIT = (2, 3, 4)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
HASH_SCHEMA = 1


def md_export_version() -> str:
    """The version of the md-export the cells run (the same package as this one)."""
    import md_export

    return str(getattr(md_export, "__version__", "unknown"))


def default_model_path() -> Path:
    """Where the bundled default model lives (md-export's own default when no checkpoint is named)."""
    return default_model_dir().resolve()


@dataclass(frozen=True)
class Digest:
    sha256: str
    files: int
    bytes: int  # all files
    weight_bytes: int  # weight files only (the memory estimate)


def digest(path: Path) -> Digest:
    """sha256 over a file, or over a folder's files in sorted relative-path order (path, then
    content); hidden files and folders (.cache, .partial-*) are left out."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    total = weights = 0
    for rel, p in files:
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        size = p.stat().st_size
        total += size
        if p.suffix in WEIGHT_SUFFIXES:
            weights += size
    return Digest(h.hexdigest(), len(files), total, weights or total)


def threads_for(resources: Resources) -> int:
    """Threads each cell's children compute with (OMP_NUM_THREADS), on Ray and serially alike."""
    return max(1, round(resources.cpus_per_cell))


def cell_key(spec: CellSpec, weights_sha256: str, check: CheckOptions, version: str, threads: int = 1) -> dict:
    """Everything that decides a cell's result, as plain data (the hash's input, kept in cell.json).
    The thread count is in it: torch's CPU kernels round differently with another count (measured:
    0.4 dB end to end on a tflite w8a8 cell between 1 and 2 threads)."""
    return {
        "hash_schema": HASH_SCHEMA,
        "weights_sha256": weights_sha256,
        "target": spec.target,
        "level": spec.level,
        "keep": sorted(spec.keep),
        "args": list(spec.args),
        "check": check.key(),
        "md_export_version": version,
        "threads": threads,
    }


def cell_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def folder_name(spec: CellSpec) -> str:
    """cells/<model>/<target>-<level>[+<keep>...], with characters a folder name should not carry replaced."""
    leaf = f"{spec.target}-{spec.level}" + "".join(f"+{k}" for k in sorted(spec.keep))
    return f"{spec.model.name}/{re.sub(r'[^A-Za-z0-9._+=-]', '_', leaf)}"


@dataclass(frozen=True)
class Cell:
    """A planned cell: everything a worker needs (picklable, JSON-able)."""

    name: str  # cells/<name>/ under the sweep's output folder
    label: str
    model: str
    checkpoint: str | None  # None: the bundled default model (no argument to md-export)
    target: str
    level: str
    keep: tuple[str, ...]
    args: tuple[str, ...]
    check: dict
    key: dict
    hash: str
    weights_bytes: int
    num_cpus: float
    memory_bytes: int
    timeout_s: float | None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["keep"], d["args"] = list(self.keep), list(self.args)
        return d


def plan(spec: CellSpec, checkpoint: Path | None, dig: Digest, check: CheckOptions, resources: Resources,
         version: str) -> Cell:
    key = cell_key(spec, dig.sha256, check, version, threads_for(resources))
    memory = int(resources.memory_base_mb * 2**20 + resources.memory_factor * dig.weight_bytes)
    return Cell(
        name=folder_name(spec), label=spec.label, model=spec.model.name,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        target=spec.target, level=spec.level, keep=spec.keep, args=spec.args, check=check.key(), key=key,
        hash=cell_hash(key), weights_bytes=dig.weight_bytes, num_cpus=resources.cpus_per_cell, memory_bytes=memory,
        timeout_s=resources.timeout_minutes * 60 if resources.timeout_minutes else None,
    )


def read_cell(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / CELL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def previous(out: Path, cell: Cell) -> dict | None:
    """The recorded result of this cell if it has the same hash (else None: run it)."""
    data = read_cell(Path(out) / CELLS_DIR / cell.name)
    if data is None or data.get("hash") != cell.hash:
        return None
    return data


def is_finished(out: Path, cell: Cell) -> bool:
    """A finished cell with this hash, whose bundle's manifest and model files are all there."""
    data = previous(out, cell)
    if data is None or data.get("status") not in FINISHED:
        return False
    bundle = Path(out) / CELLS_DIR / cell.name / cell.target
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for entry in manifest.get("models", {}).values():
        files = [entry["file"]] if entry.get("file") else [c.get("file") for c in entry.get("chunks", [])]
        if not files or not all(f and (bundle / f).exists() for f in files):
            return False
    return True


def is_reproducible_failure(out: Path, cell: Cell) -> bool:
    """A failed cell with this hash whose child exited with one of md-export's own error codes
    (bad input, conversion failure, bug): the same inputs fail the same way. Killed, timed-out
    or lost cells are not: they run again."""
    data = previous(out, cell)
    return bool(data) and data.get("status") == "failed" and data.get("exit_code") in DETERMINISTIC_EXIT


def clean(x):
    """JSON-safe: inf/nan become strings (reports and the apps parse strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf" if x < 0 else "nan"
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x
