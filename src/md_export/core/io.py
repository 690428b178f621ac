"""Files: strict JSON in and out, sha256 and byte counts of files and folders, and the atomic
folder a bundle is staged in."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from md_export.core.errors import InputError


def read_json(path: Path) -> dict:
    """Read a JSON file, turning every failure into a one-line InputError naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_json(path: Path, data: dict) -> None:
    # allow_nan=False: the apps parse strict JSON, so a NaN must never reach a manifest
    write_file(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def write_file(path: Path, data: bytes) -> None:
    """Write a file whole or not at all, never through a symlink: the bytes go to a new temporary
    file beside it (O_EXCL | O_NOFOLLOW), which is then renamed over the name. A symlink planted at
    the name is replaced, not followed; a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # the umask applies: normal permissions, not mkstemp's 0600
    except FileExistsError:
        os.unlink(tmp)  # left by a killed run of this same process id
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted relative-path order (path, then bytes)."""
    if path.is_file():
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


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
