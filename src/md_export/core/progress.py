"""Progress for long work: a stage per component (load, capture, lower, save, check) with its
elapsed time. The library reports to a Progress; the CLI picks rich, or silence for -q/--json."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterator


class Progress:
    """Silent progress; also the interface."""

    @contextmanager
    def stage(self, component: str, stage: str, target: str = "") -> Iterator[None]:
        yield

    def info(self, message: str) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, component: str, stage: str, target: str = "") -> Iterator[None]:
        label = f"{target + ' ' if target else ''}{component}: {stage}"
        t0 = time.perf_counter()
        ok = False
        try:
            with self.console.status(f"[bold]{label}[/] ...", spinner="dots"):
                yield
            ok = True
        finally:
            dt = time.perf_counter() - t0
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self.console.print(f"{mark} {label:<36} {dt:7.1f} s   [dim](total {time.perf_counter() - self.started:.0f} s)[/]")

    def info(self, message: str) -> None:
        self.console.print(message)


@contextmanager
def third_party_output_muted() -> Iterator[None]:
    """Hold back what libraries print while the block runs: Python-level writes (tqdm bars) and
    what C++ code writes straight to file descriptors 1 and 2 (absl/TFLite log lines). md-export
    reports its own progress; if the block fails, the held-back text goes to stderr after all,
    so an error keeps its context. MD_EXPORT_DEBUG=1 holds nothing back."""
    if os.environ.get("MD_EXPORT_DEBUG", "") not in ("", "0"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no descriptors to redirect (closed): nothing native can reach the user either
        saved = None
    held = io.StringIO()
    ok = False
    with tempfile.TemporaryFile() as sink:
        if saved:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(held), redirect_stderr(held):
                yield
            ok = True
        finally:
            _flush_c_stdio()  # C stdout is block-buffered into the sink: empty it there, not later on the terminal
            if saved:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            if not ok:
                sink.seek(0)
                text = sink.read().decode(errors="replace") + held.getvalue()
                if text.strip():
                    sys.stderr.write(text if text.endswith("\n") else text + "\n")
                    sys.stderr.flush()


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to reach (unusual platforms): nothing buffered there either
        pass
