"""Test helper: write a diffusers/transformers SD 2.x pipeline as an original-layout single file,
text tower in the open_clip layout (`cond_stage_model.model.*`), as SD 2.x checkpoints ship.

Facts about that layout (from open_clip's text transformer and diffusers' reverse converter):
- `token_embedding.weight`, `positional_embedding` (a bare parameter, no `.weight`),
  `ln_final.*`, `text_projection` stored [width, embed_dim] (used as `x @ proj`), `logit_scale`;
- per layer `transformer.resblocks.N.`: `ln_1`, `attn.in_proj_weight` / `attn.in_proj_bias` (q, k
  and v stacked along dim 0, in that order), `attn.out_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`;
- the file holds the whole tower, but SD 2.x conditions on the penultimate layer's output, so a
  diffusers text encoder has one layer fewer than the file: the last resblock is never used.
"""

from __future__ import annotations

import torch

from md_export.checkpoint.single_file import to_ldm_state_dict

OPENCLIP = "cond_stage_model.model."

# transformers CLIP layer part -> open_clip resblock part (attention q/k/v handled apart)
_LAYER_PARTS = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def _text_state(text_encoder) -> dict:
    """transformers' keys without the `text_model.` wrapper (transformers 4 has it, 5 may not)."""
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def openclip_text_state_dict(text_encoder, *, embed_dim: int | None = None, seed: int = 0) -> dict:
    """The text tower as open_clip keys, plus one extra random last resblock (the layer SD 2.x
    skips) and a random text projection, so a loader that keeps either gets different weights."""
    sd = _text_state(text_encoder)
    cfg = text_encoder.config
    width, n = cfg.hidden_size, cfg.num_hidden_layers
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
    }
    for i in range(n):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in _LAYER_PARTS:
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{q}_proj.{p}"] for q in "qkv"], dim=0)
    g = torch.Generator().manual_seed(seed)
    last = f"transformer.resblocks.{n}."
    for name, t in list(out.items()):
        if name.startswith("transformer.resblocks.0."):
            out[last + name[len("transformer.resblocks.0."):]] = torch.randn(t.shape, generator=g) * 0.02
    out["text_projection"] = torch.randn(width, embed_dim or width, generator=g) * width ** -0.5
    out["logit_scale"] = torch.tensor(4.6052)
    return {OPENCLIP + k: v.detach().contiguous().clone() for k, v in out.items()}


def sd2_single_file_state_dict(unet, vae, text_encoder, *, seed: int = 0) -> dict:
    """UNet (`model.diffusion_model.*`) and VAE (`first_stage_model.*`) in the LDM layout, text
    encoder in the open_clip layout: what an SD 2.x `.safetensors` from a model site holds."""
    sd = {k: v for k, v in to_ldm_state_dict(unet, vae, text_encoder).items() if not k.startswith("cond_stage_model.")}
    sd.update(openclip_text_state_dict(text_encoder, seed=seed))
    return sd


def openclip_text_forward(state: dict, input_ids: torch.Tensor, *, heads: int, layers: int | None = None) -> torch.Tensor:
    """open_clip's text transformer run straight from a file's tensors, as SD 2.x's conditioner
    runs it: token + positional embedding, the first `layers` resblocks (pre-norm, torch's
    MultiheadAttention over the stacked in_proj, causal mask, exact GELU MLP), then ln_final.
    layers=None: all but the last (the penultimate layer). An independent reference for what
    a converted text encoder must compute."""
    f = torch.nn.functional
    p = lambda name: state[OPENCLIP + name].float()  # noqa: E731
    width = p("token_embedding.weight").shape[1]
    n_file = 1 + max(int(k.split("resblocks.")[1].split(".")[0]) for k in state if ".resblocks." in k)
    seq = input_ids.shape[1]
    x = p("token_embedding.weight")[input_ids] + p("positional_embedding")[:seq]
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    for i in range(n_file - 1 if layers is None else layers):
        r = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": p(r + "attn.in_proj_weight"), "in_proj_bias": p(r + "attn.in_proj_bias"),
                              "out_proj.weight": p(r + "attn.out_proj.weight"), "out_proj.bias": p(r + "attn.out_proj.bias")})
        h = f.layer_norm(x, (width,), p(r + "ln_1.weight"), p(r + "ln_1.bias"))
        x = x + attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = f.layer_norm(x, (width,), p(r + "ln_2.weight"), p(r + "ln_2.bias"))
        h = f.gelu(f.linear(h, p(r + "mlp.c_fc.weight"), p(r + "mlp.c_fc.bias")))
        x = x + f.linear(h, p(r + "mlp.c_proj.weight"), p(r + "mlp.c_proj.bias"))
    return f.layer_norm(x, (width,), p("ln_final.weight"), p("ln_final.bias"))
