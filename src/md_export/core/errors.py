"""Error tree. Every error md-export raises on purpose is one of these: the CLI prints its message
as a single line and exits with its code; MD_EXPORT_DEBUG=1 adds the traceback."""

from __future__ import annotations


class MdExportError(Exception):
    """Base class. `exit_code` is what the CLI returns."""

    exit_code = 2


class InputError(MdExportError):
    """Bad input from the user: a missing file, an unreadable config, a wrong format or option."""

    exit_code = 2


class UnknownNameError(InputError):
    """A name (family, rewrite, target, quantization level...) that is not registered."""

    def __init__(self, kind: str, name: str, known):
        known = sorted(known)
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(known) if known else '(none)'}")
        self.kind, self.name, self.known = kind, name, known


class ConversionError(MdExportError):
    """A backend failed to lower or save a component. The message names the component and,
    where the backend said, the op and the module it came from."""

    exit_code = 3


class UnsupportedOpError(MdExportError):
    """A runtime or evaluator met an op it does not implement."""

    exit_code = 3


class MissingDependencyError(MdExportError):
    """An optional backend package is not installed."""

    exit_code = 2

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed; install it with: pip install 'md-export[{extra}]'")


class ParityError(MdExportError):
    """A parity check fell short of its threshold (or could not run and skips were not allowed)."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """An exception's message as one line (at most 300 characters), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
