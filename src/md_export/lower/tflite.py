"""TFLite (LiteRT): litert-torch converts the wrapped module into one named signature per file, in
fp32 (fp16 weights come from compression)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from md_export.components.plan import ComponentPlan
from md_export.core.errors import ConversionError, first_line
from md_export.lower.base import LoweredModel, LowerOptions
from md_export.lower.tflite_fold import fold_constants
from md_export.core.deps import package_version, require


class _NamedIO(torch.nn.Module):
    """Keyword inputs and a dict output, so the signature carries md-export's names."""


    def __init__(self, inner: torch.nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.inner = inner
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, **inputs):
        out = self.inner(*(inputs[n] for n in self.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.output_names, out))


@contextlib.contextmanager
def _litert_console_quiet():
    """litert-torch prints every conversion stage on its own rich console; md-export shows its
    own progress, so mute that console while converting (MD_EXPORT_DEBUG=1 keeps it)."""
    try:
        from litert_torch import progress as litert_progress
    except ImportError:
        yield
        return
    console = getattr(litert_progress, "console", None)
    before = getattr(console, "quiet", False)
    if console is not None and os.environ.get("MD_EXPORT_DEBUG", "") in ("", "0"):
        console.quiet = True
    try:
        yield
    finally:
        if console is not None:
            console.quiet = before


@contextlib.contextmanager
def _constants_read_only():
    """litert-torch clamps every float constant to the finite range in place while lowering it
    (backend.inline_consts._clamp_inf_values), which writes every page of every weight: in a forked
    child, or on memory-mapped safetensors, that turns the whole checkpoint into private copies
    (3.4 GB for an SD 1.5 UNet). Clamp only a tensor that holds an infinity, into a new tensor:
    the same values reach the converter and the weights are only read."""
    try:
        from litert_torch.backend import inline_consts
    except ImportError:
        inline_consts = None
    original = getattr(inline_consts, "_clamp_inf_values", None)
    if original is None:  # a litert-torch without it: nothing to replace
        yield
        return

    def clamp_copy(tensor: torch.Tensor) -> torch.Tensor:
        if torch.is_floating_point(tensor) and bool(torch.isinf(tensor).any()):
            info = torch.finfo(tensor.dtype)
            return tensor.clamp(min=info.min, max=info.max)
        return tensor

    inline_consts._clamp_inf_values = clamp_copy
    try:
        yield
    finally:
        inline_consts._clamp_inf_values = original


def _per_op(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


class TFLiteLowerer:
    name = "tflite"
    extension = ".tflite"
    default_precision = "fp32"
    native_precisions = ("fp32",)

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path, options: LowerOptions) -> LoweredModel:
        litert_torch = require("litert_torch", "tflite")
        path = out_dir / f"{component.name}{self.extension}"
        names_in = [s.name for s in component.inputs]
        names_out = [s.name for s in component.outputs]
        kwargs = dict(zip(names_in, component.example_inputs()))
        # litert-torch exports the module itself (it cannot take a lifted ExportedProgram back in):
        # hand it the same wrapped module and the same example inputs the capture used.
        module = _NamedIO(component.module, names_in, names_out).eval()
        if options.precision != "fp32":  # fp16 weights come from compression (export.py), not the converter
            raise ConversionError(f"tflite: the converter writes fp32; precision {options.precision} is applied after lowering")
        try:
            with _litert_console_quiet(), _constants_read_only():
                # lightweight: constants of 1 MB and more stay lazy resources instead of being
                # copied into the MLIR module. The ops that read only them are then folded here, one
                # at a time: litert-torch's runtime folding does all at once and held 10.6 GB for
                # an SD 1.5 UNet (lower.tflite_fold)
                convert = {"lightweight_conversion": True, "runtime_constant_folding": False} if options.large else {}
                edge = litert_torch.signature(component.name, module, sample_kwargs=kwargs).convert(**convert)
                edge.export(str(path))
                del edge
                notes = []
                if options.large:
                    report = fold_constants(path)
                    if report.count:
                        notes.append(f"{report.count} constant-only ops folded by md-export after lightweight conversion ({_per_op(report.folded)})")
                    if report.left:
                        notes.append(f"constant-only ops left to run at each call: {_per_op(report.left)}")
        except Exception as e:
            raise ConversionError(f"tflite: cannot convert component '{component.name}': {first_line(e)}") from e
        return LoweredModel(component.name, path, "fp32", signature=component.name, notes=notes)

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")}


LOWERER = TFLiteLowerer()
