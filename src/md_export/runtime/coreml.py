"""Core ML packages: md-export's MIL evaluator (milrun) everywhere; Core ML itself on macOS."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from md_export.core.deps import require


def load(path: Path, entry: dict, engine: str = "milrun"):
    if engine == "coreml":
        return _coreml_runner(path)
    from md_export.milrun import MilEvaluator

    return MilEvaluator(path).predict


def can_run_natively() -> bool:
    return sys.platform == "darwin"


def _coreml_runner(path: Path):
    ct = require("coremltools", "coreml")
    model = ct.models.MLModel(str(path))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in model.predict(feeds).items()}

    return run
