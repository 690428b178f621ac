"""Core ML: coremltools converts the captured program (after run_decompositions) to an ML program
`.mlpackage` at the compute precision asked for (fp16 or fp32)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from md_export.capture.torch_export import op_origin
from md_export.components.plan import ComponentPlan
from md_export.core.deps import package_version, require
from md_export.core.errors import ConversionError, InputError, first_line
from md_export.core.names import COMPUTE_UNITS, DEPLOYMENT_TARGETS
from md_export.lower.base import LoweredModel, LowerOptions
from md_export.lower.coreml_package import normalize_mlpackage

_NP = {"float32": np.float32, "int32": np.int32, "float16": np.float16}


class CoreMLLowerer:
    name = "coreml"
    extension = ".mlpackage"
    default_precision = "fp16"
    native_precisions = ("fp32", "fp16")

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path, options: LowerOptions) -> LoweredModel:
        ct = require("coremltools", "coreml")
        from md_export.lower.coreml_torch_ops import register_missing_torch_ops

        register_missing_torch_ops()
        if options.minimum_deployment_target not in DEPLOYMENT_TARGETS:
            raise InputError(f"--minimum-deployment-target {options.minimum_deployment_target}: use one of {', '.join(DEPLOYMENT_TARGETS)}")
        if options.compute_units not in COMPUTE_UNITS:
            raise InputError(f"--compute-units {options.compute_units}: use one of {', '.join(COMPUTE_UNITS)}")
        precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}.get(options.precision)
        if precision is None:
            raise InputError(f"coreml: precision '{options.precision}' is not one of fp16, fp32")
        keep_fp32 = set(options.extra.get("fp32_ops", ()))
        if precision == ct.precision.FLOAT16 and keep_fp32:
            # e.g. softmax-fp32: these op types stay in fp32 inside the fp16 program
            precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in keep_fp32)
        path = out_dir / f"{component.name}{self.extension}"
        try:
            decomposed = ep.run_decompositions({})
            model = ct.convert(
                decomposed,
                convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, options.minimum_deployment_target),
                compute_precision=precision,
                compute_units=getattr(ct.ComputeUnit, options.compute_units),
                inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=_NP[s.dtype]) for s in component.inputs],
                outputs=[ct.TensorType(name=s.name, dtype=_NP[s.dtype]) for s in component.outputs],
                skip_model_load=True,
            )
            model.save(str(path))
            normalize_mlpackage(path)
        except Exception as e:
            raise ConversionError(_explain(component.name, ep, e)) from e
        return LoweredModel(component.name, path, options.precision)

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("coremltools", "scikit-learn")}


def _explain(component: str, ep, e: Exception) -> str:
    """One line: the component, the op coremltools choked on and the module it came from."""
    msg = first_line(e)
    m = re.search(r"Unsupported fx node (\S+?),|Unsupported op[^:]*: (\S+)|op '?(\w+)'? (?:is )?not (?:implemented|supported)", msg)
    if m:
        op = next(g for g in m.groups() if g)
        where = op_origin(ep, op)
        return f"coreml: cannot convert component '{component}': op '{op}' is not supported by coremltools" + (
            f" (from module {where})" if where else ""
        ) + f" [{msg}]"
    return f"coreml: cannot convert component '{component}': {msg}"


LOWERER = CoreMLLowerer()
