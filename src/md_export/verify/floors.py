"""Parity floors (PSNR in dB) per component, precision and compression level, and the order their
sources apply in: the command line (`--threshold unet=45`), then a recipe the user names
(`--recipe`), then these defaults; a bundle's recorded floors may only raise the result."""

from __future__ import annotations

import math

from md_export.core.errors import InputError
from md_export.core.names import PARITY_KEYS

DEFAULT_PSNR = {
    "fp32": {"text_encoder": 80.0, "unet": 80.0, "vae_decoder": 80.0, "vae_encoder": 80.0, "end_to_end": 40.0},
    "fp16": {"text_encoder": 50.0, "unet": 50.0, "vae_decoder": 40.0, "vae_encoder": 40.0, "end_to_end": 25.0},
}


def default_floor(model: str, precision: str) -> float:
    table = DEFAULT_PSNR.get(precision)
    if table is None:
        raise InputError(f"no default parity floor for precision '{precision}'; give one with --threshold {model}=DB")
    return table.get(model, min(table.values()))


def parse_overrides(items: list[str]) -> dict[str, float]:
    """['unet=45', 'vae_decoder=35'] -> {'unet': 45.0, ...}; 'all=60' sets every model. The name
    is one of PARITY_KEYS and the floor a finite number of dB (a NaN floor would pass everything)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--threshold {item!r}: use MODEL=DB, e.g. unet=45 (or all=60)")
        if name not in PARITY_KEYS:
            raise InputError(f"--threshold {item!r}: unknown model '{name}'; known: {', '.join(PARITY_KEYS)}")
        try:
            db = float(value)
        except ValueError:
            raise InputError(f"--threshold {item!r}: '{value.strip()}' is not a number of dB; use MODEL=DB, e.g. {name}=45") from None
        if not math.isfinite(db):
            raise InputError(f"--threshold {item!r}: use a finite PSNR floor in dB, e.g. {name}=45")
        out[name] = db
    return out


# Floors for compressed models, keyed by the manifest's "compression" value (or its family:
# "palettize-6-g16" -> "palettize-6", "mixed-bit:4.5" -> "mixed-bit", "int4-block32" -> "int4-block").
# Measured on the tiny default model (random weights, which compress worse than trained ones);
# the floor is a few dB under what was measured, so a broken level fails, a working one passes.
COMPRESSION_PSNR = {
    "fp16": DEFAULT_PSNR["fp16"],
    "int8": {"text_encoder": 35.0, "unet": 35.0, "vae_decoder": 35.0, "vae_encoder": 35.0, "end_to_end": 20.0},
    "w8a8": {"text_encoder": 15.0, "unet": 18.0, "vae_decoder": 18.0, "vae_encoder": 18.0, "end_to_end": 10.0},
    "palettize-8": {"text_encoder": 35.0, "unet": 35.0, "vae_decoder": 35.0, "vae_encoder": 35.0, "end_to_end": 20.0},
    "palettize-6": {"text_encoder": 28.0, "unet": 28.0, "vae_decoder": 28.0, "vae_encoder": 28.0, "end_to_end": 15.0},
    "palettize-4": {"text_encoder": 18.0, "unet": 18.0, "vae_decoder": 18.0, "vae_encoder": 18.0, "end_to_end": 10.0},
    "palettize-2": {"text_encoder": 5.0, "unet": 5.0, "vae_decoder": 5.0, "vae_encoder": 5.0, "end_to_end": 3.0},
    "mixed-bit": {"text_encoder": 15.0, "unet": 15.0, "vae_decoder": 15.0, "vae_encoder": 15.0, "end_to_end": 8.0},
    "int4": {"text_encoder": 15.0, "unet": 15.0, "vae_decoder": 15.0, "vae_encoder": 15.0, "end_to_end": 8.0},
    "int4-block": {"text_encoder": 18.0, "unet": 18.0, "vae_decoder": 18.0, "vae_encoder": 18.0, "end_to_end": 10.0},
    "mixed": {"text_encoder": 18.0, "unet": 18.0, "vae_decoder": 18.0, "vae_encoder": 18.0, "end_to_end": 10.0},
}


def compression_family(compression: str | None) -> str:
    c = (compression or "none").lower()
    if c.startswith("palettize-"):
        return "-".join(c.split("-")[:2])
    if c.startswith("mixed-bit"):
        return "mixed-bit"
    if c.startswith("int4-block"):
        return "int4-block"
    if c.startswith("mixed:"):
        return "mixed"
    return c


def level_floor(model: str, precision: str, compression: str | None = None) -> float:
    """md-export's own floor for a model at its precision and compression level."""
    family = compression_family(compression)
    if family not in ("none", "fp32", "") and family in COMPRESSION_PSNR:
        table = COMPRESSION_PSNR[family]
        return min(table.get(model, min(table.values())), default_floor(model, precision))
    return default_floor(model, precision)


def _given(model: str, floors: dict[str, float]) -> float | None:
    if model in floors:
        return floors[model]
    return floors.get("all")


def floor_for(model: str, precision: str, overrides: dict[str, float], compression: str | None = None,
              recipe: dict[str, float] | None = None, recorded: dict[str, float] | None = None) -> float:
    """The floor a check uses. From the first that has one: the command line (`overrides`), a
    recipe the user named (`recipe`), md-export's default for the level. A bundle's own recorded
    floors (`recorded`, from its manifest) can only raise that, never lower it: a bundle is
    untrusted input and must not weaken the gate that checks it."""
    base = _given(model, overrides)
    if base is None:
        base = _given(model, recipe or {})
    if base is None:
        base = level_floor(model, precision, compression)
    raised = _given(model, recorded or {})
    return max(base, raised) if raised is not None else base


def end_to_end_floor(models: dict, precision: str, overrides: dict[str, float], recipe: dict[str, float] | None = None,
                     recorded: dict[str, float] | None = None) -> float:
    """The image floor of a bundle: the lowest any of its models' compressions allows."""
    floors = [floor_for("end_to_end", precision, overrides, m.get("compression"), recipe, recorded) for m in models.values()]
    return min(floors, default=floor_for("end_to_end", precision, overrides, None, recipe, recorded))


# Snapdragon NPU models in the HTP simulator against the same uncompiled .tflite on the CPU, by the
# fallback's compression (else precision). The HTP computes fp32 models in fp16. Measured on the
# default model (issue #15): fp32/fp16 worst 53.1 dB (UNet), w8a8 worst 32.0 dB (VAE decoder).
# Prompt accuracy (md-export eval, shapes vocabulary): the fp32 PyTorch reference must reach this,
# and a bundle at these levels may lose at most this much of it (shares, not points).
REFERENCE_ACCURACY = 0.90
ACCURACY_DROP = {"fp32": 0.02, "fp16": 0.02}

NPU_PSNR = {"fp32": 45.0, "fp16": 45.0, "w8a8": 25.0}
NPU_DEFAULT_PSNR = 25.0


def npu_floor(precision: str | None, compression: str | None) -> float:
    for key in (compression, precision):
        if key and key in NPU_PSNR:
            return NPU_PSNR[key]
    return NPU_DEFAULT_PSNR
