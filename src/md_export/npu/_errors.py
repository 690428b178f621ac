"""The one place this package imports md-export's error classes (they move to md_export.core.errors in #10)."""

from __future__ import annotations

from md_export.errors import ConversionError, InputError, MdExportError, ParityError, UnknownNameError


class NpuSetupError(MdExportError):
    """A host library or vendor SDK the NPU step needs is not installed (exit 2)."""

    exit_code = 2


class NpuBugError(MdExportError):
    """Something the NPU step should not meet happened (exit 4)."""

    exit_code = 4


__all__ = ["ConversionError", "InputError", "MdExportError", "NpuBugError", "NpuSetupError", "ParityError", "UnknownNameError"]
