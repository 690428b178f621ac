"""Core ML compression levels: each level's steps over the primitives in coreml.py."""

from __future__ import annotations

from md_export.compress.coreml import linear_int8, palettize, to_fp16
from md_export.compress.coreml_w8a8 import apply_w8a8
from md_export.compress.sensitivity import mixed_bit_recipe
from md_export.core.errors import ConversionError


def apply(lowered, component, level, context: dict):
    path = lowered.path
    if level.kind == "fp16":
        if lowered.precision != "fp16":
            to_fp16(path)
            lowered.precision = "fp16"
    elif level.kind == "fp32":
        # export.py lowers a component whose level is fp32 at fp32 compute: nothing is left to do
        if lowered.precision != "fp32":
            raise ConversionError(f"coreml: '{component.name}' was lowered at {lowered.precision}; level fp32 needs an fp32 lowering")
    elif level.kind == "int8":
        linear_int8(path)
    elif level.kind == "palettize":
        palettize(path, int(level.bits), level.group_size)
        lowered.notes.append("embedding lookups left fp16")
    elif level.kind == "mixed-bit":
        recipe = mixed_bit_recipe(component, lowered, level.bits, context)
        palettize(path, 8, per_op_bits=recipe["per_const_bits"])
        lowered.notes.append(f"mixed-bit palettization, average {recipe['average_bits']:.2f} bits over "
                             f"{len(recipe['per_const_bits'])} weights")
        lowered.size = {"bits": recipe["average_bits"]}
    elif level.kind == "w8a8":
        apply_w8a8(lowered, component, context)
    else:
        raise ValueError(level.kind)
    return lowered
