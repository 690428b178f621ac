"""The one place the sweep package takes md-export's error classes from (they move to
md_export.core.errors in the layered layout: rewire this import only)."""

from __future__ import annotations

from md_export.errors import InputError, MdExportError

__all__ = ["RAY_HINT", "InputError", "MdExportError"]

RAY_HINT = "pip install 'md-export[ray]'"
