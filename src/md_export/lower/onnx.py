"""ONNX: torch.onnx.export (dynamo) of the captured program, in fp32 (fp16 comes from compression)."""

from __future__ import annotations

from pathlib import Path

import torch

from md_export.components.plan import ComponentPlan
from md_export.core.errors import ConversionError, first_line
from md_export.lower.base import LoweredModel, LowerOptions
from md_export.core.deps import package_version, require

EXTERNAL_DATA_OVER = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph


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
        except Exception as e:
            raise ConversionError(f"onnx: cannot convert component '{component.name}': {first_line(e)}") from e
        return LoweredModel(component.name, path, "fp32", notes=["external data"] if external else [])

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("onnx", "onnxruntime", "onnxscript")}


LOWERER = OnnxLowerer()
