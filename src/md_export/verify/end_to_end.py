"""End-to-end parity: the app's denoising loop driven through the bundle's models, against the
diffusers pipeline on the reference components, same prompt, seed, scheduler and steps."""

from __future__ import annotations

import gc

import numpy as np
import torch

from md_export.core.io import read_json
from md_export.core.metrics import compare
from md_export.pipeline.image import save_png, side_by_side
from md_export.pipeline.loop import generate
from md_export.runtime.bundle import open_bundle
from md_export.shapes import VOCABULARY
from md_export.verify.report import FAIL, NOT_RUN, PASS, Check
from md_export.verify.floors import end_to_end_floor

E2E_PROMPT = "a red fox in snow"
# a model trained on a closed vocabulary is checked on a caption it knows: outside it the trained
# default model's trajectory is chaotic, and small differences grow into a different image
VOCABULARY_PROMPTS = {VOCABULARY: "a red circle on a blue background"}


def e2e_prompt(ckpt) -> str:
    """The check's prompt for this reference checkpoint (its own vocabulary, read from the checkpoint, never the bundle)."""
    return VOCABULARY_PROMPTS.get(ckpt.training_vocabulary() or "", E2E_PROMPT)
DIFFUSERS_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmpp-2m": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
}


def reference_pipeline(plan, ckpt, pipe_cfg: dict, bundle):
    """The diffusers pipeline over the reference components (fp32 PyTorch, no rewrites), with the
    bundle's scheduler and tokenizer, progress bar off."""
    import diffusers
    from transformers import CLIPTokenizer

    sched_cls = getattr(diffusers, DIFFUSERS_SCHEDULERS[pipe_cfg["scheduler"]])
    scheduler = sched_cls.from_config(read_json(bundle / "scheduler.json"))
    folder = (bundle / pipe_cfg["tokenizer"].get("vocab", "tokenizer/vocab.json")).parent
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    text_encoder = plan.components["text_encoder"].module.text_encoder
    unet = plan.components["unet"].module.unet
    vae = ckpt.load_vae()
    common = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    if pipe_cfg["guidance"] == "embedded":
        pipe = diffusers.LatentConsistencyModelPipeline(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = diffusers.StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, pipe_cfg: dict, prompt: str, steps: int, seed: int, guidance_scale: float) -> np.ndarray:
    """One image of the reference pipeline, as [1, 3, H, W] in [-1, 1]."""
    with torch.no_grad():
        out = pipe(
            prompt,
            height=pipe_cfg["image_height"],
            width=pipe_cfg["image_width"],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images
    return (np.transpose(out, (0, 3, 1, 2)) * 2.0 - 1.0).astype(np.float32)


def reference_image(plan, ckpt, manifest: dict, bundle, prompt: str, steps: int, seed: int, guidance_scale: float) -> np.ndarray:
    """The diffusers pipeline's image for the reference components, as [1, 3, H, W] in [-1, 1]."""
    pipe_cfg = manifest["pipeline"]
    return run_reference(reference_pipeline(plan, ckpt, pipe_cfg, bundle), pipe_cfg, prompt, steps, seed, guidance_scale)


def check_end_to_end(bundle, manifest, target, reference, factory, floors: dict, steps, seed, report) -> Check:
    """`reference`: a verify.reference.Reference (its checkpoint picks the prompt; its image is
    computed after the bundle's models are released)."""
    precision = "fp16" if any(m.get("precision") == "fp16" for m in manifest["models"].values()) else "fp32"
    floor = end_to_end_floor(manifest["models"], precision, floors["overrides"], floors["recipe"], floors["recorded"])
    base = dict(model="end_to_end", output="image", runtime="pipeline", precision=precision, threshold_psnr=floor)
    prompt = e2e_prompt(reference.ckpt)
    try:
        # an Apple-layout bundle through the package's conventions; one model open at a time
        models, pipe_cfg = open_bundle(bundle, manifest, one_at_a_time=True)
        guidance = pipe_cfg["default_guidance_scale"] if pipe_cfg["guidance"] != "none" else 0.0
        image = generate(models, pipe_cfg, factory.tokenizer(), _scheduler_config(bundle), prompt,
                         steps=steps, guidance_scale=guidance, seed=seed)
    except Exception as e:  # the component checks already say which model is at fault
        return Check(status=NOT_RUN if "Unsupported" in type(e).__name__ else FAIL,
                     reason=f"artifact loop failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", **base)
    del models  # the artifact's models go before the reference pipeline loads
    gc.collect()
    ref = reference.image(dict(manifest, pipeline=pipe_cfg), bundle, prompt, steps, seed, guidance)
    art = np.clip(np.asarray(image, dtype=np.float32), -1.0, 1.0)
    metrics = compare(ref, art)
    png = bundle / "parity_end_to_end.png"
    save_png(png, side_by_side(ref, art))
    save_png(bundle / "generated.png", art)
    report.artifacts["side_by_side"] = png.name
    status = PASS if metrics["psnr"] >= floor else FAIL
    return Check(status=status, metrics=metrics, samples=1, reason=f"{steps} steps, prompt {prompt!r}, seed {seed}", **base)


def _scheduler_config(bundle) -> dict:
    return read_json(bundle / "scheduler.json")
