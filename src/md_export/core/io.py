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


def normal_permissions(root: Path) -> None:
    """Folders 0777 and files 0666 less the umask, as `mkdir` and `open` give: mkdtemp's 0700 and the
    0600 files some libraries write through mkstemp would make a bundle unreadable to other users."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o777 & ~mask)
        for f in files:
            p = os.path.join(folder, f)
            if not os.path.islink(p):
                os.chmod(p, (0o777 if os.stat(p).st_mode & 0o100 else 0o666) & ~mask)


def utc_now() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (the reproducible-builds convention), as ISO 8601 UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            when = datetime.fromtimestamp(int(epoch), timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise InputError(f"SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970 (an integer)") from None
    else:
        when = datetime.now(timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def portable_path(path: Path, base: Path) -> str | None:
    """`path` relative to the folder `base` (e.g. a checkpoint seen from its bundle), or None when
    the two share no folder but the filesystem root: a bundle records no absolute path."""
    a, b = Path(path).resolve(), Path(base).resolve()
    common = Path(os.path.commonpath([a, b]))
    if common == Path(common.anchor):
        return None
    return Path(os.path.relpath(a, b)).as_posix()


def portable_command(argv: list[str]) -> list[str]:
    """A command line with no absolute path: a path under the working folder becomes relative to
    it, any other absolute path its last component."""
    cwd = Path.cwd()
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if os.path.isabs(value):
            p = Path(value)
            value = os.path.relpath(p, cwd) if cwd == p or cwd in p.parents else p.name
        out.append(f"{flag}{eq}{value}")
    return out


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every staging folder is cleaned up on the way out."""


# targets whose staging folder was removed because the run was interrupted (for the CLI's message)
INTERRUPTED: list[Path] = []


@contextmanager
def atomic_folder(target: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; on success it replaces `target`. A lock
    file beside it keeps a second md-export from writing the same target at the same time."""
    target = Path(target)
    if target.exists() and not force:
        raise InputError(f"{target}: already exists; pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: exists and is not a folder")
    with _locked(target):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        except OSError as e:
            raise InputError(f"{target}: cannot write here ({e.strerror}); choose another -o") from None
        try:
            yield tmp
            normal_permissions(tmp)
            if target.exists() and not force:  # made while this export ran
                raise InputError(f"{target}: appeared while exporting; pass --force to replace it")
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, (KeyboardInterrupt, Interrupted)):
                INTERRUPTED.append(target)
            raise
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{target}: cannot write here ({e.strerror or e}); choose another -o") from None
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise InputError(f"{target}: another md-export (pid {holder}) is writing it; wait for it to finish, "
                                 f"or remove {lock} if that process is gone") from None
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.unlink(lock)
        except OSError as e:
            raise InputError(f"{target}: cannot write here ({e.strerror}); choose another -o") from None
    else:
        raise InputError(f"{lock}: cannot take the lock; remove it if no md-export is running")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def _lock_holder(lock: Path) -> int | None:
    """The pid in a lock file if that process still runs, else None."""
    try:
        pid = int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
