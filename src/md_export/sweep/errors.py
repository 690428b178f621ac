"""The error classes the sweep package raises, and the install hint for the Ray extra."""

from __future__ import annotations

from md_export.core.errors import InputError, MdExportError

__all__ = ["RAY_HINT", "InputError", "MdExportError"]

RAY_HINT = "pip install 'md-export[ray]'"
