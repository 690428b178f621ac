"""Building blocks efficient mobile diffusion models train with, for families to use.

- ``ReLUAttention``: attention with ReLU(QK^T * scale) / key count in place of softmax
  (MobileDiffusion), optionally with one shared key/value projection (``shared_kv``).
- ``DepthwiseSeparableConv2d``: depthwise k x k conv then a 1x1 pointwise conv.
- ``SwishFeedForward``: Linear -> SiLU (Swish) -> Linear, the GELU-free feed-forward.
- ``CrossAttentionBlock``: a transformer block with cross-attention and no self-attention
  (MobileDiffusion / SnapFusion at high resolution).

All work in diffusers' (B, S, C) layout and export to Core ML, TFLite and ONNX as they are
(tests/test_rewrites.py checks each saved artifact against PyTorch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ReLUAttention(nn.Module):
    """Multi-head attention with ReLU(QK^T / sqrt(d)) / key count in place of softmax (``relu``),
    optionally with one shared key/value projection (``shared_kv``). MobileDiffusion's UNet uses it."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, shared_kv: bool = False, relu: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        context_dim = context_dim or dim
        self.heads, self.head_dim, self.relu, self.shared_kv = heads, dim // heads, relu, shared_kv
        self.to_q = nn.Linear(dim, dim, bias=False)
        if shared_kv:
            self.to_kv = nn.Linear(context_dim, dim, bias=False)
        else:
            self.to_k = nn.Linear(context_dim, dim, bias=False)
            self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split(self, t):  # (B, N, C) -> (B, heads, N, d)
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self._split(self.to_q(x))
        if self.shared_kv:
            k = v = self._split(self.to_kv(context))
        else:
            k, v = self._split(self.to_k(context)), self._split(self.to_v(context))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if self.relu:
            attn = F.relu(scores) * (1.0 / k.shape[2])
        else:
            attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v)  # (B, heads, N, d)
        b, _, n, _ = out.shape
        return self.to_out(out.permute(0, 2, 1, 3).reshape(b, n, self.heads * self.head_dim))


class DepthwiseSeparableConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2, groups=in_channels, bias=bias)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SwishFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class CrossAttentionBlock(nn.Module):
    """norm -> cross-attention -> residual -> norm -> Swish feed-forward -> residual."""

    def __init__(self, dim: int, context_dim: int, heads: int, relu: bool = True, shared_kv: bool = True, mult: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ReLUAttention(dim, heads, context_dim, shared_kv=shared_kv, relu=relu)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = SwishFeedForward(dim, mult)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), context) + x
        return self.ff(self.norm2(x)) + x
