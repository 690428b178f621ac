"""Finding families: by name, all of them, or by a checkpoint's configs. Importing this module
registers the built-in families (SD first, so they win detection ties by order)."""

from __future__ import annotations

from md_export.core.errors import UnknownNameError
# Registration side effects, in this order: SD families first (listing and detection ties follow it).
from md_export.families import sd  # noqa: F401
from md_export.families import mobilediffusion  # noqa: F401
from md_export.families.base import FAMILIES, Family


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise UnknownNameError("family", name, FAMILIES)
    return FAMILIES[name]


def all_families() -> dict[str, type[Family]]:
    return dict(FAMILIES)


def detect_family(unet: dict, text: dict, scheduler: dict | None = None) -> str | None:
    """The registered family whose topology a checkpoint's configs have, or None."""
    scheduler = scheduler or {}
    hits = [f for f in FAMILIES.values() if f.match(unet, text, scheduler)]
    if not hits:
        return None
    hits.sort(key=lambda f: -f.detect_priority)
    return hits[0].name


def unet_class(config: dict):
    """The torch class for a UNet config: md-export's own models by "_class_name", else diffusers'."""
    if config.get("_class_name") == "MobileDiffusionUNet":
        return mobilediffusion.MobileDiffusionUNet
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel
