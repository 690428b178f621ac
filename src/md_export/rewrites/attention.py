"""Attention for mobile accelerators, as diffusers attention processors.

Channels-first processors (Core ML / Neural Engine) compute attention in the (B, C, 1, S)
layout Apple's ml-stable-diffusion uses: projections as 1x1 convolutions, per-head einsums,
softmax over the key axis. They take hidden states as (B, S, C) (transposed once on the way in
and out), as (B, C, H, W) (reshaped, no transpose) or as (B, C, 1, S) from a channels-first
transformer block, and encoder hidden states as (B, S, D) or (B, D, 1, S).

The odml processor (TFLite GPU delegate) keeps diffusers' (B, S, C) layout and wraps scaled
dot-product attention in litert-torch's ``odml.scaled_dot_product_attention`` composite, which
the delegate runs as one fused op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("split-einsum", "split-einsum-v2", "original")
QUERY_CHUNK = 128  # split-einsum-v2: queries per chunk (bounds the attention matrix per op)


def supported(attn) -> str | None:
    """None if the channels-first/odml processors can run this diffusers Attention, else why not."""
    if getattr(attn, "spatial_norm", None) is not None:
        return "spatial norm"
    if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
        return "q/k norms"
    if getattr(attn, "add_k_proj", None) is not None or getattr(attn, "added_kv_proj_dim", None):
        return "added key/value projections"
    if getattr(attn, "norm_cross", None):
        return "cross-attention norm"
    if not isinstance(attn.to_out, nn.ModuleList) or len(attn.to_out) == 0:
        return "no output projection"
    return None


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a projection to x in (B, C, 1, S): a 1x1 conv as is, a Linear as a 1x1 conv over
    the same weight (a view, the module is not changed)."""
    if isinstance(layer, nn.Conv2d):
        return layer(x)
    if isinstance(layer, nn.Linear):
        return F.conv2d(x, layer.weight[:, :, None, None], layer.bias)
    raise TypeError(f"cannot project with {type(layer).__name__}")


def to_bc1s(x: torch.Tensor) -> torch.Tensor:
    """(B, S, C) -> (B, C, 1, S); (B, C, H, W) -> (B, C, 1, H*W)."""
    if x.ndim == 3:
        return x.transpose(1, 2).unsqueeze(2)
    b, c, h, w = x.shape
    return x.reshape(b, c, 1, h * w)


def softmax(x: torch.Tensor, dim: int, fp32: bool) -> torch.Tensor:
    if fp32 and x.dtype != torch.float32:
        return x.float().softmax(dim=dim).to(x.dtype)
    return x.softmax(dim=dim)


def attend_bc1s(q, k, v, heads: int, scale: float, mode: str, query_chunk: int | None = None,
                softmax_fp32: bool = False, relu: bool = False) -> torch.Tensor:
    """q (B, C, 1, Sq), k/v (B, C, 1, Sk) -> (B, C, 1, Sq). ``relu``: ReLU attention normalized
    by the key count (MobileDiffusion) instead of softmax."""
    b, c, _, sq = q.shape
    d = c // heads
    query_chunk = query_chunk or QUERY_CHUNK

    def weights(scores, dim):
        if relu:
            return F.relu(scores) / scores.shape[dim]
        return softmax(scores, dim, softmax_fp32)

    if mode == "original":  # one batched matmul over all heads (GPU)
        qh = q.reshape(b, heads, d, sq).transpose(2, 3)  # (B, h, Sq, d)
        kh = k.reshape(b, heads, d, -1)  # (B, h, d, Sk)
        vh = v.reshape(b, heads, d, -1).transpose(2, 3)  # (B, h, Sk, d)
        w = weights(torch.matmul(qh, kh) * scale, -1)
        return torch.matmul(w, vh).transpose(2, 3).reshape(b, c, 1, sq)
    # split-einsum: one einsum pair per head, keys on axis 1, softmax over it
    kt = k.transpose(1, 3)  # (B, Sk, 1, C)
    q_heads = q.split(d, dim=1)
    k_heads = kt.split(d, dim=3)
    v_heads = v.split(d, dim=1)
    chunks = [(0, sq)]
    if mode == "split-einsum-v2" and sq > query_chunk:
        chunks = [(s, min(s + query_chunk, sq)) for s in range(0, sq, query_chunk)]
    outs = []
    for qh, kh, vh in zip(q_heads, k_heads, v_heads):
        parts = []
        for s, e in chunks:
            qc = qh if (s, e) == (0, sq) else qh[:, :, :, s:e]
            w = weights(torch.einsum("bchq,bkhc->bkhq", qc, kh) * scale, 1)  # (B, Sk, 1, Sq)
            parts.append(torch.einsum("bkhq,bchk->bchq", w, vh))  # (B, d, 1, Sq)
        outs.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3))
    return torch.cat(outs, dim=1)


