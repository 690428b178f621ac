"""Progress for long work: a stage per component (load, capture, lower, save, check) with its
elapsed time. The library reports to a Progress; the CLI picks rich, or silence for -q/--json."""

from __future__ import annotations

import time
from contextlib import contextmanager
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
