"""Model families: registered units naming a checkpoint's components (configs at a tiny and a full
size), how to recognise them, pipeline facts and per-target defaults. See base.py."""

from .base import FAMILIES, checkpoint_family, source_extras, SIZES, Family, all_families, detect_family, get_family, register_family, unet_class

__all__ = ["checkpoint_family", "source_extras", "FAMILIES", "SIZES", "Family", "all_families", "detect_family", "get_family", "register_family", "unet_class"]
