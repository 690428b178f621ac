"""What every backend provides, and the registry that finds them by target name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..components import ComponentPlan
from ..errors import MissingDependencyError, UnknownNameError

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

TARGETS = {"coreml": "md_export.backends.coreml", "tflite": "md_export.backends.tflite", "onnx": "md_export.backends.onnx"}


@dataclass
class LowerOptions:
    """Options that reach a backend. Backends ignore what does not apply to them."""

    precision: str = "fp32"  # fp32 | fp16 (Core ML defaults to fp16 compute)
    minimum_deployment_target: str = "iOS17"
    compute_units: str = "ALL"
    extra: dict = field(default_factory=dict)


@dataclass
class LoweredModel:
    """What a backend wrote for one component; the bundle adds sha256 and size."""

    component: str
    path: Path  # file or (.mlpackage) folder inside the bundle being written
    precision: str
    compression: str = "none"
    signature: str | None = None
    notes: list[str] = field(default_factory=list)
    size: dict = field(default_factory=dict)  # compression size report (md_export.compress)


class Backend(Protocol):
    name: str
    extension: str
    default_precision: str

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path, options: LowerOptions) -> LoweredModel: ...

    def load(self, path: Path, entry: dict) -> Runner: ...

    def versions(self) -> dict[str, str]: ...


def get_backend(target: str) -> Backend:
    if target not in TARGETS:
        raise UnknownNameError("target", target, TARGETS)
    module = importlib.import_module(TARGETS[target])
    return module.BACKEND


def require(package: str, extra: str):
    """Import an optional dependency or fail with the install line."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        dist = {"coremltools": "coremltools", "litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert",
                "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}.get(package, package)
        raise MissingDependencyError(dist, extra) from e


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def model_files(entry: dict) -> list[str]:
    """The files of one manifest model entry: its file, or its chunks' files in run order."""
    if entry.get("chunks"):
        return [c["file"] for c in entry["chunks"]]
    return [entry["file"]] if entry.get("file") else []


def open_model(backend: Backend, bundle: Path, entry: dict, **kwargs) -> Runner:
    """A runner for one manifest model entry; a chunked model runs its chunks in turn."""
    if entry.get("chunks"):
        from ..compress.chunk import chain

        chunks = entry["chunks"]
        runners = [backend.load(bundle / c["file"], c, **kwargs) for c in chunks]
        return chain(runners, [[i["name"] for i in c["inputs"]] for c in chunks])
    return backend.load(bundle / entry["file"], entry, **kwargs)
