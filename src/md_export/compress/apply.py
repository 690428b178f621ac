"""Compression of a saved model. `compress` takes what a lowerer wrote and returns what it
became; 'none' is the identity. Every level reports the model's size against its ideal
(parameters x bits / 8) plus the non-weight overhead of the uncompressed file, and names every
tensor it left uncompressed. `context` carries what some levels need beyond the file: the
reference plan and checkpoint (calibration), and a cache of recorded calibration inputs.
"""

from __future__ import annotations

from md_export.components.plan import ComponentPlan, count_parameters
from md_export.compress.levels import TARGET_KINDS, Level, parse_level
from md_export.compress.size import inventory, size_report
from md_export.core.errors import UnknownNameError
from md_export.core.io import path_bytes
from md_export.lower.base import LoweredModel


def compress(target: str, lowered: LoweredModel, component: ComponentPlan, level: str,
             context: dict | None) -> LoweredModel:
    if level in ("", "none", None):
        return lowered
    lv = parse_level(target, level)
    context = context if context is not None else {}
    base_bytes = path_bytes(lowered.path)
    base_bits = 32.0 if lowered.precision == "fp32" else 16.0
    impl = _impl(target)
    result = impl(lowered, component, lv, context)
    params = count_parameters(component.module) if component.module is not None else 0
    report = size_report(target, result.path, params, lv.bits if lv.kind != "mixed-bit" else result_bits(result, lv), base_bytes, base_bits)
    result.compression = lv.text
    result.size = report.to_json()
    result.size["level"] = lv.text
    left = [(name, n, stored) for name, n, stored, _ in inventory(target, result.path)
            if stored > report.bits + 0.5 and n >= max(4096, params // 100)]
    if left:  # never leave a sizeable tensor uncompressed without saying so
        result.notes.append("left uncompressed: " + ", ".join(f"{name} ({n} params, {stored:g}-bit)" for name, n, stored in left))
    return result


def needs_calibration(target: str, level: str | None) -> bool:
    """Whether compressing at `level` reads inputs recorded from the reference pipeline (activation
    ranges of w8a8, layer scores of mixed-bit, the fp16 overflow guard of ONNX)."""
    if level in ("", "none", None):
        return False
    kind = parse_level(target, level).kind
    return kind in ("w8a8", "mixed-bit") or (target == "onnx" and kind == "fp16")


def result_bits(result: LoweredModel, lv: Level) -> float:
    return float(getattr(result, "size", {}).get("bits", lv.bits)) if getattr(result, "size", None) else lv.bits


def _impl(target: str):
    if target == "coreml":
        from md_export.compress.coreml_levels import apply
    elif target == "tflite":
        from md_export.compress.tflite import apply
    elif target == "onnx":
        from md_export.compress.onnx import apply
    else:
        raise UnknownNameError("target", target, TARGET_KINDS)
    return apply
