"""Compression levels: one parser for every target's level names.

Levels (per target):
  coreml: fp16 | int8 | w8a8 | palettize-{8,6,4,2}[-g<group>] | mixed-bit:<avg bits> | fp32
  tflite: fp16 | int8 | w8a8 | int4-block32 | int4 | mixed:fc=int8,conv=fp16,embedding=int8
  onnx:   fp16 | int8 | w8a8
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from md_export.core.errors import InputError, UnknownNameError


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
