"""The NPU step's own error classes, beside the ones it shares with the rest of md-export."""

from __future__ import annotations

from md_export.core.errors import ConversionError, InputError, MdExportError, ParityError, UnknownNameError


class NpuSetupError(MdExportError):
    """A host library or vendor SDK the NPU step needs is not installed (exit 2)."""

    exit_code = 2


class NpuBugError(MdExportError):
    """Something the NPU step should not meet happened (exit 4)."""

    exit_code = 4


__all__ = ["ConversionError", "InputError", "MdExportError", "NpuBugError", "NpuSetupError", "ParityError", "UnknownNameError"]
