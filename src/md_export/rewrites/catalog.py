"""The registered rewrites and each target's defaults."""

from __future__ import annotations

import contextlib
import os

from torch import nn

from md_export.rewrites.registry import Rewrite, register, set_defaults
from md_export.rewrites.attention import ChannelsFirstAttnProcessor, OdmlAttnProcessor, set_processors
from md_export.rewrites.layout import layernorm_channels, linear_to_conv
from md_export.rewrites.numerics import gelu_tanh, softmax_fp32
from md_export.rewrites.text import swap_clip_attention

ALL = ("coreml", "tflite", "onnx")


def _attention(mode: str):
    def apply(component: str, module: nn.Module) -> int:
        return set_processors(module, lambda attn: ChannelsFirstAttnProcessor(mode))

    return apply


_ATTN_MATCHES = "diffusers Attention modules (UNet transformer blocks, VAE mid-block) without spatial/q-k norms or added KV"
_ATTN_NO_MATCH = "no diffusers Attention module the processor supports (CLIP's attention is transformers', see text-causal-mask)"

register(Rewrite(
    "attention=split-einsum", ("coreml",), True,
    "Attention in (B, C, 1, S): projections as 1x1 convs, one einsum pair per head, softmax over the key axis "
    "(Neural Engine).", _attention("split-einsum"), _ATTN_MATCHES, _ATTN_NO_MATCH, order=10))
register(Rewrite(
    "attention=split-einsum-v2", ("coreml",), True,
    "split-einsum with the queries split into chunks of 128 as well (bounds each attention matrix at high "
    "resolution).", _attention("split-einsum-v2"), _ATTN_MATCHES, _ATTN_NO_MATCH, order=10))
register(Rewrite(
    "attention=original", ("coreml",), True,
    "Attention in (B, C, 1, S) as one batched matmul over all heads (Core ML GPU).",
    _attention("original"), _ATTN_MATCHES, _ATTN_NO_MATCH, order=10))


def _linear_to_conv(component: str, module: nn.Module) -> int:
    return linear_to_conv(component, module) if component != "text_encoder" else 0


register(Rewrite(
    "linear-to-conv", ("coreml",), True,
    "UNet spatial transformers run in (B, C, 1, S); their nn.Linear layers become 1x1 Conv2d (weight "
    "(O, I) reshaped to (O, I, 1, 1) at the swap); attention projections too when the attention is "
    "channels-first.",
    _linear_to_conv,
    "Transformer2DModel (continuous input, layer_norm BasicTransformerBlocks) and their Linear layers",
    "no diffusers Transformer2DModel with layer_norm BasicTransformerBlocks (the text encoder is left as is)",
    order=20))
register(Rewrite(
    "layernorm-channels", ("coreml",), True,
    "LayerNorm over the channel axis of (B, C, 1, S) inside channels-first transformer blocks (no transposes "
    "around the norms).",
    lambda component, module: layernorm_channels(component, module),
    "LayerNorm in transformer blocks made channels-first by linear-to-conv",
    "it works on transformer blocks in the (B, C, 1, S) layout; add --rewrite linear-to-conv",
    order=30))
register(Rewrite(
    "text-causal-mask", ALL, True,
    "CLIP text attention with a constant -1e4 causal mask instead of finfo.min (no fp16 overflow, no "
    "compare/select ops).",
    lambda component, module: swap_clip_attention(module),
    "transformers CLIPAttention in a CLIP text model",
    "no CLIP text-model attention (CLIPAttention with a CLIPTextConfig)",
    order=40))


# -- TFLite GPU delegate --------------------------------------------------------------------------


@contextlib.contextmanager
def group_norm_composite():
    """litert-torch's GroupNorm -> odml.group_norm flag (an environment variable it reads), set for
    the duration of one lowering and restored after."""
    key = "ENABLE_GROUP_NORM_COMPOSITE"
    before = os.environ.get(key)
    os.environ[key] = "y"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _gpu_composites(component: str, module: nn.Module) -> int:
    count = set_processors(module, lambda attn: OdmlAttnProcessor())
    count += swap_clip_attention(module, odml=True)
    count += sum(1 for m in module.modules() if isinstance(m, nn.GroupNorm) and m.affine)  # lowered as odml.group_norm
    return count


register(Rewrite(
    "gpu-composites", ("tflite",), True,
    "Attention as the odml.scaled_dot_product_attention composite (diffusers processor; CLIP attention with "
    "a constant causal mask) and GroupNorm as odml.group_norm (litert-torch flag, set only while lowering).",
    _gpu_composites,
    "diffusers Attention, CLIPAttention, affine nn.GroupNorm",
    "no attention or GroupNorm to mark",
    order=50, lowering=group_norm_composite))


# -- numerics-changing, opt-in ----------------------------------------------------------------------

register(Rewrite(
    "gelu-tanh", ALL, False,
    "GELU -> tanh approximation (nn.GELU, diffusers GELU/GEGLU, transformers gelu).",
    gelu_tanh, "exact GELU activations", "no exact GELU (CLIP's quick_gelu is already an approximation)", order=60))
register(Rewrite(
    "softmax-fp32", ALL, False,
    "Attention softmax in fp32 inside an fp16 graph (diffusers attention gets md-export's processor; CLIP "
    "attention its causal-mask module); asks the backend to keep softmax out of fp16 (LowerOptions.extra['fp32_ops']).",
    softmax_fp32, "diffusers Attention, CLIPAttention", "no attention to change", order=70,
    lowering_extra=(("fp32_ops", ("softmax",)),)))


# Defaults: each keeps numerics and passed `md-export check` on the default model (Core ML fp16:
# UNet 53.1 dB with the set vs 53.2 dB without; TFLite: UNet 129 dB, text encoder 141 dB).
set_defaults("coreml", ("attention=split-einsum", "linear-to-conv", "layernorm-channels", "text-causal-mask"))
set_defaults("tflite", ("gpu-composites",))
set_defaults("onnx", ())
