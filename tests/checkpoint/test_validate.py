"""checkpoint.validate: the config checks refuse no registered family's configs (as diffusers and
transformers save them), and the weight checks find what they claim to find. The refusals
themselves, one per kind of bad input, are in tests/reliability/."""

from __future__ import annotations

import json

import pytest
import torch

from md_export.checkpoint.validate import (
    check_scheduler_config,
    check_text_encoder_config,
    check_unet_config,
    check_vae_config,
    non_finite,
)
from md_export.core.errors import InputError
from md_export.families.registry import all_families, unet_class


def _saved(cls, config: dict) -> dict:
    """The config.json diffusers writes for a model built from `config` (every field it knows,
    defaults included), built on the meta device so full sizes cost nothing."""
    if config.get("_class_name") == "MobileDiffusionUNet":
        return json.loads(json.dumps(config))
    with torch.device("meta"):
        model = cls.from_config(config)
    return json.loads(json.dumps(dict(model.config)))


@pytest.mark.parametrize("size", ["tiny", "full"])
@pytest.mark.parametrize("family", sorted(all_families()))
def test_every_family_config_passes(family, size, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig

    configs = all_families()[family].configs(size)
    unet = _saved(unet_class(configs["unet"]), configs["unet"])
    check_unet_config(unet, tmp_path / "unet" / "config.json")
    check_vae_config(_saved(AutoencoderKL, configs["vae"]), tmp_path / "vae" / "config.json")
    text = CLIPTextConfig(**configs["text_encoder"]).to_dict()
    check_text_encoder_config(json.loads(json.dumps(text)), tmp_path / "text_encoder" / "config.json")
    check_scheduler_config(json.loads(json.dumps(configs["scheduler"])), tmp_path / "scheduler_config.json")


def test_a_field_of_the_wrong_type_is_named(tmp_path):
    cfg = json.loads(json.dumps(all_families()["sd15"].configs("tiny")["unet"]))
    cfg["attention_head_dim"] = [8, "8"]
    with pytest.raises(InputError, match=r"config.json: field 'attention_head_dim' must be a positive integer, or a list of them"):
        check_unet_config(cfg, tmp_path / "config.json")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("where", [0, 7, 1_234_567, -1])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_finds_one_bad_value_anywhere(dtype, where, value):
    good = torch.randn(2_000_000).to(dtype)
    bad = good.clone()
    bad[where] = value
    state = {"a.weight": good, "b.weight": bad, "ids": torch.arange(4), "empty": torch.zeros(0)}
    assert non_finite(state) == ["b.weight"]
