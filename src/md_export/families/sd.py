"""Stable Diffusion families and their compressed descendants, as diffusers UNet2DConditionModel
configs. Full sizes follow the published checkpoints; tiny sizes keep the topology."""

from __future__ import annotations

from md_export.families.base import OPENCLIP_H14, TINY_TEXT, Family, _half_vae_config, _topology, register_family

CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
MID = "UNetMidBlock2DCrossAttn"

FULL_CHANNELS = (320, 640, 1280, 1280)
TINY_CHANNELS = (32, 32, 64, 64)
TINY_HEAD_DIM = 8  # the tiny counterpart of SD 2.x's 64-wide heads


def _unet(size: str, *, channels_full=FULL_CHANNELS, channels_tiny=TINY_CHANNELS, cross_full=768, heads="sd1", **kw) -> dict:
    """A UNet2DConditionModel config. heads: 'sd1' = 8 heads everywhere (SD 1.x's
    attention_head_dim=8, which diffusers uses as the head count); 'sd2' = 64-wide heads
    (tiny: 8-wide), i.e. channels // 64 heads per block."""
    tiny = size == "tiny"
    channels = channels_tiny[: len(channels_full)] if tiny else channels_full
    cfg = dict(
        _class_name="UNet2DConditionModel",
        sample_size=16 if tiny else 64,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels),
        layers_per_block=2,
        down_block_types=(CA_DOWN, CA_DOWN, CA_DOWN, DOWN),
        up_block_types=(UP, CA_UP, CA_UP, CA_UP),
        mid_block_type=MID,
        cross_attention_dim=TINY_TEXT["hidden_size"] if tiny else cross_full,
        norm_num_groups=8 if tiny else 32,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    if heads == "sd1":
        cfg["attention_head_dim"] = 8
    else:
        hd = TINY_HEAD_DIM if tiny else 64
        cfg["attention_head_dim"] = tuple(c // hd for c in channels)
        cfg["use_linear_projection"] = True
    cfg.update(kw)
    return cfg


@register_family
class SD15(Family):
    name = "sd15"
    description = "Stable Diffusion 1.x (860M UNet, CLIP ViT-L/14 text encoder, 512x512)"
    paper = "arXiv 2112.10752"
    default_steps = 20

    @classmethod
    def unet_config(cls, size):
        return _unet(size)


@register_family
class SD21(Family):
    name = "sd21"
    description = "Stable Diffusion 2.x-base (OpenCLIP ViT-H/14 1024-d, linear projections, 64-wide heads, epsilon, 512x512)"
    text_encoder = "OpenCLIP ViT-H/14 (1024-d, penultimate layer)"
    default_steps = 20

    @classmethod
    def unet_config(cls, size):
        return _unet(size, cross_full=1024, heads="sd2")

    @classmethod
    def text_config(cls, size):
        if size == "tiny":
            return dict(TINY_TEXT, hidden_act="gelu")
        return dict(OPENCLIP_H14)

    @classmethod
    def tokenizer_pad_token(cls):
        return "!"  # SD 2.x tokenizers pad with "!" (id 0)

    @classmethod
    def match(cls, unet, text, scheduler):
        return super().match(unet, text, scheduler) and scheduler.get("timestep_spacing") != "trailing"


@register_family
class SDTurbo(SD21):
    name = "sd-turbo"
    description = "SD-Turbo (SD 2.1 architecture, adversarially distilled: 1-4 steps, no guidance, UNet batch 1)"
    paper = "arXiv 2311.17042"
    guidance = "none"
    default_steps = 1
    detect_priority = 1

    @classmethod
    def scheduler_config(cls):
        return dict(super().scheduler_config(), timestep_spacing="trailing", steps_offset=0)

    @classmethod
    def match(cls, unet, text, scheduler):
        return Family.match.__func__(cls, unet, text, scheduler) and scheduler.get("timestep_spacing") == "trailing"


@register_family
class LCM(Family):
    name = "lcm"
    description = "Latent Consistency Model on SD 1.5 (guidance embedded via timestep_cond, UNet batch 1, 4 steps)"
    paper = "arXiv 2310.04378"
    guidance = "embedded"
    default_steps = 4
    scheduler = "lcm"

    @classmethod
    def unet_config(cls, size):
        return _unet(size, time_cond_proj_dim=32 if size == "tiny" else 256)

    @classmethod
    def scheduler_config(cls):
        return dict(super().scheduler_config(), _class_name="LCMScheduler", original_inference_steps=50,
                    timestep_scaling=10.0)


# -- BK-SDM (arXiv 2305.15798) and Segmind's SD-Small/SD-Tiny (same block removal) -------------
# Down stages keep one ResNet+attention pair (layers_per_block=1), up stages two (diffusers adds
# one); Small and Tiny drop the mid block (mid_block_type=None); Tiny also drops the innermost
# (8x8 latent, attention-free) stage, so its UNet has three levels.


def _bk(size: str, variant: str) -> dict:
    if variant == "base":
        return _unet(size, layers_per_block=1)
    if variant == "small":
        return _unet(size, layers_per_block=1, mid_block_type=None)
    return _unet(size, layers_per_block=1, mid_block_type=None, channels_full=(320, 640, 1280),
                 down_block_types=(CA_DOWN,) * 3, up_block_types=(CA_UP,) * 3)


@register_family
class BKSDMBase(Family):
    name = "bk-sdm-base"
    description = "BK-SDM-Base (block-removed SD 1.4: one ResNet+attention pair per down stage, ~0.58B UNet)"
    paper = "arXiv 2305.15798"
    detect_priority = 1

    @classmethod
    def unet_config(cls, size):
        return _bk(size, "base")


@register_family
class BKSDMSmall(BKSDMBase):
    name = "bk-sdm-small"
    description = "BK-SDM-Small (BK-SDM-Base without the mid block, ~0.48B UNet)"

    @classmethod
    def unet_config(cls, size):
        return _bk(size, "small")


@register_family
class BKSDMTiny(BKSDMBase):
    name = "bk-sdm-tiny"
    description = "BK-SDM-Tiny (BK-SDM-Small without the innermost stage: three levels, ~0.32B UNet)"

    @classmethod
    def unet_config(cls, size):
        return _bk(size, "tiny")


class _Segmind(Family):
    """Segmind's distilled SD-Small/SD-Tiny remove blocks as BK-SDM does, so configs alone cannot tell
    them apart: a checkpoint is recognised as segmind only when its config names it."""

    paper = "blog.segmind.com (SD-Small / SD-Tiny, BK-SDM block removal)"
    detect_priority = 2
    _variant = "small"

    @classmethod
    def unet_config(cls, size):
        return _bk(size, cls._variant)

    @classmethod
    def match(cls, unet, text, scheduler):
        return super().match(unet, text, scheduler) and "segmind" in str(unet.get("_name_or_path", "")).lower()


@register_family
class SegmindSmall(_Segmind):
    name = "small-sd"
    description = "segmind small-sd (BK-SDM-Small topology, distilled from Realistic Vision)"
    _variant = "small"


@register_family
class SegmindTiny(_Segmind):
    name = "tiny-sd"
    description = "segmind tiny-sd (BK-SDM-Tiny topology, distilled from Realistic Vision)"
    _variant = "tiny"


# -- SnapFusion (arXiv 2306.00980) ---------------------------------------------------------------
# Efficient UNet (Table 3): no cross-attention at the 64x64 latent and one ResNet there; two
# ResNet+attention pairs at 32x32 and 16x16; the attention-free 8x8 stage and the mid block as
# in SD; on the way up more transformer layers at 16x16 (two per ResNet, six in all), one per
# ResNet at 32x32, none at 64x64. diffusers ties the up-stage ResNet counts to the down stages
# (one more each, for the skip of the downsampler), so up counts are 3, 3, 3, 2 ResNets.
# Image decoder: the SD VAE decoder at 50% of the channels.
# Caveat: these counts were reconstructed from the paper's text, not checked cell by cell against
# Table 3; at full size this config has 935.6M UNet parameters (SD 1.5: 859.5M) and 617 GFLOPs per
# batch-1 step at 64x64 (SD 1.5: 803; attention products counted, benchmarks/family_table.py).
# Verify against the paper before quoting it as SnapFusion.


@register_family
class SnapFusion(Family):
    name = "snapfusion"
    description = "SnapFusion efficient UNet (no attention at 64x64, attention moved to 16x16) + 50%-width decoder, 8 steps"
    paper = "arXiv 2306.00980"
    default_steps = 8
    scheduler = "ddim"

    @classmethod
    def unet_config(cls, size):
        return _unet(
            size,
            down_block_types=(DOWN, CA_DOWN, CA_DOWN, DOWN),
            up_block_types=(UP, CA_UP, CA_UP, UP),
            layers_per_block=(1, 2, 2, 2),
            transformer_layers_per_block=((1,), (1, 1), (1, 1), (1, 1)),
            reverse_transformer_layers_per_block=((1, 1, 1), (2, 2, 2), (1, 1, 1), (1, 1)),
        )

    @classmethod
    def vae_config(cls, size):
        return _half_vae_config(size)

    @classmethod
    def scheduler_config(cls):
        return dict(super().scheduler_config(), _class_name="DDIMScheduler")

    @classmethod
    def match(cls, unet, text, scheduler):
        return _topology(unet) in (_topology(cls.unet_config("full")), _topology(cls.unet_config("tiny")))
