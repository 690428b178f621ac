"""The output folder: written in a temporary folder beside the target, renamed into place when
complete, so a failed or interrupted export never leaves a half-written bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted relative-path order (path, then bytes)."""
    if path.is_file():
        from .checkpoint import file_sha256

        return file_sha256(path)
    h = hashlib.sha256()
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    for rel, p in files:
        h.update(rel.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def path_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def atomic_folder(target: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; on success it replaces `target`."""
    target = Path(target)
    if target.exists() and not force:
        raise InputError(f"{target}: already exists; pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_json(path: Path, data: dict) -> None:
    # allow_nan=False: the apps parse strict JSON, so a NaN must never reach a manifest
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_manifest(bundle: Path) -> dict:
    """Load and sanity-check a bundle's manifest; one-line errors name the file."""
    from .checkpoint import read_json

    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InputError(f"{bundle}: not a folder; expected an md-export bundle (a folder with manifest.json)")
    path = bundle / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: missing; {bundle} is not an md-export bundle (export one with `md-export export`)")
    manifest = read_json(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {version!r} is not supported (this md-export reads {SCHEMA_VERSION})")
    for key in ("target", "models", "pipeline"):
        if key not in manifest:
            raise InputError(f"{path}: no '{key}' field; the manifest is incomplete")
    from .backends.base import model_files

    for name, entry in manifest["models"].items():
        files = model_files(entry)
        if not files:
            raise InputError(f"{path}: model '{name}' names no file (neither 'file' nor 'chunks')")
        for file in files:
            if not (bundle / file).exists():
                raise InputError(f"{bundle / file}: model file for '{name}' named in the manifest is missing")
    return manifest


def find_bundles(path: Path) -> list[Path]:
    """A bundle, or every bundle directly under a folder (out/ -> out/coreml, out/tflite, ...)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
        if found:
            return found
    raise InputError(f"{path}: no md-export bundle here (no manifest.json in it or in its sub-folders)")
