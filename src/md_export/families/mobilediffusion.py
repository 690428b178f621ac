"""MobileDiffusion (arXiv 2311.16567) as an md-export model definition.

The UNet follows the paper's design choices, each a config field so variants can be described:
- no transformer blocks at the highest resolution (`level_types[0] == "res"`);
- cross-attention-only transformer blocks (no self-attention) at middle resolutions ("cross");
- full transformer blocks (self + cross attention + feed-forward) gathered at the lowest
  resolution and in the bottleneck ("full", `mid_transformer_layers`);
- one shared projection for keys and values (`shared_kv`);
- ReLU attention as an option (`attention_activation = "relu"`: relu(q k^T / sqrt(d)) / N_keys);
- Swish instead of GELU (SiLU-gated feed-forward);
- depthwise-separable convolutions except at the edges (`separable_levels`; conv_in and conv_out
  are always regular convolutions);
- one ResNet block per level (`layers_per_block = 1`).

Ops are kept to what every backend lowers directly: conv (regular and depthwise), matmul,
softmax or relu, group/layer norm, SiLU, nearest-neighbour upsampling, reshape/permute.

At the defaults (the "full" size: channels 320/640/1024, 0/2/3 down and 3/2/0 up transformer
blocks per level, 10 in the bottleneck) the UNet has 361.3M parameters and one batch-1 step at a
64x64 latent costs 276 GFLOPs (torch FlopCounterMode); with the CLIP ViT-L/14 text encoder (123.1M)
and the half-width decoder (12.4M) the model has 496.7M parameters. The paper reports ~520M for
the whole model; the per-level transformer counts here are a reading of its description, set
through config fields, not the paper's exact table.

Checkpoint layout: `unet/config.json` with "_class_name": "MobileDiffusionUNet" and the fields of
`MobileDiffusionConfig`, weights in `unet/diffusion_pytorch_model.safetensors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from md_export.core.errors import InputError
from md_export.families.blocks import ReLUAttention
from md_export.families.base import Family, _half_vae_config, register_family

CLASS_NAME = "MobileDiffusionUNet"
LEVEL_TYPES = ("res", "cross", "full")


@dataclass
class MobileDiffusionConfig:
    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1024)
    level_types: tuple = ("res", "cross", "full")  # per level: res | cross | full
    layers_per_block: int = 1  # ResNet blocks per level, down and up
    transformer_layers: tuple = (0, 2, 3)  # transformer blocks after each down ResNet, per level
    up_transformer_layers: tuple = (3, 2, 0)  # per up level, lowest resolution first
    mid_transformer_layers: int = 10  # full transformer blocks in the bottleneck
    separable_levels: tuple = (False, True, True)  # depthwise-separable ResNet convs per level
    cross_attention_dim: int = 768
    attention_head_dim: int = 64  # head width (heads = channels // attention_head_dim)
    shared_kv: bool = True
    attention_activation: str = "softmax"  # softmax | relu
    ff_mult: int = 4
    norm_num_groups: int = 32
    time_cond_proj_dim: int | None = None
    down_block_types: tuple = field(default=(), repr=False)  # derived; for tools that read diffusers configs
    up_block_types: tuple = field(default=(), repr=False)

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("level_types", "transformer_layers", "up_transformer_layers", "separable_levels"):
            if len(getattr(self, name)) != n:
                raise InputError(f"MobileDiffusion config: {name} has {len(getattr(self, name))} entries for {n} levels")
        bad = [t for t in self.level_types if t not in LEVEL_TYPES]
        if bad:
            raise InputError(f"MobileDiffusion config: level type '{bad[0]}' (use {', '.join(LEVEL_TYPES)})")
        if self.attention_activation not in ("softmax", "relu"):
            raise InputError(f"MobileDiffusion config: attention_activation '{self.attention_activation}' (use softmax or relu)")
        for c in self.block_out_channels:
            if c % self.attention_head_dim or c % self.norm_num_groups:
                raise InputError(f"MobileDiffusion config: {c} channels not divisible by attention_head_dim/norm_num_groups")
        names = {"res": "MDResBlock", "cross": "MDCrossAttnBlock", "full": "MDTransformerBlock"}
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(names[t] + "Down" for t in self.level_types)
        self.up_block_types = tuple(names[t] + "Up" for t in reversed(self.level_types))

    def to_json(self) -> dict:
        return {"_class_name": CLASS_NAME, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_json(cls, data: dict) -> "MobileDiffusionConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        kwargs.pop("down_block_types", None)
        kwargs.pop("up_block_types", None)
        return cls(**kwargs)


# -- building blocks --------------------------------------------------------------------------------


def conv3x3(cin: int, cout: int, separable: bool, stride: int = 1) -> nn.Module:
    if not separable:
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, separable: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = conv3x3(cin, cout, separable)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = conv3x3(cout, cout, separable)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class FeedForward(nn.Module):
    """SiLU-gated feed-forward (Swish where SD has GELU)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim * mult * 2)
        self.out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        h = self.proj(x)
        a, gate = h.chunk(2, dim=-1)
        return self.out(a * F.silu(gate))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, cfg: MobileDiffusionConfig, self_attention: bool):
        super().__init__()
        mk = lambda ctx: ReLUAttention(dim, dim // cfg.attention_head_dim, ctx, cfg.shared_kv, cfg.attention_activation == "relu")  # noqa: E731
        self.self_attention = self_attention
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = mk(None)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = mk(cfg.cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, cfg.ff_mult)

    def forward(self, x, context):
        if self.self_attention:
            x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TransformerStage(nn.Module):
    """GroupNorm, linear in-projection over (H*W, C) tokens, N blocks, out-projection, residual."""

    def __init__(self, dim: int, depth: int, cfg: MobileDiffusionConfig, self_attention: bool):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, cfg, self_attention) for _ in range(depth))
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        for blk in self.blocks:
            t = blk(t, context)
        t = self.proj_out(t).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + t


