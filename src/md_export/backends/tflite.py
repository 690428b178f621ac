"""TFLite (LiteRT): litert-torch converts the captured program into one named signature per file;
parity runs it with ai-edge-litert's interpreter (the kernels of Android's CPU path)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from ..capture import first_line
from ..components import ComponentPlan
from ..errors import ConversionError
from .base import LoweredModel, LowerOptions, Runner, package_version, require


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


class TFLiteBackend:
    name = "tflite"
    extension = ".tflite"
    default_precision = "fp32"

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path, options: LowerOptions) -> LoweredModel:
        litert_torch = require("litert_torch", "tflite")
        path = out_dir / f"{component.name}{self.extension}"
        names_in = [s.name for s in component.inputs]
        names_out = [s.name for s in component.outputs]
        kwargs = dict(zip(names_in, component.example_inputs()))
        # litert-torch exports the module itself (it cannot take a lifted ExportedProgram back in):
        # hand it the same wrapped module and the same example inputs the capture used.
        module = _NamedIO(component.module, names_in, names_out).eval()
        if options.precision not in ("fp32", "fp16"):
            raise ConversionError(f"tflite: precision {options.precision} is not one of fp32, fp16")
        try:
            with _litert_console_quiet():
                edge = litert_torch.signature(component.name, module, sample_kwargs=kwargs).convert()
                edge.export(str(path))
        except Exception as e:
            raise ConversionError(f"tflite: cannot convert component '{component.name}': {first_line(e)}") from e
        lowered = LoweredModel(component.name, path, "fp32", signature=component.name)
        if options.precision == "fp16":  # fp16 weights (ai-edge-quantizer float casting); GPU delegates compute in fp16
            from ..compress import compress

            lowered = compress("tflite", lowered, component, "fp16", {})
        return lowered

    def load(self, path: Path, entry: dict) -> Runner:
        require("ai_edge_litert", "tflite")
        from ai_edge_litert.interpreter import Interpreter

        from ..progress import third_party_output_muted

        interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        signature = entry.get("signature") or next(iter(interpreter.get_signature_list()))
        runner = interpreter.get_signature_runner(signature)
        in_details = runner.get_input_details()
        invoked = False

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            nonlocal invoked
            cast = {k: np.ascontiguousarray(v, dtype=in_details[k]["dtype"]) for k, v in feeds.items()}
            if invoked:
                return {k: np.array(v) for k, v in runner(**cast).items()}
            # the first invoke applies the CPU delegate, whose C++ logs "Created TensorFlow Lite XNNPACK delegate"
            with third_party_output_muted():
                out = {k: np.array(v) for k, v in runner(**cast).items()}
            invoked = True
            return out

        return run

    def versions(self) -> dict[str, str]:
        return {d: package_version(d) for d in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer")}


BACKEND = TFLiteBackend()
