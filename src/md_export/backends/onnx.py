"""ONNX: torch.onnx.export (dynamo) of the captured program; run with onnxruntime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..capture import first_line
from ..components import ComponentPlan
from ..errors import ConversionError
from .base import LoweredModel, LowerOptions, Runner, package_version, require

EXTERNAL_DATA_OVER = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph


class OnnxBackend:
    name = "onnx"
    extension = ".onnx"
    default_precision = "fp32"

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
        lowered = LoweredModel(component.name, path, "fp32", notes=["external data"] if external else [])
        if options.precision == "fp16":  # fp16 weights and compute, fp32 graph inputs/outputs
            from ..compress import compress

            lowered = compress("onnx", lowered, component, "fp16", {})
        return lowered

    def load(self, path: Path, entry: dict) -> Runner:
        ort = require("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in session.get_outputs()]
        in_types = {i.name: i.type for i in session.get_inputs()}

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            cast = {k: np.ascontiguousarray(v, dtype=_np_dtype(in_types[k])) for k, v in feeds.items()}
            return dict(zip(out_names, session.run(out_names, cast)))

        return run

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("onnx", "onnxruntime", "onnxscript")}


def _np_dtype(onnx_type: str):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32, "tensor(int64)": np.int64}[onnx_type]


BACKEND = OnnxBackend()
