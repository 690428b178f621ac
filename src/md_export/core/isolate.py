"""Run one call in a forked child process and hand its result back.

Why: coremltools and litert-torch keep memory after a conversion that Python cannot give back
(MIL programs and flatbuffers held in caches, malloc arenas that stay mapped). In a child, all of
it goes when the child exits, so converting a second target or the next component starts from
the parent's size, not from the sum. A fork shares the parent's pages copy-on-write, so the
module and its capture are not copied to reach the child.

The child inherits stdout/stderr, so a converter's progress bars and md-export's own progress
reach the terminal as they would in-process; an exception raised in the child is raised again in
the parent (the same class when it can be pickled, else a RuntimeError with its text); a child
killed by a signal (the kernel's OOM killer, a memory limit) becomes a ChildKilled error that
names the work and the signal. Only where fork is safe (Linux): elsewhere, in-process. Off unless
MD_EXPORT_LOWER_IN_CHILD asks for it (DEFAULT_MODE).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from typing import Any, Callable

from md_export.core.errors import ConversionError

MODES = ("auto", "always", "never")
ENV = "MD_EXPORT_LOWER_IN_CHILD"  # never (default) | auto | always
# never by default: measured on MobileDiffusion at full size (coreml,tflite in one command) the
# children held the largest process to 4.79 GB (in-process 6.55 GB) but the whole tree's PSS rose
# to 7.58 GB, because the parent keeps the module and capture while a child converts
DEFAULT_MODE = "never"


class ChildKilled(ConversionError):
    """The child doing `what` died from a signal instead of returning."""


def fork_available() -> bool:
    # macOS: fork after Objective-C frameworks (Accelerate, Core ML) have started is unsafe
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def isolation_mode() -> str:
    mode = os.environ.get(ENV, DEFAULT_MODE).strip().lower() or DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: use one of {', '.join(MODES)}")
    return mode


def wants_child(large: bool) -> bool:
    """Whether the conversions of a run run in children under the current setting; `auto` sends
    those of a large pipeline (the caller's judgement: Checkpoint.is_large). Decide once per run,
    before any conversion: all of them go, or none. A
    fork is only safe while this process has started no converter thread pool (the MLIR context
    litert-torch lowers through keeps one; its threads do not exist in a forked child, which then
    waits on them for ever)."""
    mode = isolation_mode()
    if mode == "never" or not fork_available():
        return False
    return mode == "always" or large


def run_in_child(what: str, fn: Callable[..., Any], *args, in_child_first: Callable[[], None] | None = None, **kwargs) -> Any:
    """fn(*args, **kwargs) in a forked child; its return value (pickled through a pipe) here.
    `in_child_first` runs in the child before fn: the place to make thread pools the parent
    started safe (a fork copies only the calling thread; an OpenMP team whose threads are gone
    deadlocks the first parallel region it enters)."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack (no finally blocks, no atexit)
        os.close(read_fd)
        code = 0
        try:
            try:
                if in_child_first is not None:
                    in_child_first()
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
                code = 1
                if os.environ.get("MD_EXPORT_DEBUG", "") not in ("", "0"):
                    traceback.print_exc()  # the parent's traceback ends at this module; this one is the child's
                payload = _pickled_error(e)
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        except BaseException:  # noqa: BLE001 - the parent reports a child that wrote nothing
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C or a SIGTERM handler here: the child must not outlive us
        _kill(pid)
        raise
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (out of memory?)" if sig == signal.SIGKILL else ""
        raise ChildKilled(f"{what}: the child process doing it was killed by {name}{hint}")
    if not data:
        raise ChildKilled(f"{what}: the child process doing it exited with code {os.WEXITSTATUS(status)} and no result")
    kind, value = pickle.loads(data)
    if kind == "ok":
        return value
    raise value


def _pickled_error(e: BaseException) -> bytes:
    try:
        payload = pickle.dumps(("error", e))
        pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt (required keyword arguments)
        return payload
    except Exception:  # noqa: BLE001
        return pickle.dumps(("error", RuntimeError(f"{type(e).__name__}: {e}")))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
