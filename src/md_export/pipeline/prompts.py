"""The prompts md-export's checks and calibration draw from (data/prompts.txt)."""

from __future__ import annotations

from importlib import resources


def bundled_prompts() -> list[str]:
    text = (resources.files("md_export") / "data" / "prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
