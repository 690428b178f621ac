"""The (B, C, 1, S) layout for the Neural Engine: the UNet's spatial transformers run with
channels on axis 1 and the sequence on the last axis, Linear layers become 1x1 convolutions and
LayerNorm normalizes over the channel axis (Apple's ml-stable-diffusion layout).

``ChannelsFirstTransformer2D`` replaces a diffusers ``Transformer2DModel`` (continuous input,
``layer_norm`` blocks): it reshapes (B, C, H, W) to (B, C, 1, H*W) without a transpose and runs
``ChannelsFirstBlock``s. A block calls each sub-module natively when it works in (B, C, 1, S)
(1x1 convs, ``ChannelLayerNorm``, channels-first attention processors) and through a transpose
otherwise, so each rewrite of the set is valid alone and the full set leaves no transposes in the
blocks but one per attention's keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from md_export.rewrites.attention import project, to_bc1s


class ChannelLayerNorm(nn.Module):
    """LayerNorm over axis 1 of (B, C, 1, S), with the source LayerNorm's weight and bias."""

    channels_first = True

    def __init__(self, src: nn.LayerNorm):
        super().__init__()
        (c,) = src.normalized_shape
        self.eps = float(src.eps)
        self.weight = nn.Parameter(src.weight.detach().clone()) if src.weight is not None else None
        self.bias = nn.Parameter(src.bias.detach().clone()) if src.bias is not None else None
        self.channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=1, keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


def linear_as_conv(lin: nn.Linear) -> nn.Conv2d:
    """A 1x1 Conv2d computing ``lin`` on (B, C, 1, S). Its weight is a (O, I, 1, 1) view of the
    Linear's, not a copy: a full-size UNet's memory-mapped weights stay where they are (the conv is
    built on the meta device, so no random init runs either)."""
    conv = nn.Conv2d(lin.in_features, lin.out_features, 1, bias=lin.bias is not None, device="meta", dtype=lin.weight.dtype)
    conv.weight = nn.Parameter(lin.weight.detach().reshape(lin.out_features, lin.in_features, 1, 1), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        conv.bias = nn.Parameter(lin.bias.detach(), requires_grad=lin.bias.requires_grad)
    return conv


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if getattr(norm, "channels_first", False):
        return norm(x)
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _attn(attn: nn.Module, x: torch.Tensor, ctx_bsd: torch.Tensor | None, ctx_bc1s: torch.Tensor | None) -> torch.Tensor:
    if getattr(attn.processor, "accepts_bc1s", False):
        return attn(x, encoder_hidden_states=ctx_bc1s)
    # diffusers' own processors take 4-D input as (B, C, H, W) and return it so; context as (B, S, D)
    return attn(x, encoder_hidden_states=ctx_bsd)


def _gelu(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate=getattr(act, "approximate", "none"))


def ff_supported(ff: nn.Module) -> str | None:
    net = getattr(ff, "net", None)
    if net is None or len(net) < 2:
        return "feed-forward without .net"
    kind = type(net[0]).__name__
    if kind not in ("GEGLU", "GELU", "ApproximateGELU", "GEGLUTanh", "SwishProj"):
        return f"feed-forward activation {kind}"
    for m in list(net)[1:]:
        if not isinstance(m, (nn.Dropout, nn.Linear, nn.Conv2d, nn.Identity)):
            return f"feed-forward layer {type(m).__name__}"
    return None


def _ff(ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    act = ff.net[0]
    h = project(act.proj, x)
    kind = type(act).__name__
    if kind in ("GEGLU", "GEGLUTanh"):
        a, gate = h.chunk(2, dim=1)
        h = a * _gelu(act, gate)
    elif kind == "GELU":
        h = _gelu(act, h)
    elif kind == "ApproximateGELU":
        h = h * torch.sigmoid(1.702 * h)
    elif kind == "SwishProj":
        h = F.silu(h)
    for m in list(ff.net)[1:]:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            h = project(m, h)
    return h


class ChannelsFirstBlock(nn.Module):
    """A diffusers BasicTransformerBlock (layer_norm type) computing in (B, C, 1, S)."""

    def __init__(self, blk: nn.Module):
        super().__init__()
        self.norm1, self.attn1 = blk.norm1, blk.attn1
        self.norm2, self.attn2 = getattr(blk, "norm2", None), getattr(blk, "attn2", None)
        self.norm3, self.ff = blk.norm3, blk.ff
        self.only_cross_attention = bool(blk.only_cross_attention)

    def forward(self, x, ctx_bsd=None, ctx_bc1s=None):
        n = _norm(self.norm1, x)
        if self.only_cross_attention:
            x = _attn(self.attn1, n, ctx_bsd, ctx_bc1s) + x
        else:
            x = _attn(self.attn1, n, None, None) + x
        if self.attn2 is not None:
            x = _attn(self.attn2, _norm(self.norm2, x), ctx_bsd, ctx_bc1s) + x
        return _ff(self.ff, _norm(self.norm3, x)) + x


def block_supported(blk: nn.Module) -> str | None:
    if type(blk).__name__ != "BasicTransformerBlock":
        return f"block {type(blk).__name__}"
    if getattr(blk, "norm_type", None) != "layer_norm":
        return f"norm type {getattr(blk, 'norm_type', None)}"
    if getattr(blk, "pos_embed", None) is not None or getattr(blk, "fuser", None) is not None:
        return "positional embedding or GLIGEN fuser"
    if getattr(blk, "_chunk_size", None) is not None:
        return "chunked feed-forward"
    if not isinstance(blk.norm1, nn.LayerNorm) or not isinstance(blk.norm3, nn.LayerNorm):
        return "norms are not LayerNorm"
    return ff_supported(blk.ff)


def transformer_supported(t: nn.Module) -> str | None:
    if type(t).__name__ != "Transformer2DModel":
        return f"{type(t).__name__}"
    if not getattr(t, "is_input_continuous", False):
        return "not a continuous-input (spatial) transformer"
    for blk in t.transformer_blocks:
        why = block_supported(blk)
        if why:
            return why
    return None


class ChannelsFirstTransformer2D(nn.Module):
    """A diffusers Transformer2DModel (spatial, continuous input) running its blocks in (B, C, 1, S).
    Same call signature and output as the module it replaces."""

    def __init__(self, t: nn.Module):
        super().__init__()
        self.norm, self.proj_in, self.proj_out = t.norm, t.proj_in, t.proj_out
        self.use_linear_projection = bool(t.use_linear_projection)
        self.transformer_blocks = nn.ModuleList(ChannelsFirstBlock(b) for b in t.transformer_blocks)

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None, class_labels=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None, return_dict: bool = True):
        if attention_mask is not None or encoder_attention_mask is not None:
            raise NotImplementedError("channels-first transformer blocks take no attention masks")
        b, _, h, w = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states)
        if self.use_linear_projection or isinstance(self.proj_in, nn.Linear):
            x = project(self.proj_in, to_bc1s(x))
        else:
            x = to_bc1s(self.proj_in(x))
        ctx_bc1s = None if encoder_hidden_states is None else to_bc1s(encoder_hidden_states)
        for blk in self.transformer_blocks:
            x = blk(x, encoder_hidden_states, ctx_bc1s)
        if isinstance(self.proj_out, nn.Linear) or self.use_linear_projection:
            x = project(self.proj_out, x).reshape(b, -1, h, w)
        else:
            x = self.proj_out(x.reshape(b, -1, h, w))
        out = x + residual
        return (out,) if return_dict is False else _Output(out)


