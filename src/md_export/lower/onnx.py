"""ONNX: torch.onnx.export (dynamo) of the captured program, in fp32 (fp16 comes from compression)."""

from __future__ import annotations

from pathlib import Path

import torch

from md_export.components.plan import ComponentPlan
from md_export.core.errors import ConversionError, first_line
from md_export.lower.base import LoweredModel, LowerOptions
from md_export.core.deps import package_version, require

EXTERNAL_DATA_OVER = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph
# torch.onnx records, per node, the Python stack that made it: file paths of the exporting machine.
# A bundle ships inside apps, so they are dropped (the module path in `namespace` stays).
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_source_paths(path: Path) -> int:
    """Remove the per-node Python stack traces from a saved ONNX file; returns how many."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external data stays where it is
    removed = 0
    graphs = [model.graph] + [f for f in model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            removed += len(node.metadata_props) - len(keep)
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            for a in node.attribute:  # subgraphs (If/Loop bodies)
                graphs += ([a.g] if a.HasField("g") else []) + list(a.graphs)
    if removed:
        onnx.save(model, str(path))
    return removed


class OnnxLowerer:
    name = "onnx"
    extension = ".onnx"
    default_precision = "fp32"
    native_precisions = ("fp32",)

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path, options: LowerOptions) -> LoweredModel:
        require("onnx", "onnx")
        require("onnxscript", "onnx")
        path = out_dir / f"{component.name}{self.extension}"
        args = component.example_inputs()
        try:
            program = torch.onnx.export(
                ep,
                args,
                input_names=[s.name for s in component.inputs],
                output_names=[s.name for s in component.outputs],
                dynamo=True,
                verbose=False,
            )
            weights = sum(p.numel() * p.element_size() for p in component.module.parameters())
            external = weights > EXTERNAL_DATA_OVER
            program.save(str(path), external_data=external)
            strip_source_paths(path)
        except Exception as e:
            raise ConversionError(f"onnx: cannot convert component '{component.name}': {first_line(e)}") from e
        return LoweredModel(component.name, path, "fp32", notes=["external data"] if external else [])

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("onnx", "onnxruntime", "onnxscript")}


LOWERER = OnnxLowerer()
