"""Rewrites that change numerics: opt-in only, by name, recorded in the manifest."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class GEGLUTanh(nn.Module):
    """diffusers' GEGLU with the tanh approximation of GELU on the gate (same projection)."""

    approximate = "tanh"

    def __init__(self, src: nn.Module):
        super().__init__()
        self.proj = src.proj

    def forward(self, hidden_states, *args, **kwargs):
        h, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return h * F.gelu(gate, approximate="tanh")


def gelu_tanh(component: str, module: nn.Module) -> int:
    """Every exact GELU -> tanh approximation: torch nn.GELU, diffusers GELU/GEGLU; CLIP's
    ``gelu`` activation (quick_gelu is left: it is already a sigmoid approximation)."""
    from md_export.rewrites._util import swap

    count = 0
    for name, m in [(n, m) for n, m in module.named_modules() if n]:
        kind = type(m).__name__
        if isinstance(m, nn.GELU) and m.approximate == "none":
            swap(module, name, nn.GELU(approximate="tanh"))
            count += 1
        elif kind == "GELU" and getattr(m, "approximate", None) == "none" and hasattr(m, "proj"):
            m.approximate = "tanh"  # diffusers GELU reads this attribute in forward
            count += 1
        elif kind == "GEGLU":
            swap(module, name, GEGLUTanh(m))
            count += 1
        elif kind == "GELUActivation":  # transformers' exact gelu
            swap(module, name, nn.GELU(approximate="tanh"))
            count += 1
    return count


def softmax_fp32(component: str, module: nn.Module) -> int:
    """Attention softmax computed in fp32 when the graph runs in fp16: md-export's attention
    processors and CLIP attention get the flag (installed first where needed)."""
    from md_export.rewrites._util import diffusers_attention_class, walk
    from md_export.rewrites.attention import ChannelsFirstAttnProcessor, supported
    from md_export.rewrites.text import swap_clip_attention

    count = 0
    for _n, attn in walk(module, diffusers_attention_class()):
        proc = attn.processor
        if isinstance(proc, ChannelsFirstAttnProcessor):
            proc.softmax_fp32 = True
            count += 1
        elif supported(attn) is None and type(proc).__name__ in ("AttnProcessor2_0", "AttnProcessor"):
            attn.set_processor(ChannelsFirstAttnProcessor("original", softmax_fp32=True))
            count += 1
    count += swap_clip_attention(module, softmax_fp32=True)
    return count
