"""Wrappers that give each model stable input/output names and a plain tensor-in/tensor-out
signature: forward(*inputs in spec order) -> one tensor."""

from __future__ import annotations

import torch
from torch import nn


class TextEncoderWrapper(nn.Module):
    """input_ids -> last_hidden_state. No pooler: its ARG_MAX/GATHER_ND are rejected by mobile GPUs."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module, with_timestep_cond: bool = False):
        super().__init__()
        self.unet = unet
        self.with_timestep_cond = with_timestep_cond

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        return self.unet(
            sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False
        )[0]


class VAEDecoderWrapper(nn.Module):
    """latent (as the scheduler produced it) -> image in [-1, 1]; applies 1/scaling_factor and the
    shift inside, so apps feed the latent unchanged (manifest: decoder_applies_scaling=true)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.decoder = vae.decoder
        self.post_quant_conv = vae.post_quant_conv
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent / self.scale + self.shift
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VAEEncoderWrapper(nn.Module):
    """image in [-1, 1] -> latent mean, already scaled (the deterministic half of the encoder)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.encoder(image)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean = h[:, : h.shape[1] // 2]
        return (mean - self.shift) * self.scale
