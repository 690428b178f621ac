"""Capture: one torch.export of a wrapped component at its static shapes. Every backend lowers
this same capture, so the three formats start from one graph."""

from __future__ import annotations

import re

import torch

from md_export.components.plan import ComponentPlan
from md_export.core.errors import ConversionError, first_line


def capture(component: ComponentPlan, example_inputs: tuple[torch.Tensor, ...] | None = None) -> torch.export.ExportedProgram:
    args = example_inputs if example_inputs is not None else component.example_inputs()
    try:
        with torch.no_grad():
            return torch.export.export(component.module, args, strict=False)
    except Exception as e:
        raise ConversionError(f"capture of '{component.name}' failed in torch.export: {first_line(e)}") from e


def op_origin(ep: torch.export.ExportedProgram, op: str) -> str | None:
    """The module path an op came from, from the captured graph's metadata, e.g.
    'text_encoder.text_model.encoder.layers.0.self_attn' for op 'alias'."""
    pattern = re.compile(rf"(^|\.){re.escape(op)}(\.|$)")
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        target = getattr(node.target, "__name__", str(node.target))
        if pattern.search(target) or pattern.search(str(node.target)):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, _cls = list(stack.values())[-1]
                return re.sub(r"^L\['self'\]\.?|^L__self___?", "", str(path)) or "(top level)"
            return "(top level)"
    return None
