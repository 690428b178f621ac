"""Random-weight checkpoints of a family (`md-export init`): a diffusers-layout folder, seeded."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from md_export.core.errors import InputError
from md_export.families.registry import get_family, unet_class


def build_components(family_name: str, size: str = "tiny", seed: int = 0):
    """(unet, text_encoder, vae) in eval mode, weights drawn from `seed` (one seed per component)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    fam = get_family(family_name)
    cfgs = fam.configs(size)
    ucfg = dict(cfgs["unet"])
    torch.manual_seed(seed)
    cls = unet_class(ucfg)
    if cls.__name__ == "UNet2DConditionModel":
        ucfg.pop("_class_name", None)
        unet = cls(**ucfg)
    else:
        unet = cls.from_config(ucfg)
    torch.manual_seed(seed + 1)
    text = CLIPTextModel(CLIPTextConfig(**cfgs["text_encoder"]))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**cfgs["vae"])
    return unet.eval(), text.eval(), vae.eval()


def init_checkpoint(family_name: str, out: str | Path, *, size: str = "tiny", seed: int = 0, force: bool = False) -> Path:
    """Write a diffusers pipeline folder with random weights for a family; returns the folder."""
    from md_export.checkpoint.single_file import write_configs

    fam = get_family(family_name)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"{out}: already exists and is not empty; pass --force to replace it")
    unet, text, vae = build_components(family_name, size, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_configs(fam, size, tmp)
        unet.save_pretrained(tmp / "unet")
        if unet_class(fam.unet_config(size)).__name__ == "UNet2DConditionModel":
            _restore_class_fields(tmp / "unet" / "config.json", fam.unet_config(size))
        text.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _restore_class_fields(path: Path, wanted: dict) -> None:
    """save_pretrained writes the whole diffusers config; nothing to fix but keep `_name_or_path` out."""
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_name_or_path", None)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