class Layer(nn.Module):
    """One ResNet block, then (optionally) a transformer stage."""

    def __init__(self, cin, cout, temb, cfg, separable, kind, depth):
        super().__init__()
        self.res = ResBlock(cin, cout, temb, cfg.norm_num_groups, separable)
        self.attn = TransformerStage(cout, depth, cfg, kind == "full") if (kind != "res" and depth > 0) else None

    def forward(self, x, temb, context):
        x = self.res(x, temb)
        return self.attn(x, context) if self.attn is not None else x


class Upsample(nn.Module):
    def __init__(self, c, separable):
        super().__init__()
        self.conv = conv3x3(c, c, separable)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MobileDiffusionUNet(nn.Module):
    """forward(sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict=True) ->
    noise prediction, like diffusers' UNet2DConditionModel (a 1-tuple with return_dict=False)."""

    config_class = MobileDiffusionConfig

    def __init__(self, config: MobileDiffusionConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or MobileDiffusionConfig(**kwargs)
        self.cfg = cfg
        self.config = SimpleNamespace(**cfg.to_json())
        ch = cfg.block_out_channels
        temb = ch[0] * 4
        half = ch[0] // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.time_embedding = nn.Sequential(nn.Linear(ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.cond_proj = nn.Linear(cfg.time_cond_proj_dim, ch[0], bias=False) if cfg.time_cond_proj_dim else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            layers = nn.ModuleList()
            for _ in range(cfg.layers_per_block):
                layers.append(Layer(cin, c, temb, cfg, cfg.separable_levels[i], cfg.level_types[i], cfg.transformer_layers[i]))
                cin = c
            self.down.append(layers)
            if i < len(ch) - 1:
                self.downsamplers.append(conv3x3(c, c, cfg.separable_levels[i], stride=2))
        self.mid = Layer(ch[-1], ch[-1], temb, cfg, cfg.separable_levels[-1], "full", cfg.mid_transformer_layers)

        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for k, i in enumerate(reversed(range(len(ch)))):
            c = ch[i]
            layers = nn.ModuleList()
            for _ in range(cfg.layers_per_block):
                layers.append(Layer(cin + c, c, temb, cfg, cfg.separable_levels[i], cfg.level_types[i], cfg.up_transformer_layers[k]))
                cin = c
            self.up.append(layers)
            if i > 0:
                self.upsamplers.append(Upsample(c, cfg.separable_levels[i]))
        self.norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:  # what diffusers pipelines read off their UNet
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict: bool = True, **_):
        b = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], dtype=torch.float32)
        t = t.to(torch.float32).reshape(-1)
        if t.shape[0] != b:
            t = t.expand(b)
        args = t[:, None] * self.freqs[None, :]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # flip_sin_to_cos, freq_shift 0
        if self.cond_proj is not None and timestep_cond is not None:
            emb = emb + self.cond_proj(timestep_cond)
        temb = self.time_embedding(emb)

        x = self.conv_in(sample)
        skips = []
        for i, layers in enumerate(self.down):
            for layer in layers:
                x = layer(x, temb, encoder_hidden_states)
                skips.append(x)
            if i < len(self.downsamplers):
                x = self.downsamplers[i](x)
        x = self.mid(x, temb, encoder_hidden_states)
        for k, layers in enumerate(self.up):
            for layer in layers:
                x = layer(torch.cat([x, skips.pop()], dim=1), temb, encoder_hidden_states)
            if k < len(self.upsamplers):
                x = self.upsamplers[k](x)
        out = self.conv_out(F.silu(self.norm_out(x)))
        return (out,) if not return_dict else SimpleNamespace(sample=out)

    # -- config.json + safetensors ------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.cfg.to_json(), indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_config(cls, config: dict) -> "MobileDiffusionUNet":
        return cls(MobileDiffusionConfig.from_json(config))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_ignored) -> "MobileDiffusionUNet":
        from safetensors.torch import load_file

        from md_export.core.io import read_json

        folder = Path(folder)
        model = cls.from_config(read_json(folder / "config.json"))
        weights = folder / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise InputError(f"{weights}: missing (MobileDiffusion UNets load from safetensors only)")
        state = load_file(str(weights))
        own = model.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise InputError(f"{weights}: weights do not fit the config ({bad[0]}: {tuple(state[bad[0]].shape)} in the file, "
                             f"{tuple(own[bad[0]].shape)} in the model; {len(bad)} such tensors)")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise InputError(f"{weights}: weights do not fit the config ({len(missing)} missing, {len(unexpected)} unexpected; {what})")
        return model.eval()


# -- the family ------------------------------------------------------------------------------------------

TINY_MD = dict(block_out_channels=(32, 64, 64), attention_head_dim=8, norm_num_groups=8, sample_size=16, cross_attention_dim=32)


@register_family
class MobileDiffusion(Family):
    name = "mobilediffusion"
    description = ("MobileDiffusion UNet (no attention at 64x64, cross-attention only at 32x32, transformers gathered "
                   "at 16x16, shared K/V, separable convs, one ResNet per level) + CLIP ViT-L/14 + light decoder")
    paper = "arXiv 2311.16567"
    default_steps = 8
    scheduler = "ddim"

    @classmethod
    def unet_config(cls, size):
        cfg = MobileDiffusionConfig(**(TINY_MD if size == "tiny" else {}))
        return cfg.to_json()

    @classmethod
    def vae_config(cls, size):
        return _half_vae_config(size)

    @classmethod
    def scheduler_config(cls):
        return dict(super().scheduler_config(), _class_name="DDIMScheduler")

    @classmethod
    def match(cls, unet, text, scheduler):
        return unet.get("_class_name") == CLASS_NAME
