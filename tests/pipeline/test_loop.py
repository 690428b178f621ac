"""`generate` over numpy callables wrapping the tiny torch components, against diffusers' pipelines
built from the same components (same seed, prompt, steps, guidance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from md_export.core.errors import InputError
from md_export.families.tiny import tiny_sd_components, tiny_unet_config
from md_export.pipeline import ClipTokenizer, generate, guidance_embedding, save_png, side_by_side, to_uint8

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "src" / "md_export" / "default_model"
TOKENIZER_DIR = DEFAULT_MODEL / "tokenizer"
SCHEDULER_CONFIG = json.loads((DEFAULT_MODEL / "scheduler" / "scheduler_config.json").read_text())
PROMPT = "a photo of an astronaut riding a horse, 4k, don't blur"
NEGATIVE = "low quality, blurry"
TOL = 1e-4  # max abs, images in [-1, 1]


@pytest.fixture(scope="module")
def components():
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    unet, text_encoder, vae, _ = tiny_sd_components(seed=0)
    return unet, text_encoder, vae


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer.from_folder(TOKENIZER_DIR)


class Recorder:
    """Wraps a callable and keeps the feeds it saw (shapes/dtypes checked by the tests)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, feeds):
        self.calls.append({k: (v.shape, v.dtype) for k, v in feeds.items()})
        return self.fn(feeds)


def numpy_models(unet, text_encoder, vae, decoder_applies_scaling=True):
    """The contract's callables over the torch modules: numpy in, numpy out."""

    @torch.no_grad()
    def run_text(feeds):
        ids = torch.from_numpy(feeds["input_ids"]).long()
        return {"last_hidden_state": text_encoder(ids).last_hidden_state.numpy()}

    @torch.no_grad()
    def run_unet(feeds):
        cond = feeds.get("timestep_cond")
        out = unet(
            torch.from_numpy(feeds["sample"]),
            torch.from_numpy(feeds["timestep"]),
            encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"]),
            timestep_cond=None if cond is None else torch.from_numpy(cond),
        ).sample
        return {"noise_pred": out.numpy()}

    @torch.no_grad()
    def run_vae(feeds):
        z = torch.from_numpy(feeds["latent"])
        if decoder_applies_scaling:
            z = z / vae.config.scaling_factor
        return {"image": vae.decode(z).sample.numpy()}

    return {"text_encoder": Recorder(run_text), "unet": Recorder(run_unet), "vae_decoder": Recorder(run_vae)}


def pipeline_dict(guidance="cfg-batch2", scheduler="euler", decoder_applies_scaling=True, **extra):
    return {
        "image_height": 128, "image_width": 128,
        "latent_channels": 4, "latent_height": 16, "latent_width": 16,
        "vae_scaling_factor": 0.18215, "vae_shift_factor": 0.0,
        "decoder_applies_scaling": decoder_applies_scaling,
        "guidance": guidance, "unet_batch": 2 if guidance == "cfg-batch2" else 1,
        "default_guidance_scale": 7.5, "default_steps": 4, "scheduler": scheduler,
        "text_max_length": 77, "text_hidden_size": 32,
        "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                      "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        **extra,
    }


DIFFUSERS_SCHEDULERS = {
    "ddim": lambda cfg: diffusers.DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: diffusers.EulerDiscreteScheduler.from_config(cfg),
    "dpmpp-2m": lambda cfg: diffusers.DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2),
    "lcm": lambda cfg: diffusers.LCMScheduler.from_config(cfg),
}


