"""The text-to-image denoising loop the apps run, over any runtime.

Each model is a callable taking and returning dicts of numpy arrays keyed by the contract's names
(docs/bundle-format.md): ``text_encoder`` ({input_ids} -> {last_hidden_state}), ``unet``
({sample, timestep, encoder_hidden_states[, timestep_cond]} -> {noise_pred}) and ``vae_decoder``
({latent} -> {image}). A TFLite signature runner, an onnxruntime session or a Core ML model
wrapped in a small adapter fits.

Same seed, prompt, steps and guidance give the image diffusers' StableDiffusionPipeline (or
LatentConsistencyModelPipeline) gives with ``generator=torch.Generator("cpu").manual_seed(seed)``:
the initial latents and any scheduler noise are drawn from that generator, in the same order.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from md_export.core.errors import InputError, MissingDependencyError
from md_export.pipeline.schedulers import Scheduler, make_scheduler
from md_export.pipeline.tokenizer import ClipTokenizer

Model = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
GUIDANCE_MODES = ("cfg-batch2", "none", "embedded")


def guidance_embedding(guidance_scale: float, dim: int, batch: int = 1) -> np.ndarray:
    """LCM's guidance condition: sinusoidal embedding of (guidance_scale - 1) * 1000, float32 [batch, dim]
    (sin half then cos half, zero-padded when `dim` is odd), computed in float32 as diffusers does."""
    if dim < 2:
        raise InputError(f"timestep_cond_dim must be at least 2, got {dim}")
    w = np.float32(guidance_scale - 1) * np.float32(1000.0)
    half = dim // 2
    scale = np.log(np.float32(10000.0)) / np.float32(half - 1) if half > 1 else np.float32(0.0)
    # float32 products as torch forms them; exp/sin/cos evaluated in float64 and rounded, which is
    # what torch's float32 kernels return (numpy's float32 exp/sin are a few ulps off)
    freqs = np.exp((np.arange(half, dtype=np.float32) * -scale).astype(np.float64)).astype(np.float32)
    args = (w * freqs).astype(np.float64)
    emb = np.concatenate([np.sin(args), np.cos(args)]).astype(np.float32)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros(1, np.float32)])
    return np.repeat(emb[None, :], batch, axis=0)


def _torch_generator(seed: int):
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency today
        raise MissingDependencyError("torch", "torch") from exc
    return torch, torch.Generator("cpu").manual_seed(int(seed))


def _run(models: Mapping[str, Model], name: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    if name not in models:
        raise InputError(f"generate: no '{name}' model given (have: {', '.join(sorted(models)) or 'none'})")
    result = models[name](feeds)
    if output not in result:
        raise InputError(f"generate: model '{name}' returned {sorted(result)}, expected '{output}'")
    return np.asarray(result[output], dtype=np.float32)


def encode_text(models: Mapping[str, Model], tokenizer: ClipTokenizer, text: str, max_length: int = 77) -> np.ndarray:
    ids = tokenizer.encode(text, max_length=max_length)[None, :].astype(np.int32)
    return _run(models, "text_encoder", {"input_ids": ids}, "last_hidden_state")


def generate(
    models: Mapping[str, Model],
    pipeline: Mapping[str, Any],
    tokenizer: ClipTokenizer,
    scheduler_config: Mapping[str, Any],
    prompt: str,
    negative_prompt: str = "",
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    scheduler: str | Scheduler | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run text-to-image; return the decoded image, float32 [1, 3, H, W] in [-1, 1].

    `pipeline` is the manifest's "pipeline" object. `steps`, `guidance_scale` and `scheduler`
    default to its default_steps, default_guidance_scale and scheduler. `scheduler` may also be a
    ready :class:`Scheduler` (its timesteps are set here).
    """
    guidance = pipeline.get("guidance", "cfg-batch2")
    if guidance not in GUIDANCE_MODES:
        raise InputError(f"generate: unknown guidance '{guidance}'; known: {', '.join(GUIDANCE_MODES)}")
    steps = int(steps if steps is not None else pipeline.get("default_steps", 20))
    guidance_scale = float(guidance_scale if guidance_scale is not None else pipeline.get("default_guidance_scale", 7.5))
    max_length = int(pipeline.get("text_max_length", 77))
    try:
        shape = (1, int(pipeline["latent_channels"]), int(pipeline["latent_height"]), int(pipeline["latent_width"]))
    except KeyError as exc:
        raise InputError(f"generate: pipeline is missing {exc.args[0]!r}") from None

    # text conditioning
    cond = encode_text(models, tokenizer, prompt, max_length)
    extra: dict[str, np.ndarray] = {}
    if guidance == "cfg-batch2":
        uncond = encode_text(models, tokenizer, negative_prompt, max_length)
        context = np.concatenate([uncond, cond], axis=0)  # row 0 unconditional, row 1 conditional
    else:
        context = cond
        if guidance == "embedded":
            dim = pipeline.get("timestep_cond_dim")
            if not dim:
                raise InputError("generate: guidance 'embedded' needs pipeline.timestep_cond_dim")
            extra["timestep_cond"] = guidance_embedding(guidance_scale, int(dim), batch=1)
    batch = context.shape[0]
    if "unet_batch" in pipeline and int(pipeline["unet_batch"]) != batch:
        raise InputError(f"generate: guidance '{guidance}' runs the UNet with batch {batch}, the bundle says unet_batch={pipeline['unet_batch']}")

    # scheduler and initial noise (the same draw diffusers makes)
    if isinstance(scheduler, Scheduler):
        sched = scheduler
    else:
        # diffusers' StableDiffusionPipeline rewrites the scheduler config it is given: steps_offset
        # becomes 1 and clip_sample becomes False (its "outdated config" fix-ups). The guided and
        # unguided SD-family loops do the same so the same scheduler.json gives the same image; LCM's
        # pipeline takes the config as it is.
        fixups = {} if guidance == "embedded" else {"steps_offset": 1, "clip_sample": False}
        sched = make_scheduler(scheduler or pipeline.get("scheduler", "euler"), scheduler_config, **fixups)
    sched.set_timesteps(steps)
    torch, gen = _torch_generator(seed)
    latents = torch.randn(shape, generator=gen, dtype=torch.float32).numpy()
    latents = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)

    timesteps = sched.timesteps
    for i, t in enumerate(timesteps):
        sample = np.concatenate([latents] * batch, axis=0) if batch > 1 else latents
        sample = sched.scale_model_input(sample, t)
        feeds = {
            "sample": np.ascontiguousarray(sample, dtype=np.float32),
            "timestep": np.full((batch,), t, dtype=np.float32),
            "encoder_hidden_states": context,
            **extra,
        }
        noise_pred = _run(models, "unet", feeds, "noise_pred")
        if guidance == "cfg-batch2":
            uncond_pred, cond_pred = noise_pred[0:1], noise_pred[1:2]
            noise_pred = uncond_pred + np.float32(guidance_scale) * (cond_pred - uncond_pred)
        latents = sched.step(noise_pred, t, latents, generator_or_noise=gen)
        if progress is not None:
            progress(i + 1, len(timesteps))

    if not pipeline.get("decoder_applies_scaling", False):
        scale = np.float32(pipeline.get("vae_scaling_factor", 0.18215))
        shift = np.float32(pipeline.get("vae_shift_factor", 0.0) or 0.0)
        latents = latents / scale + shift
    return _run(models, "vae_decoder", {"latent": np.ascontiguousarray(latents, dtype=np.float32)}, "image")


__all__ = ["GUIDANCE_MODES", "encode_text", "generate", "guidance_embedding"]
