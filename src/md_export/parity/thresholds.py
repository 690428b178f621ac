"""Default parity floors (PSNR in dB) per component and precision. Overridable per run
(`md-export check --threshold unet=45`) and, later, per recipe; the floor used is recorded."""

from __future__ import annotations

from ..errors import InputError

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
    """['unet=45', 'vae_decoder=35'] -> {'unet': 45.0, ...}; 'all=60' sets every model."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"--threshold {item!r}: use MODEL=DB, e.g. unet=45 (or all=60)")
    return out


def floor_for(model: str, precision: str, overrides: dict[str, float]) -> float:
    if model in overrides:
        return overrides[model]
    if "all" in overrides:
        return overrides["all"]
    return default_floor(model, precision)
