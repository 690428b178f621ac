"""CLIP text encoder self-attention with its own causal mask.

transformers builds CLIP's causal mask with ``finfo(float32).min``, which becomes -inf in fp16
(and NaN after ``-inf - -inf`` in some kernels), and with comparison/select ops (SELECT_V2 on
TFLite). ``CausalClipAttention`` replaces each ``CLIPAttention`` and adds a constant mask of
-1e4 above the diagonal instead: exp(-1e4) is exactly 0 in fp32 and fp16, so the softmax is
unchanged (numerics kept) and nothing overflows. The mask is a buffer sliced to the sequence
length, a constant in the exported graph.

It assumes what md-export's text-encoder wrapper guarantees: no padding mask is passed (CLIP
for Stable Diffusion attends causally over all 77 positions).
"""

from __future__ import annotations

import torch
from torch import nn

MASK_VALUE = -1.0e4


class CausalClipAttention(nn.Module):
    def __init__(self, src: nn.Module, max_positions: int, odml: bool = False, softmax_fp32: bool = False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = src.q_proj, src.k_proj, src.v_proj, src.out_proj
        self.num_heads, self.head_dim, self.scale = src.num_heads, src.head_dim, float(src.scale)
        self.odml, self.softmax_fp32 = odml, softmax_fp32
        mask = torch.full((max_positions, max_positions), MASK_VALUE).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        # attention_mask: transformers' causal mask (or None), replaced by our own constant one
        b, s, _ = hidden_states.shape
        shape = (b, s, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape)
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        mask = self.causal_mask[:s, :s].to(q.dtype)
        if self.odml:
            from md_export.rewrites.attention import odml_sdpa

            y = odml_sdpa(q, k, v, self.scale, mask.view(1, 1, s, s))
        else:
            scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * self.scale + mask
            if self.softmax_fp32 and scores.dtype != torch.float32:
                w = scores.float().softmax(dim=-1).to(scores.dtype)
            else:
                w = scores.softmax(dim=-1)
            y = torch.matmul(w, v.transpose(1, 2)).transpose(1, 2)
        return self.out_proj(y.reshape(b, s, -1)), None


def is_clip_attention(m: nn.Module) -> bool:
    return type(m).__name__ == "CLIPAttention"


def swap_clip_attention(module: nn.Module, odml: bool = False, softmax_fp32: bool | None = None) -> int:
    """Replace every CLIPAttention (or re-make every CausalClipAttention with new options)."""
    from md_export.rewrites._util import swap

    count = 0
    found = [(n, m) for n, m in module.named_modules() if n and (is_clip_attention(m) or isinstance(m, CausalClipAttention))]
    cfg = _text_config(module)
    for name, m in found:
        if isinstance(m, CausalClipAttention):
            keep_fp32 = m.softmax_fp32 if softmax_fp32 is None else softmax_fp32
            new = CausalClipAttention(m, m.causal_mask.shape[0], odml=odml or m.odml, softmax_fp32=keep_fp32)
        else:
            if cfg is None or not getattr(m, "config", None) or type(m.config).__name__ != "CLIPTextConfig":
                continue  # vision towers are not causal
            new = CausalClipAttention(m, cfg.max_position_embeddings, odml=odml, softmax_fp32=bool(softmax_fp32))
        swap(module, name, new)
        count += 1
    return count


def _text_config(module: nn.Module):
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and type(cfg).__name__ == "CLIPTextConfig":
            return cfg
    return None
