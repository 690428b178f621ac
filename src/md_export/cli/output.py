"""One output sink for every command: human (rich) or --json, and -q for quiet."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from md_export.core.progress import Progress, RichProgress


@dataclass
class Output:
    json_mode: bool = False
    quiet: bool = False

    def __post_init__(self):
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)

    def progress(self) -> Progress:
        return Progress() if (self.json_mode or self.quiet) else RichProgress()

    def print(self, *args, **kwargs) -> None:
        if not (self.json_mode or self.quiet):
            self.console.print(*args, **kwargs)

    def emit(self, data) -> None:
        """The machine-readable result; printed only with --json."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
