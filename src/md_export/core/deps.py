"""Optional dependencies: import one or fail with the install line; installed versions."""

from __future__ import annotations

import importlib

from md_export.core.errors import MissingDependencyError

DISTRIBUTIONS = {"coremltools": "coremltools", "litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert",
                 "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}


def require(package: str, extra: str):
    """Import an optional dependency or fail with the install line."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingDependencyError(DISTRIBUTIONS.get(package, package), extra) from e


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
