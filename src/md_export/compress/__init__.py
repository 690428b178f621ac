"""Compression of a saved model (issue 5 fills the levels in). `compress` takes what a backend
lowered and returns what it became; 'none' is the identity."""

from __future__ import annotations

from ..backends.base import LoweredModel
from ..components import ComponentPlan
from ..errors import UnknownNameError

LEVELS: dict[str, dict[str, object]] = {"coreml": {}, "tflite": {}, "onnx": {}}


def compress(target: str, lowered: LoweredModel, component: ComponentPlan, level: str, context: dict) -> LoweredModel:
    if level in ("", "none", None):
        return lowered
    impl = LEVELS.get(target, {}).get(level)
    if impl is None:
        raise UnknownNameError(f"{target} compression level", level, LEVELS.get(target, {}))
    return impl(lowered, component, context)