@torch.no_grad()
def diffusers_image(pipe_cls, components, hf_tokenizer, scheduler, cfg, **call):
    """Reference: diffusers' latents (output_type="latent"), decoded exactly as the pipeline decodes
    them (vae.decode(latents / scaling_factor)), before its [0, 1] post-processing."""
    unet, text_encoder, vae = components
    pipe = pipe_cls(vae=vae, text_encoder=text_encoder, tokenizer=hf_tokenizer, unet=unet,
                    scheduler=DIFFUSERS_SCHEDULERS[scheduler](cfg), safety_checker=None,
                    feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(height=128, width=128, output_type="latent", **call).images
    return vae.decode(latents / vae.config.scaling_factor).sample.numpy()


@pytest.mark.parametrize("scheduler,steps", [("euler", 4), ("ddim", 4), ("dpmpp-2m", 5)])
def test_cfg_batch2_matches_stable_diffusion_pipeline(components, hf_tokenizer, tokenizer, scheduler, steps):
    seed, scale = 3, 6.0
    ref = diffusers_image(
        diffusers.StableDiffusionPipeline, components, hf_tokenizer, scheduler, SCHEDULER_CONFIG,
        prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=scale,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    models = numpy_models(*components)
    seen = []
    image = generate(models, pipeline_dict(scheduler=scheduler), tokenizer, SCHEDULER_CONFIG, PROMPT,
                     negative_prompt=NEGATIVE, steps=steps, guidance_scale=scale, seed=seed,
                     progress=lambda i, n: seen.append((i, n)))
    assert image.shape == (1, 3, 128, 128) and image.dtype == np.float32
    err = float(np.abs(image - ref).max())
    print(f"{scheduler} cfg-batch2 {steps} steps: max abs {err:.3g}")
    assert err <= TOL
    # the contract's feeds: batch 2, float32 timestep [2], int32 ids [1, 77]
    assert models["unet"].calls[0] == {
        "sample": ((2, 4, 16, 16), np.float32), "timestep": ((2,), np.float32),
        "encoder_hidden_states": ((2, 77, 32), np.float32)}
    assert len(models["unet"].calls) == steps
    assert models["text_encoder"].calls == [{"input_ids": ((1, 77), np.int32)}] * 2
    assert models["vae_decoder"].calls == [{"latent": ((1, 4, 16, 16), np.float32)}]
    assert seen == [(i + 1, steps) for i in range(steps)]


def test_guidance_changes_the_image(components, tokenizer):
    """Guards against a loop that ignores the negative prompt or the scale."""
    models = numpy_models(*components)
    a = generate(models, pipeline_dict(), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1, guidance_scale=7.5)
    b = generate(models, pipeline_dict(), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1, guidance_scale=2.0)
    c = generate(models, pipeline_dict(), tokenizer, SCHEDULER_CONFIG, PROMPT, NEGATIVE, steps=1, guidance_scale=7.5)
    d = generate(models, pipeline_dict(), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1, guidance_scale=7.5, seed=1)
    for other in (b, c, d):
        assert np.abs(a - other).max() > 1e-3


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp-2m"])
def test_no_guidance_matches_pipeline_with_scale_1(components, hf_tokenizer, tokenizer, scheduler):
    seed, steps = 5, 3
    ref = diffusers_image(
        diffusers.StableDiffusionPipeline, components, hf_tokenizer, scheduler, SCHEDULER_CONFIG,
        prompt=PROMPT, num_inference_steps=steps, guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    models = numpy_models(*components)
    image = generate(models, pipeline_dict(guidance="none", scheduler=scheduler), tokenizer, SCHEDULER_CONFIG,
                     PROMPT, negative_prompt="ignored", steps=steps, guidance_scale=1.0, seed=seed)
    err = float(np.abs(image - ref).max())
    print(f"{scheduler} none {steps} steps: max abs {err:.3g}")
    assert err <= TOL
    assert models["unet"].calls[0]["sample"] == ((1, 4, 16, 16), np.float32)
    assert len(models["text_encoder"].calls) == 1  # prompt only


def test_decoder_without_scaling_gets_scaled_latent(components, tokenizer):
    """decoder_applies_scaling false: the loop divides by the scaling factor itself."""
    unet, text_encoder, vae = components
    with_scaling = generate(numpy_models(*components, decoder_applies_scaling=True), pipeline_dict(), tokenizer,
                            SCHEDULER_CONFIG, PROMPT, steps=1, seed=9)
    plain = generate(numpy_models(*components, decoder_applies_scaling=False),
                     pipeline_dict(decoder_applies_scaling=False), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1, seed=9)
    np.testing.assert_allclose(plain, with_scaling, atol=1e-5)
    # and the flag matters: a scaling decoder fed an already-scaled latent gives another image
    wrong = generate(numpy_models(*components, decoder_applies_scaling=True),
                     pipeline_dict(decoder_applies_scaling=False), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1, seed=9)
    assert np.abs(wrong - with_scaling).max() > 1e-2


LCM_SCHEDULER_CONFIG = dict(
    _class_name="LCMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    set_alpha_to_one=True, clip_sample=False, original_inference_steps=50, timestep_scaling=10.0,
)


@pytest.fixture(scope="module")
def lcm_components(components):
    _, text_encoder, vae = components
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config(time_cond_proj_dim=16)).eval()
    return unet, text_encoder, vae


def test_guidance_embedding_matches_diffusers():
    pipe_cls = diffusers.LatentConsistencyModelPipeline
    for scale, dim in ((8.5, 16), (1.0, 256), (3.0, 33)):
        ref = pipe_cls.get_guidance_scale_embedding(None, torch.tensor(scale - 1).repeat(2), embedding_dim=dim).numpy()
        np.testing.assert_allclose(guidance_embedding(scale, dim, batch=2), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_embedded_matches_lcm_pipeline(lcm_components, hf_tokenizer, tokenizer, steps):
    seed, scale = 11, 8.5
    ref = diffusers_image(
        diffusers.LatentConsistencyModelPipeline, lcm_components, hf_tokenizer, "lcm", LCM_SCHEDULER_CONFIG,
        prompt=PROMPT, num_inference_steps=steps, guidance_scale=scale,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    models = numpy_models(*lcm_components)
    image = generate(models, pipeline_dict(guidance="embedded", scheduler="lcm", timestep_cond_dim=16), tokenizer,
                     LCM_SCHEDULER_CONFIG, PROMPT, steps=steps, guidance_scale=scale, seed=seed)
    err = float(np.abs(image - ref).max())
    print(f"lcm embedded {steps} steps: max abs {err:.3g}")
    assert err <= TOL
    assert models["unet"].calls[0] == {
        "sample": ((1, 4, 16, 16), np.float32), "timestep": ((1,), np.float32),
        "encoder_hidden_states": ((1, 77, 32), np.float32), "timestep_cond": ((1, 16), np.float32)}


def test_lcm_is_deterministic_per_seed(lcm_components, tokenizer):
    """LCM re-noises between steps from the seeded generator: the same seed repeats the image exactly,
    another seed does not."""
    models = numpy_models(*lcm_components)
    pipe = pipeline_dict(guidance="embedded", scheduler="lcm", timestep_cond_dim=16)
    a = generate(models, pipe, tokenizer, LCM_SCHEDULER_CONFIG, PROMPT, steps=2, guidance_scale=8.5, seed=1)
    b = generate(models, pipe, tokenizer, LCM_SCHEDULER_CONFIG, PROMPT, steps=2, guidance_scale=8.5, seed=1)
    c = generate(models, pipe, tokenizer, LCM_SCHEDULER_CONFIG, PROMPT, steps=2, guidance_scale=8.5, seed=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_bad_pipeline_inputs(components, tokenizer):
    models = numpy_models(*components)
    with pytest.raises(InputError):
        generate(models, pipeline_dict(guidance="cfg-batch3"), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1)
    with pytest.raises(InputError):
        generate(models, pipeline_dict(guidance="embedded"), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1)
    with pytest.raises(InputError):
        generate({k: v for k, v in models.items() if k != "unet"}, pipeline_dict(), tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1)
    bad = pipeline_dict(guidance="none")
    bad["unet_batch"] = 2
    with pytest.raises(InputError):
        generate(models, bad, tokenizer, SCHEDULER_CONFIG, PROMPT, steps=1)


def test_image_helpers(tmp_path, components, hf_tokenizer):
    rng = np.random.default_rng(0)
    image = np.clip(rng.standard_normal((1, 3, 8, 6)).astype(np.float32), -1.2, 1.2)
    image[0, :, 0, 0] = 0.0
    u8 = to_uint8(image)
    assert u8.shape == (8, 6, 3) and u8.dtype == np.uint8
    # as diffusers' postprocess + numpy_to_pil
    ref = (torch.from_numpy(image) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    np.testing.assert_array_equal(u8, (ref * 255).round().astype(np.uint8))
    path = tmp_path / "x.png"
    save_png(path, image)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(path)), u8)
    other = image.copy()
    other[0, :, 0, 0] += 0.05
    sbs = side_by_side(image, other, amplify=8)
    assert sbs.shape == (8, 18, 3)
    np.testing.assert_array_equal(sbs[:, :6], u8)
    np.testing.assert_array_equal(sbs[:, 6:12], to_uint8(other))
    diff = sbs[:, 12:].astype(int)
    assert diff[0, 0].min() > 0
    diff[0, 0] = 0
    assert diff.max() == 0
    with pytest.raises(InputError):
        side_by_side(image, image[:, :, :4])
