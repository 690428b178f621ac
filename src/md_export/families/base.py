"""The family registry. A family is a class registered by name that says which components a
checkpoint of that architecture has (as diffusers/transformers configs at two sizes), how to
recognise it from a checkpoint's configs, its pipeline facts (guidance, steps, scheduler), and
per-target defaults (rewrites, compression, parity floors) that a recipe may override.

Sizes: "full" is the published architecture; "tiny" keeps the same topology (block types and
counts, attention placement, head-dimension rule) at widths that export in seconds.
"""

from __future__ import annotations

import copy
from typing import ClassVar

from md_export.core.errors import InputError

SIZES = ("tiny", "full")
TARGETS = ("coreml", "tflite", "onnx")

# Text encoders the families use (transformers CLIPTextConfig fields).
CLIP_L14 = dict(  # OpenAI CLIP ViT-L/14 text tower: SD 1.x
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
OPENCLIP_H14 = dict(  # OpenCLIP ViT-H/14 text tower, penultimate layer (23 of 24 layers): SD 2.x
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
TINY_TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)

SD_VAE = dict(  # the SD 1.x/2.x AutoencoderKL (83.7M parameters)
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32, act_fn="silu",
    scaling_factor=0.18215,
)
TINY_VAE = dict(
    sample_size=128, in_channels=3, out_channels=3, latent_channels=4,
    block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8, scaling_factor=0.18215,
)



def _half_vae_config(size: str) -> dict:
    """The SD VAE with every channel count halved (SnapFusion's pruned decoder; MobileDiffusion's
    light decoder is of this size too). AutoencoderKL shares block_out_channels between encoder
    and decoder, so the (optional) encoder is halved as well."""
    if size == "tiny":
        return dict(TINY_VAE, block_out_channels=(8, 8, 16, 16), norm_num_groups=4)
    return dict(SD_VAE, block_out_channels=(64, 128, 256, 256))


SD_SCHEDULER = dict(
    _class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    clip_sample=False, set_alpha_to_one=False,
)


class Family:
    """Base class; subclasses set the class attributes and override `unet_config` (and friends)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    text_encoder: ClassVar[str] = "CLIP ViT-L/14 (768-d)"
    resolution: ClassVar[int] = 512
    guidance: ClassVar[str] = "cfg-batch2"  # cfg-batch2 | none | embedded
    default_steps: ClassVar[int] = 20
    scheduler: ClassVar[str] = "euler"  # md-export's loop name
    prediction_type: ClassVar[str] = "epsilon"
    # per target: rewrite names (None = the target's defaults), compression level, parity floors (dB)
    default_rewrites: ClassVar[dict[str, tuple[str, ...] | None]] = {}
    default_compression: ClassVar[dict[str, str]] = {}
    parity_floors: ClassVar[dict[str, dict[str, float]]] = {}
    detect_priority: ClassVar[int] = 0  # higher wins ties

    # -- configs ---------------------------------------------------------------------------------
    @classmethod
    def unet_config(cls, size: str) -> dict:
        raise NotImplementedError

    @classmethod
    def text_config(cls, size: str) -> dict:
        return dict(TINY_TEXT if size == "tiny" else CLIP_L14)

    @classmethod
    def vae_config(cls, size: str) -> dict:
        return dict(TINY_VAE if size == "tiny" else SD_VAE)

    @classmethod
    def scheduler_config(cls) -> dict:
        return dict(SD_SCHEDULER, prediction_type=cls.prediction_type)

    @classmethod
    def tokenizer_pad_token(cls) -> str:
        return "<|endoftext|>"

    @classmethod
    def configs(cls, size: str) -> dict[str, dict]:
        if size not in SIZES:
            raise InputError(f"--size {size}: use one of {', '.join(SIZES)}")
        return {
            "unet": copy.deepcopy(cls.unet_config(size)),
            "text_encoder": cls.text_config(size),
            "vae": cls.vae_config(size),
            "scheduler": cls.scheduler_config(),
        }

    @classmethod
    def unet_batch(cls) -> int:
        return 2 if cls.guidance == "cfg-batch2" else 1

    # -- recognition -----------------------------------------------------------------------------
    @classmethod
    def match(cls, unet: dict, text: dict, scheduler: dict) -> bool:
        """Does a checkpoint with these configs belong to this family? Default: the UNet topology
        equals this family's (any size) — block types, per-block layer counts, mid block, linear
        projection, cross-attention width class and timestep_cond."""
        return _topology(unet) in (_topology(cls.unet_config("full")), _topology(cls.unet_config("tiny")))

    @classmethod
    def describe(cls) -> dict:
        full = cls.unet_config("full")
        return {
            "name": cls.name,
            "description": cls.description,
            "paper": cls.paper,
            "text_encoder": cls.text_encoder,
            "resolution": cls.resolution,
            "guidance": cls.guidance,
            "unet_batch": cls.unet_batch(),
            "default_steps": cls.default_steps,
            "scheduler": cls.scheduler,
            "prediction_type": cls.prediction_type,
            "unet": full.get("_class_name", "UNet2DConditionModel"),
            "timestep_cond": bool(full.get("time_cond_proj_dim")),
        }


def _as_list(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


def _norm(v):
    """JSON lists and Python tuples compare equal after this."""
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _topology(cfg: dict) -> tuple:
    """What stays fixed between the tiny and the full size of a family."""
    n = len(cfg.get("down_block_types", ()))
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    tl = cfg.get("transformer_layers_per_block", 1)
    return (
        cfg.get("_class_name", "UNet2DConditionModel"),
        tuple(cfg.get("down_block_types", ())),
        tuple(cfg.get("up_block_types", ())),
        tuple(_as_list(cfg.get("layers_per_block", 2), n)),
        mid,
        bool(cfg.get("use_linear_projection", False)),
        bool(cfg.get("time_cond_proj_dim")),
        _norm(tl if isinstance(tl, (list, tuple)) else [tl] * n),
        _norm(cfg.get("reverse_transformer_layers_per_block")),
        _norm(cfg.get("transformer_layers", ())),
        _norm(cfg.get("up_transformer_layers", ())),
    )


FAMILIES: dict[str, type[Family]] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator. A family must build both sizes: a missing tiny config is a bug caught here."""
    if not cls.name:
        raise TypeError(f"{cls.__name__}: a family needs a name")
    for size in SIZES:
        try:
            cfgs = cls.configs(size)
        except NotImplementedError:
            raise TypeError(f"family '{cls.name}' has no {size} config (unet_config('{size}'))") from None
        if not cfgs["unet"]:
            raise TypeError(f"family '{cls.name}' has an empty {size} UNet config")
    FAMILIES[cls.name] = cls
    return cls
