"""`md-export env`: versions of what md-export drives, and combinations known to misbehave
(measured on these machines, 2026-11; see DESIGN.md)."""

from __future__ import annotations

import platform
import sys

from md_export import __version__
from md_export.core.deps import package_version

PACKAGES = (
    "torch", "numpy", "diffusers", "transformers", "safetensors",
    "coremltools", "scikit-learn",
    "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "ai-edge-torch", "tensorflow",
    "onnx", "onnxruntime", "onnxscript",
)


def _v(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    parts = []
    for p in text.split("+")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def findings(versions: dict[str, str | None]) -> list[dict]:
    """Known-bad or untested combinations: level 'error' breaks an export, 'warn' may, 'note' is informational."""
    out = []
    torch_v, ct_v, np_v = _v(versions.get("torch")), _v(versions.get("coremltools")), _v(versions.get("numpy"))
    if ct_v and torch_v and ct_v[:1] == (9,) and torch_v > (2, 7, 99):
        out.append({"level": "note", "message": f"coremltools {versions['coremltools']} is tested with torch <= 2.7; "
                    f"torch {versions['torch']} works through md-export's torch.export path (the TorchScript path is not used)"})
    if ct_v and np_v >= (2, 4):
        out.append({"level": "note", "message": f"numpy {versions['numpy']} breaks coremltools' TorchScript frontend "
                    "(int() of shape products); md-export converts from torch.export, which works"})
    if versions.get("ai-edge-torch"):
        out.append({"level": "warn", "message": "ai-edge-torch is deprecated and renamed litert-torch; uninstall it to avoid two copies of the converter"})
    lt = _v(versions.get("litert-torch"))
    if lt and torch_v and torch_v >= (2, 15):
        out.append({"level": "error", "message": f"litert-torch {versions['litert-torch']} needs torch < 2.15; found {versions['torch']}"})
    if _v(versions.get("ai-edge-quantizer"))[:2] == (0, 10):
        out.append({"level": "note", "message": "ai-edge-quantizer 0.10.0 crashes on tensors over 32 MiB (full-size SD UNet convs)"})
    if versions.get("coremltools") and sys.platform != "darwin":
        out.append({"level": "note", "message": "coremltools cannot run models on Linux: Core ML parity uses md-export's MIL evaluator"})
    for dist, extra in (("coremltools", "coreml"), ("litert-torch", "tflite"), ("ai-edge-litert", "tflite"), ("onnxruntime", "onnx"), ("onnxscript", "onnx")):
        if not versions.get(dist):
            out.append({"level": "warn", "message": f"{dist} is not installed: pip install 'md-export[{extra}]'"})
    if not versions.get("torch"):
        out.append({"level": "error", "message": "torch is not installed"})
    return out


def report() -> dict:
    versions = {"md-export": __version__, "python": sys.version.split()[0]}
    versions.update({p: package_version(p) for p in PACKAGES})
    return {"platform": f"{platform.system()} {platform.machine()}", "versions": versions, "findings": findings(versions)}
