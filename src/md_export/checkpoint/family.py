"""Which family a checkpoint belongs to, and what export records of its origin beyond paths."""

from __future__ import annotations

from pathlib import Path

from md_export.checkpoint.lora import lora_source_json
from md_export.core.io import read_json
from md_export.families.registry import all_families, detect_family, get_family


def checkpoint_family(ckpt) -> str | None:
    """--family if given, else what `md-export init` recorded in model_index.json, else detected."""
    if ckpt.family_name:
        get_family(ckpt.family_name)
        return ckpt.family_name
    if ckpt.source is not None:
        root = ckpt.source if ckpt.source.is_dir() else ckpt.unet_dir.parent
        if (root / "model_index.json").is_file():
            recorded = read_json(root / "model_index.json").get("_md_export_family")
            if recorded in all_families():
                return recorded
    return detect_family(ckpt.unet_config, ckpt.text_encoder_config, ckpt.scheduler_config)


def source_extras(ckpt, bundle: Path) -> dict:
    """What export records in manifest["source"] beyond paths and hashes: family, LoRA, single file
    (paths relative to the bundle, never absolute)."""
    out = {"family": ckpt.family}
    if ckpt.lora:
        out["lora"] = lora_source_json(ckpt.lora, bundle)
    if ckpt.original is not None:
        out["single_file"] = {"name": ckpt.original.name}
    return out