class _Output(tuple):
    """diffusers' Transformer2DModelOutput stand-in: ``.sample`` and ``[0]``."""

    def __new__(cls, sample):
        return super().__new__(cls, (sample,))

    @property
    def sample(self):
        return self[0]


# -- the rewrites' apply steps --------------------------------------------------------------------


def to_channels_first(module: nn.Module) -> int:
    """Swap every supported Transformer2DModel for ChannelsFirstTransformer2D; return how many."""
    from md_export.rewrites._util import swap

    found = [(n, m) for n, m in module.named_modules() if n and type(m).__name__ == "Transformer2DModel"
             and transformer_supported(m) is None]
    for name, t in found:
        swap(module, name, ChannelsFirstTransformer2D(t))
    return len(found)


def linear_to_conv(component: str, module: nn.Module) -> int:
    """UNet: spatial transformers to (B, C, 1, S), their Linear layers to 1x1 convs (attention
    projections only where the attention processor is channels-first). Returns Linears swapped."""
    from md_export.rewrites._util import swap

    to_channels_first(module)
    count = 0
    for tname, t in [(n, m) for n, m in module.named_modules() if isinstance(m, ChannelsFirstTransformer2D)]:
        targets = []
        if isinstance(t.proj_in, nn.Linear):
            targets += ["proj_in"]
        if isinstance(t.proj_out, nn.Linear):
            targets += ["proj_out"]
        for i, blk in enumerate(t.transformer_blocks):
            p = f"transformer_blocks.{i}"
            targets += [f"{p}.ff.net.0.proj"] + [f"{p}.ff.net.{j}" for j, m in enumerate(blk.ff.net) if isinstance(m, nn.Linear)]
            for a in ("attn1", "attn2"):
                attn = getattr(blk, a, None)
                if attn is not None and getattr(attn.processor, "accepts_bc1s", False):
                    targets += [f"{p}.{a}.{s}" for s in ("to_q", "to_k", "to_v", "to_out.0")]
        for rel in targets:
            lin = t.get_submodule(rel)
            if isinstance(lin, nn.Linear):
                swap(t, rel, linear_as_conv(lin))
                count += 1
    # attention blocks outside transformers (the VAE's) already in (B, C, 1, S) via their processor
    from md_export.rewrites._util import diffusers_attention_class

    for aname, attn in [(n, m) for n, m in module.named_modules() if isinstance(m, diffusers_attention_class())]:
        if getattr(attn.processor, "accepts_bc1s", False):
            for s in ("to_q", "to_k", "to_v", "to_out.0"):
                lin = attn.get_submodule(s)
                if isinstance(lin, nn.Linear):
                    swap(attn, s, linear_as_conv(lin))
                    count += 1
    return count


def layernorm_channels(component: str, module: nn.Module) -> int:
    from md_export.rewrites._util import swap

    count = 0
    for blk in [m for m in module.modules() if isinstance(m, ChannelsFirstBlock)]:
        for name in ("norm1", "norm2", "norm3"):
            norm = getattr(blk, name, None)
            if isinstance(norm, nn.LayerNorm):
                swap(blk, name, ChannelLayerNorm(norm))
                count += 1
    return count
