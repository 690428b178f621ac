"""Write the golden files the Swift tests in ios_demo/Tests/MDExportCoreTests compare against.

Run from the repository root with the project's environment (transformers, diffusers, torch):

    .venv/bin/python ios_demo/tools/make_goldens.py

Writes, under ios_demo/Tests/MDExportCoreTests/Resources/:
  tokenizer_goldens.json   input_ids from transformers' CLIPTokenizer on the committed
                           src/md_export/default_model/tokenizer (padding="max_length", 77, truncation)
  scheduler_goldens.json   timesteps, sigmas, init_noise_sigma and per-step outputs of diffusers'
                           EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler (DPM-Solver++
                           2M) and LCMScheduler for several configs; "rewrite_cases": the pipeline's
                           scheduler-config rewrite, from md_export.pipeline.schedulers
  noise_goldens.json       torch.randn values for given seeds and shapes (the app's RNG reproduces
                           torch's CPU generator so an image can be compared with diffusers' one)
  guidance_embedding_goldens.json   LCM guidance-scale embeddings (timestep_cond)
Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "ios_demo" / "Tests" / "MDExportCoreTests" / "Resources"
TOKENIZER_DIR = ROOT / "src" / "md_export" / "default_model" / "tokenizer"

PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An Astronaut Riding A Horse On Mars",
    "   leading and trailing   spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "it's a dog's life, isn't it? we'll see; they've gone, I'm here, you'd know",
    "numbers 1234567890 and 3.14159, 1st 2nd 3rd",
    "punctuation!!! ??? ... --- (brackets) [square] {curly} <angle>",
    "emoji 🐶🐱 and symbols © ® ™ € £ ¥",
    "café naïve résumé Ångström",
    "Ünïcödé ÀÉÎÕÜ",
    "ελληνικά και русский текст",
    "日本語のテキスト 中文文本",
    "a cat, by greg rutkowski, trending on artstation, 8k, highly detailed",
    "hyphen-ated words and under_scores and slashes/paths",
    "email@example.com https://example.com/path?q=1&r=2",
    "a <|endoftext|> in the middle",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["word"] * 100),
    " ".join(f"token{i}" for i in range(60)),
    "mixed CASE wOrDs ALLCAPS",
    "quote \"double\" and 'single' and `backtick`",
]


def tokenizer_goldens() -> dict:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    cases = []
    for p in PROMPTS:
        ids = tok(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert len(ids) == 77
        unpadded = tok(p, truncation=False)["input_ids"]
        cases.append({"prompt": p, "input_ids": [int(i) for i in ids], "untruncated_length": len(unpadded)})
    return {
        "source": f"transformers {__import__('transformers').__version__} CLIPTokenizer, "
        "src/md_export/default_model/tokenizer, padding=max_length, max_length=77, truncation=True",
        "max_length": 77,
        "bos_token_id": int(tok.bos_token_id),
        "eos_token_id": int(tok.eos_token_id),
        "pad_token_id": int(tok.pad_token_id),
        "cases": cases,
    }


SD_BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)

SCHEDULER_CASES = [
    # (name, class, config, step counts)
    ("euler-leading-eps", "EulerDiscreteScheduler",
     dict(SD_BASE, prediction_type="epsilon", timestep_spacing="leading"), [1, 4, 8, 20, 25, 50]),
    ("euler-trailing-eps", "EulerDiscreteScheduler",
     dict(SD_BASE, prediction_type="epsilon", timestep_spacing="trailing"), [1, 3, 4, 16, 20]),
    ("euler-linspace-v", "EulerDiscreteScheduler",
     dict(SD_BASE, prediction_type="v_prediction", timestep_spacing="linspace"), [4, 20, 30]),
    ("euler-linear-betas-sigma-min", "EulerDiscreteScheduler",
     dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
          timestep_spacing="leading", steps_offset=0, final_sigmas_type="sigma_min"), [10]),
    ("ddim-leading-eps", "DDIMScheduler",
     dict(SD_BASE, prediction_type="epsilon", timestep_spacing="leading", clip_sample=False,
          set_alpha_to_one=False), [1, 4, 20, 50]),
    ("ddim-trailing-v", "DDIMScheduler",
     dict(SD_BASE, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
          set_alpha_to_one=False), [3, 16, 20]),
    ("ddim-linspace-clip", "DDIMScheduler",
     dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
          timestep_spacing="linspace", clip_sample=True, set_alpha_to_one=True), [7, 20]),
    ("dpmpp2m-leading-eps", "DPMSolverMultistepScheduler",
     dict(SD_BASE, prediction_type="epsilon", timestep_spacing="leading"), [1, 2, 4, 20]),
    ("dpmpp2m-linspace-defaults", "DPMSolverMultistepScheduler",
     dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"), [3, 10, 25]),
    ("dpmpp2m-trailing-v-heun", "DPMSolverMultistepScheduler",
     dict(SD_BASE, prediction_type="v_prediction", timestep_spacing="trailing", solver_type="heun"), [5, 16]),
    ("dpmpp2m-sigma-min", "DPMSolverMultistepScheduler",
     dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
          final_sigmas_type="sigma_min"), [6, 16]),
    ("dpmpp2m-euler-at-final-lambda-clipped", "DPMSolverMultistepScheduler",
     dict(SD_BASE, euler_at_final=True, final_sigmas_type="sigma_min", lambda_min_clipped=-5.1), [8]),
    ("lcm-default", "LCMScheduler",
     dict(SD_BASE, prediction_type="epsilon", timestep_spacing="leading", original_inference_steps=50,
          timestep_scaling=10.0), [1, 2, 4, 8]),
]

# The fixed "sample" and "model output" every step is evaluated on (8 values each).
STEP_SAMPLE = [0.5, -1.25, 2.0, 0.0, -0.3, 1.7, -2.2, 0.9]
STEP_MODEL_OUTPUT = [0.1, -0.4, 0.25, 1.0, -0.8, 0.05, 0.6, -0.15]


def scheduler_goldens() -> dict:
    import diffusers

    cases = []
    for name, cls_name, config, step_counts in SCHEDULER_CASES:
        cls = getattr(diffusers, cls_name)
        full_config = dict(config, _class_name=cls_name)
        for n in step_counts:
            s = cls(**config)
            s.set_timesteps(n)
            x = torch.tensor(STEP_SAMPLE, dtype=torch.float32)
            e = torch.tensor(STEP_MODEL_OUTPUT, dtype=torch.float32)
            scaled, prev, denoised = [], [], []
            for t in s.timesteps:
                scaled.append(s.scale_model_input(x, t).tolist())
                if cls_name == "LCMScheduler":
                    # Noise for the intermediate steps: fixed zeros, so the golden is the deterministic part.
                    out = _lcm_step_with_zero_noise(s, e, t, x)
                    prev.append(out[0].tolist())
                    denoised.append(out[1].tolist())
                else:
                    prev.append(s.step(e, t, x).prev_sample.tolist())
            case = {
                "name": name,
                "config": full_config,
                "steps": n,
                "timesteps": [float(t) for t in s.timesteps],
                "init_noise_sigma": float(s.init_noise_sigma),
                "scaled_model_input": scaled,
                "prev_sample": prev,
            }
            if hasattr(s, "sigmas") and cls_name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
                case["sigmas"] = [float(v) for v in s.sigmas]
            if denoised:
                case["denoised"] = denoised
            cases.append(case)
    return {
        "source": f"diffusers {diffusers.__version__}",
        "step_sample": STEP_SAMPLE,
        "step_model_output": STEP_MODEL_OUTPUT,
        "note": "prev_sample[i] is step(model_output, timesteps[i], step_sample) evaluated at step index i; "
        "for LCM the injected noise is zero (prev = sqrt(alpha_prev) * denoised).",
        "cases": cases,
        "rewrite_cases": rewrite_cases(),
    }


# An SD 1.5-style Euler scheduler.json predating diffusers' "outdated config" fix-ups (steps_offset 0,
# no clip_sample, so DDIM would default to clip_sample=True).
OLD_EULER_JSON = dict(SD_BASE, steps_offset=0, timestep_spacing="leading", prediction_type="epsilon",
                      _class_name="EulerDiscreteScheduler")


def rewrite_cases() -> list:
    """md_export.pipeline.schedulers (which matches diffusers) built from OLD_EULER_JSON as the loop builds
    it: with the rewrite (steps_offset=1, clip_sample=False) for cfg-batch2 / none, without for embedded.
    prev_sample[i] is step(model_output * 4, timesteps[i], step_sample * 4) at step index i (scaled up so
    DDIM's clipping of x0 shows)."""
    from md_export.pipeline.schedulers import make_scheduler

    x = np.asarray(STEP_SAMPLE, dtype=np.float32) * np.float32(4)
    e = np.asarray(STEP_MODEL_OUTPUT, dtype=np.float32) * np.float32(4)
    out = []
    for kind, guidance, steps in (("ddim", "cfg-batch2", 10), ("ddim", "none", 4), ("ddim", "embedded", 10),
                                  ("euler", "cfg-batch2", 8)):
        fixups = {} if guidance == "embedded" else {"steps_offset": 1, "clip_sample": False}
        s = make_scheduler(kind, OLD_EULER_JSON, **fixups)
        s.set_timesteps(steps)
        prev = []
        for t in s.timesteps:
            scaled = s.scale_model_input(x, t)
            prev.append(np.asarray(s.step(e, t, x), dtype=np.float32).tolist())
            s._step_index = None  # evaluate every step on the same sample, like the diffusers cases
        out.append({"scheduler": kind, "guidance": guidance, "steps": steps, "config": OLD_EULER_JSON,
                    "timesteps": [float(t) for t in s.timesteps], "prev_sample": prev})
    return out


def _lcm_step_with_zero_noise(s, e, t, x):
    import diffusers.schedulers.scheduling_lcm as lcm

    orig = lcm.randn_tensor
    lcm.randn_tensor = lambda shape, **kw: torch.zeros(shape, dtype=kw.get("dtype") or torch.float32)
    try:
        out = s.step(e, t, x)
    finally:
        lcm.randn_tensor = orig
    return out.prev_sample, out.denoised


NOISE_CASES = [(0, [1, 4, 16, 16]), (42, [1, 4, 64, 64]), (1234, [3, 7]), (2**32 + 5, [2, 16])]


def noise_goldens() -> dict:
    cases = []
    for seed, shape in NOISE_CASES:
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(shape, generator=g, dtype=torch.float32).flatten()
        # A second draw from the same generator (LCM draws fresh noise every step).
        v2 = torch.randn(shape, generator=g, dtype=torch.float32).flatten()
        n = v.numel()
        if n <= 64:
            head = v.tolist()
        else:
            head = v[:32].tolist()
        cases.append({
            "seed": seed,
            "shape": shape,
            "count": n,
            "head": head,
            "tail": v[-32:].tolist() if n > 64 else [],
            "sum": float(v.double().sum()),
            "sum_of_squares": float((v.double() ** 2).sum()),
            "second_draw_head": v2[:16].tolist(),
        })
    return {
        "source": f"torch {torch.__version__} CPU, torch.Generator().manual_seed(seed); torch.randn(shape)",
        "cases": cases,
    }


def guidance_embedding_goldens() -> dict:
    from diffusers import LatentConsistencyModelPipeline

    cases = []
    for w, dim in [(8.0, 256), (1.5, 7), (0.0, 16)]:
        emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, torch.tensor([w - 1.0]), embedding_dim=dim
        )
        cases.append({"guidance_scale": w, "embedding_dim": dim, "embedding": emb[0].tolist()})
    return {"source": "diffusers LatentConsistencyModelPipeline.get_guidance_scale_embedding(w - 1)", "cases": cases}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for fname, fn in [
        ("tokenizer_goldens.json", tokenizer_goldens),
        ("scheduler_goldens.json", scheduler_goldens),
        ("noise_goldens.json", noise_goldens),
        ("guidance_embedding_goldens.json", guidance_embedding_goldens),
    ]:
        data = fn()
        (OUT / fname).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {OUT / fname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
