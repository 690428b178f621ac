"""NPU targets: parse `--npu qualcomm:SM8650,SM8750` into (vendor, SoC) pairs.

Qualcomm SoCs are the ones ai_edge_litert's AOT compiler knows (its `qualcomm.target.SocModel` enum). MediaTek,
Google Tensor and Samsung are known vendors whose compiler SDKs no package registry carries: asking for one is a
one-line error naming the SDK and where LiteRT looks for it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Iterable, Sequence

from md_export.npu._errors import InputError, NpuSetupError, UnknownNameError

QUALCOMM = "qualcomm"

# LiteRT skips these in an AI Pack (they are automotive, not Android phone SoCs).
NON_PHONE_SOCS = frozenset({"SA8255", "SA8295"})

# vendor -> (SDK name, pip package whose build downloads it, Python module LiteRT imports, env var LiteRT also reads)
_VENDOR_SDKS: dict[str, tuple[str, str, str, str | None]] = {
    "mediatek": ("MediaTek NeuroPilot SDK", "ai-edge-litert-sdk-mediatek", "ai_edge_litert_sdk_mediatek", None),
    "google_tensor": (
        "Google Tensor ML SDK",
        "ai-edge-litert-sdk-google-tensor",
        "ai_edge_litert_sdk_google_tensor",
        "GOOGLE_TENSOR_COMPILER_LIB",
    ),
    "samsung": ("Samsung Exynos AI SDK", "ai-edge-litert-sdk-samsung-nightly", "ai_edge_litert_sdk_samsung", None),
}
_VENDOR_ALIASES = {"google-tensor": "google_tensor", "tensor": "google_tensor", "google": "google_tensor", "mtk": "mediatek"}


@dataclasses.dataclass(frozen=True)
class NpuTarget:
    """One SoC to compile for. `group` is the AI Pack device group LiteRT names it (`Qualcomm_SM8750`)."""

    vendor: str
    soc: str

    @property
    def group(self) -> str:
        return f"Qualcomm_{self.soc}"

    @property
    def phone(self) -> bool:
        return self.soc not in NON_PHONE_SOCS

    def __str__(self) -> str:
        return f"{self.vendor}:{self.soc}"


def known_qualcomm_socs() -> list[str]:
    """SoC names of ai_edge_litert's Qualcomm AOT target enum, in its order (without ALL)."""
    try:
        from ai_edge_litert.aot.vendors.qualcomm import target as qnn_target
    except ImportError as e:
        raise NpuSetupError(
            f"ai_edge_litert's AOT compiler is not importable ({e}); install it with: pip install 'md-export[tflite]'"
        ) from None
    return [str(m.value) for m in qnn_target.SocModel if m.value != "ALL"]


def vendor_sdk_error(vendor: str) -> NpuSetupError:
    """The one-line error for a vendor whose compiler SDK md-export cannot reach from a package registry."""
    sdk, package, module, env = _VENDOR_SDKS[vendor]
    where = f"the `data/` folder of the Python package {module}"
    if env:
        where += f", or the folder named by ${env}"
    found = _sdk_present(module, env)
    state = (
        f"found at {found}, but md-export compiles for '{QUALCOMM}' only (no {vendor} compile is wired or tested)"
        if found
        else "not found"
    )
    return NpuSetupError(
        f"--npu {vendor}: needs the {sdk}, {state}; LiteRT looks for it in {where} "
        f"(pip install {package}, whose build downloads the SDK from the vendor; no registry carries it)"
    )


def _sdk_present(module: str, env: str | None) -> str | None:
    if env and os.environ.get(env) and os.path.isdir(os.environ[env]):
        return os.environ[env]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        data = os.path.join(loc, "data")
        if os.path.isdir(data) and os.listdir(data):
            return data
    return None


def parse_npu_targets(spec: str | Sequence[str], known_socs: Iterable[str] | None = None) -> list[NpuTarget]:
    """Parse one or more `vendor:SOC[,SOC...]` strings (e.g. `qualcomm:SM8650,SM8750`, `qualcomm:all`).

    SoC names are case-insensitive, duplicates are dropped, order is kept. An unknown SoC lists the known ones;
    mediatek / google_tensor / samsung raise the vendor's SDK error.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise InputError("--npu: empty; give vendor:SOC[,SOC...], e.g. qualcomm:SM8650,SM8750")
    known: list[str] | None = list(known_socs) if known_socs is not None else None
    out: list[NpuTarget] = []
    for item in specs:
        vendor_part, sep, socs_part = item.strip().partition(":")
        vendor = vendor_part.strip().lower().replace(" ", "_")
        vendor = _VENDOR_ALIASES.get(vendor, vendor)
        if vendor in _VENDOR_SDKS:
            raise vendor_sdk_error(vendor)
        if vendor != QUALCOMM:
            raise UnknownNameError("NPU vendor", vendor_part.strip() or item, [QUALCOMM, *_VENDOR_SDKS])
        if known is None:
            known = known_qualcomm_socs()
        names = [s.strip().upper() for s in socs_part.split(",") if s.strip()] if sep else []
        if not names:
            raise InputError(
                f"--npu {item!r}: name the SoCs, e.g. qualcomm:SM8650,SM8750 (or qualcomm:all); known: {', '.join(known)}"
            )
        if names == ["ALL"]:
            names = [s for s in known if s not in NON_PHONE_SOCS]
        for name in names:
            if name not in known:
                raise UnknownNameError("Qualcomm SoC", name, known)
            target = NpuTarget(QUALCOMM, name)
            if target not in out:
                out.append(target)
    return out
