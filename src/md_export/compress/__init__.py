"""Compression of a saved model. `compress` takes what a backend lowered and returns what it
became; 'none' is the identity. Every level reports the model's size against its ideal
(parameters x bits / 8) plus the non-weight overhead of the uncompressed file, and names every
tensor it left uncompressed.

Levels (per target):
  coreml: fp16 | int8 | w8a8 | palettize-{8,6,4,2}[-g<group>] | mixed-bit:<avg bits> | fp32
  tflite: fp16 | int8 | w8a8 | int4-block32 | int4 | mixed:fc=int8,conv=fp16,embedding=int8
  onnx:   fp16 | int8 | w8a8
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import LoweredModel
from ..components import ComponentPlan, count_parameters
from ..errors import InputError, UnknownNameError

SIZE_TOLERANCE = 0.02


@dataclass(frozen=True)
class Level:
    text: str
    kind: str  # fp16 | fp32 | int8 | w8a8 | palettize | mixed-bit | int4 | int4-block | mixed
    bits: float
    group_size: int | None = None
    block: int | None = None
    rules: tuple[tuple[str, str], ...] = ()  # mixed: (op class, level)


_FIXED = {"fp16": 16.0, "fp32": 32.0, "int8": 8.0, "w8a8": 8.0, "int4": 4.0}
TARGET_KINDS = {
    "coreml": ("fp16", "fp32", "int8", "w8a8", "palettize", "mixed-bit"),
    "tflite": ("fp16", "int8", "w8a8", "int4", "int4-block", "mixed"),
    "onnx": ("fp16", "int8", "w8a8"),
}
EXAMPLES = {
    "coreml": "fp16, int8, w8a8, palettize-8, palettize-6, palettize-4, palettize-2, palettize-4-g16, mixed-bit:4.5",
    "tflite": "fp16, int8, w8a8, int4-block32, int4, mixed:fc=int8,conv=fp16",
    "onnx": "fp16, int8, w8a8",
}


def parse_level(target: str, text: str) -> Level:
    t = text.strip().lower()
    lv: Level | None = None
    if t in _FIXED:
        lv = Level(t, t, _FIXED[t])
    elif m := re.fullmatch(r"palettize-(\d)(?:-g(\d+))?", t):
        bits = int(m.group(1))
        if bits not in (1, 2, 3, 4, 6, 8):
            raise InputError(f"--quantize {text}: palettize takes 8, 6, 4 or 2 bits (also 3 and 1)")
        lv = Level(t, "palettize", float(bits), group_size=int(m.group(2)) if m.group(2) else None)
    elif m := re.fullmatch(r"mixed-bit:(\d+(?:\.\d+)?)", t):
        bits = float(m.group(1))
        if not 2.0 <= bits <= 8.0:
            raise InputError(f"--quantize {text}: the average bit width must be between 2 and 8")
        lv = Level(t, "mixed-bit", bits)
    elif m := re.fullmatch(r"int4-block(\d+)", t):
        lv = Level(t, "int4-block", 4.0, block=int(m.group(1)))
        if lv.block not in (32, 64, 128, 256):
            raise InputError(f"--quantize {text}: block size must be 32, 64, 128 or 256")
    elif t.startswith("mixed:"):
        rules = []
        for part in t.removeprefix("mixed:").split(","):
            cls, sep, lvl = part.partition("=")
            if not sep or cls not in ("fc", "conv", "embedding") or lvl not in ("fp16", "int8", "int4", "fp32", "none"):
                raise InputError(f"--quantize {text}: use mixed:fc=LEVEL,conv=LEVEL,embedding=LEVEL with LEVEL in fp16, int8, int4, fp32")
            rules.append((cls, "none" if lvl == "fp32" else lvl))
        bits = {"fp16": 16, "int8": 8, "int4": 4, "none": 32}
        lv = Level(t, "mixed", min(bits[lvl] for _, lvl in rules), rules=tuple(rules))
    if lv is None or lv.kind not in TARGET_KINDS.get(target, ()):
        raise UnknownNameError(f"{target} compression level", text, EXAMPLES.get(target, "").split(", "))
    return lv


# -- size accounting ---------------------------------------------------------------------------


def inventory(target: str, path: Path) -> list[tuple[str, int, float, int]]:
    if target == "coreml":
        from .coreml import inventory as inv
    elif target == "tflite":
        from .tflite import inventory as inv
    else:
        from .onnx import inventory as inv
    return inv(path)


@dataclass
class SizeReport:
    parameters: int
    bits: float
    bytes: int
    ideal_bytes: int
    overhead_bytes: int
    kept_excess_bytes: int
    kept_tensors: int
    kept_parameters: int
    side_bytes: int = 0  # per-channel scales, zero points, palettes

    @property
    def budget_bytes(self) -> int:
        return int(self.ideal_bytes * (1 + SIZE_TOLERANCE) + self.overhead_bytes + self.kept_excess_bytes + self.side_bytes)

    def to_json(self) -> dict:
        return {
            "parameters": self.parameters, "bits": self.bits, "bytes": self.bytes, "ideal_bytes": self.ideal_bytes,
            "ratio_to_ideal": round(self.bytes / max(self.ideal_bytes, 1), 4),
            "overhead_bytes": self.overhead_bytes, "kept_excess_bytes": self.kept_excess_bytes,
            "kept_tensors": self.kept_tensors, "kept_parameters": self.kept_parameters, "side_bytes": self.side_bytes,
            "budget_bytes": self.budget_bytes, "within_budget": self.bytes <= self.budget_bytes,
        }


def size_report(target: str, path: Path, parameters: int, bits: float, base_bytes: int, base_bits: float) -> SizeReport:
    """bytes vs ideal = parameters x bits / 8. The budget adds, each measured and reported: the
    overhead = what the uncompressed file held beyond parameters x base_bits / 8 (graph, names,
    non-parameter constants); kept excess = tensors stored wider than `bits` (norms, biases,
    embeddings a level leaves out, layers kept float); side bytes = per-channel scales, zero points
    and palettes. Over budget means something is stored that should not be (a float copy left
    behind, tensors skipped) or, on tiny models, that new tensor names outweigh 2% of the weights."""
    from ..bundle import path_bytes

    size = path_bytes(path)
    excess = 0
    kept = kept_params = side = 0
    for _name, n, stored, side_bytes in inventory(target, path):
        side += side_bytes
        if stored > bits + 0.5:
            excess += n * (stored - bits) / 8
            kept += 1
            kept_params += n
    return SizeReport(parameters, bits, size, int(parameters * bits / 8), max(0, int(base_bytes - parameters * base_bits / 8)),
                      int(excess), kept, kept_params, int(side))


# -- dispatch ----------------------------------------------------------------------------------


@dataclass
class Context:
    """What levels may need beyond the file: the reference plan/checkpoint, calibration cache."""

    data: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.data.get(key, default)


def compress(target: str, lowered: LoweredModel, component: ComponentPlan, level: str, context: dict | None) -> LoweredModel:
    if level in ("", "none", None):
        return lowered
    from ..bundle import path_bytes

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


def result_bits(result: LoweredModel, lv: Level) -> float:
    return float(getattr(result, "size", {}).get("bits", lv.bits)) if getattr(result, "size", None) else lv.bits


def _impl(target: str):
    if target == "coreml":
        from .coreml import apply
    elif target == "tflite":
        from .tflite import apply
    elif target == "onnx":
        from .onnx import apply
    else:
        raise UnknownNameError("target", target, TARGET_KINDS)
    return apply


class _TargetLevels(list):
    """The example levels of a target; `in` accepts every level parse_level accepts."""

    def __init__(self, target: str):
        super().__init__(EXAMPLES[target].split(", "))
        self.target = target

    def __contains__(self, level) -> bool:
        try:
            parse_level(self.target, str(level))
            return True
        except Exception:
            return False

    def get(self, level, default=None):
        return level if level in self else default


LEVELS = {t: _TargetLevels(t) for t in EXAMPLES}


def ideal_bytes(module, precision: str) -> int:
    """An uncompressed model's ideal size: parameters x (32 or 16) / 8."""
    return int(count_parameters(module) * (16 if precision == "fp16" else 32) / 8) if module is not None else 0
