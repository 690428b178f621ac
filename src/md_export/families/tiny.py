"""Tiny, seeded, SD-1.5-shaped components built from configs (random weights, never downloaded).

Used for the bundled default model and by the tests. The topology follows SD 1.5 (cross-attention
in the down/up blocks, a mid block, a 4-channel latent, 8x VAE downsampling, CLIP causal text
encoder) at widths small enough to export in seconds.
"""

from __future__ import annotations

import torch

TINY_TEXT_HIDDEN = 32


def tiny_unet_config(cross_attention_dim: int = TINY_TEXT_HIDDEN, sample_size: int = 16, **overrides) -> dict:
    cfg = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    cfg.update(overrides)
    return cfg


def tiny_vae_config(sample_size: int = 128, **overrides) -> dict:
    cfg = dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.18215,
    )
    cfg.update(overrides)
    return cfg


def tiny_text_config(vocab_size: int = 49408, hidden_size: int = TINY_TEXT_HIDDEN, **overrides) -> dict:
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    cfg.update(overrides)
    return cfg


SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
)


def tiny_sd_components(seed: int = 0, vocab_size: int = 49408):
    """Return (unet, text_encoder, vae, scheduler), fp32, eval mode, weights drawn from `seed`."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config()).eval()
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(vocab_size=vocab_size))).eval()
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**tiny_vae_config()).eval()
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULER_CONFIG)
    return unet, text_encoder, vae, scheduler
