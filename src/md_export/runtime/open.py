"""Open a saved model as a Runner: a callable from a dict of input arrays to a dict of output
arrays, keyed by the contract's names. A chunked model (manifest "chunks") runs as a chain."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np

from md_export.core.errors import UnknownNameError
from md_export.core.names import TARGETS
from md_export.runtime.chain import chain

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# The runtime each target's parity runs in on this machine (Core ML: md-export's own evaluator).
RUNTIME_NAMES = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "coreml": "milrun"}


def open_file(target: str, path: Path, entry: dict | None = None, engine: str | None = None) -> Runner:
    """A runner for one saved file. `entry` is its manifest entry (a TFLite signature name);
    `engine` picks another runtime where a target has two (Core ML: "coreml" on macOS)."""
    if target not in TARGETS:
        raise UnknownNameError("target", target, TARGETS)
    module = importlib.import_module(f"md_export.runtime.{target}")
    return module.load(Path(path), entry or {}, **({"engine": engine} if engine else {}))


def open_model(target: str, bundle: Path, entry: dict, engine: str | None = None) -> Runner:
    """A runner for one manifest model entry of a bundle; a chunked model runs its chunks in turn."""
    if entry.get("chunks"):
        chunks = entry["chunks"]
        runners = [open_file(target, bundle / c["file"], c, engine) for c in chunks]
        return chain(runners, [[i["name"] for i in c["inputs"]] for c in chunks])
    return open_file(target, bundle / entry["file"], entry, engine)