class ChannelsFirstAttnProcessor:
    """A diffusers attention processor computing in (B, C, 1, S). Keeps numerics."""

    accepts_bc1s = True

    def __init__(self, mode: str = "split-einsum", query_chunk: int | None = None, softmax_fp32: bool = False, relu: bool = False):
        if mode not in MODES:
            raise ValueError(f"attention mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.query_chunk, self.softmax_fp32, self.relu = mode, query_chunk, softmax_fp32, relu

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None:
            raise NotImplementedError("channels-first attention processors take no attention mask")
        residual = hidden_states
        in_shape = hidden_states.shape
        x = to_bc1s(hidden_states)
        if attn.group_norm is not None:
            x = attn.group_norm(x)  # GroupNorm statistics are the same over (1, S) as over (H, W)
        ctx = x if encoder_hidden_states is None else (
            encoder_hidden_states if encoder_hidden_states.ndim == 4 else to_bc1s(encoder_hidden_states))
        q = project(attn.to_q, x)
        k = project(attn.to_k, ctx)
        v = project(attn.to_v, ctx)
        out = attend_bc1s(q, k, v, attn.heads, attn.scale, self.mode, self.query_chunk, self.softmax_fp32, self.relu)
        out = project(attn.to_out[0], out)
        if len(in_shape) == 3:
            out = out.squeeze(2).transpose(1, 2)
        else:
            out = out.reshape(in_shape[0], out.shape[1], *in_shape[2:])
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# -- TFLite GPU: the odml SDPA composite ---------------------------------------------------------


def odml_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, Sq, N, H), k/v (B, Sk, N, H) -> (B, Sq, N, H), marked as the
    ``odml.scaled_dot_product_attention`` composite the TFLite GPU delegate fuses. The composite's
    inputs are in (B, S, N, H) as litert-torch's own layers mark them; mask is additive."""
    from litert_torch.hlfb import StableHLOCompositeBuilder

    builder = StableHLOCompositeBuilder(name="odml.scaled_dot_product_attention", attr={"scale": float(scale)})
    if mask is None:
        q, k, v = builder.mark_inputs(q, k, v)
    else:
        q, k, v, mask = builder.mark_inputs(q, k, v, mask)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
    return builder.mark_outputs(y.transpose(1, 2))


class OdmlAttnProcessor:
    """diffusers attention through the odml SDPA composite, in diffusers' own (B, S, C) layout.
    Keeps numerics."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None:
            raise NotImplementedError("the odml attention processor takes no attention mask")
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            if attn.group_norm is not None:  # on (B, C, H, W): lowered as odml.group_norm, same statistics
                hidden_states = attn.group_norm(hidden_states)
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        elif attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        bsz, sq, inner = q.shape
        d = inner // attn.heads
        y = odml_sdpa(q.view(bsz, sq, attn.heads, d), k.view(bsz, -1, attn.heads, d), v.view(bsz, -1, attn.heads, d), attn.scale)
        out = attn.to_out[0](y.reshape(bsz, sq, inner))
        if four_d:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_processors(module: nn.Module, make) -> int:
    """Give every supported diffusers Attention the processor ``make(attn)``; return how many."""
    from md_export.rewrites._util import diffusers_attention_class, walk

    count = 0
    for _name, attn in walk(module, diffusers_attention_class()):
        if supported(attn) is None:
            attn.set_processor(make(attn))
            count += 1
    return count


def head_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
