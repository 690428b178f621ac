"""Generate the golden files the Kotlin core tests compare against.

Run from the repository root with the project's venv:

    .venv/bin/python android_demo/core/tools/make_goldens.py

Writes android_demo/core/src/test/resources/goldens/{tokenizer,schedulers,rng,pipeline}.json:
tokenizer ids from transformers, scheduler steps from diffusers (Euler, DDIM, DPM-Solver++ 2M,
LCM) plus the pipeline's scheduler-config rewrite from md_export.pipeline.schedulers, torch.randn
values (the Kotlin TorchGenerator), and whole md_export.pipeline.loop.generate runs over small
deterministic numpy models that the Kotlin test re-implements.
Nothing is downloaded: the tokenizer is the committed tiny default model's
(src/md_export/default_model/tokenizer, the real CLIP vocab and merges) and the
schedulers are built from configs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler
from diffusers.schedulers import scheduling_lcm
from transformers import CLIPTokenizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE.parent / "src" / "test" / "resources" / "goldens"
TOKENIZER_DIR = REPO / "src" / "md_export" / "default_model" / "tokenizer"

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "A Photo Of A CAT",
    "  multiple   spaces\tand\nnewlines  ",
    "don't stop believin' - it's they're we've I'm you'll he'd",
    "1234567890 and 3.14159 and 2024-11-23",
    "café naïve résumé Ünïcödé",
    "emoji 🐱🚀 test ✨ 👍🏽",
    "日本語のテキスト and 中文",
    "Ελληνικά ΟΔΟΣ σοφός",
    "punctuation!!! ??? ... ,,, ;;; (parens) [brackets] {braces}",
    "hyphen-ated well-known state-of-the-art",
    "masterpiece, best quality, 8k, ultra-detailed, (highly detailed:1.2), <lora:foo:0.5>",
    "<|startoftext|>hello<|endoftext|> world",
    "non\u00a0breaking\u3000ideographic\u2003em space",
    "mixed CASE with İstanbul and STRASSE",
    "decomposed e\u0301 accents and composed \u00e9",
    "русский текст Привет мир",
    "$100 & 50% off @ store #1 ~tilde `backtick | pipe \\ backslash \"quotes\"",
    "hindi हिन्दी text",
    "a cozy cabin in the woods at dusk, volumetric light, cinematic, trending on artstation",
    " ".join(["a very long prompt that keeps going"] * 12),
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
]


def tokenizer_goldens() -> dict:
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    cases = []
    for p in PROMPTS:
        ids = tok(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        unpadded = tok(p)["input_ids"]
        cases.append({"prompt": p, "input_ids": list(map(int, ids)), "unpadded_length": len(unpadded)})
    return {
        "generator": f"transformers {__import__('transformers').__version__} {type(tok).__name__}",
        "tokenizer_dir": "src/md_export/default_model/tokenizer",
        "max_length": 77,
        "cases": cases,
    }


# --- schedulers ---------------------------------------------------------------

SD15 = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
}

N_VALUES = 8


def model_fn(sample: np.ndarray, t: float, base: np.ndarray) -> np.ndarray:
    """The fake 'model' the Kotlin test repeats: deterministic in (sample, t)."""
    return (0.3 * sample + 0.1 * base + 0.001 * t).astype(np.float32)


def run_case(name: str, cls, config: dict, steps: int) -> dict:
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(1234)
    base = rng.standard_normal(N_VALUES).astype(np.float32)
    step_noise = rng.standard_normal((steps, N_VALUES)).astype(np.float32)
    sample = (base * float(sched.init_noise_sigma)).astype(np.float32)
    out = {
        "name": name,
        "class": cls.__name__,
        "config": config,
        "steps": steps,
        "timesteps": [float(t) for t in sched.timesteps],
        "init_noise_sigma": float(sched.init_noise_sigma),
        "base": base.tolist(),
        "step_noise": step_noise.tolist(),
        "per_step": [],
    }
    if hasattr(sched, "sigmas") and cls in (EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        out["sigmas"] = [float(s) for s in sched.sigmas]
    for i, t in enumerate(sched.timesteps):
        x = torch.from_numpy(sample.copy())
        scaled = sched.scale_model_input(x, t)
        eps = model_fn(scaled.numpy(), float(t), base)
        if cls is LCMScheduler:
            noise = torch.from_numpy(step_noise[i].copy())
            orig = scheduling_lcm.randn_tensor
            scheduling_lcm.randn_tensor = lambda *a, **k: noise
            try:
                res = sched.step(torch.from_numpy(eps), t, x)
            finally:
                scheduling_lcm.randn_tensor = orig
        else:
            res = sched.step(torch.from_numpy(eps), t, x)
        prev = res.prev_sample.numpy().astype(np.float32)
        entry = {"t": float(t), "scaled": scaled.numpy().tolist(), "prev_sample": prev.tolist()}
        if cls is LCMScheduler:
            entry["denoised"] = res.denoised.numpy().tolist()
        out["per_step"].append(entry)
        sample = prev
    return out


def scheduler_goldens() -> dict:
    cases = [
        run_case("euler_sd15_leading_20", EulerDiscreteScheduler, SD15, 20),
        run_case("euler_sd15_leading_7", EulerDiscreteScheduler, SD15, 7),
        run_case("euler_trailing_8", EulerDiscreteScheduler, {**SD15, "timestep_spacing": "trailing", "steps_offset": 0}, 8),
        run_case("euler_linspace_10", EulerDiscreteScheduler, {**SD15, "timestep_spacing": "linspace"}, 10),
        run_case("euler_vpred_linear_10", EulerDiscreteScheduler,
                 {**SD15, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "v_prediction"}, 10),
        run_case("euler_karras_12", EulerDiscreteScheduler, {**SD15, "use_karras_sigmas": True}, 12),
        run_case("euler_sigma_min_final_5", EulerDiscreteScheduler, {**SD15, "final_sigmas_type": "sigma_min"}, 5),
        run_case("ddim_sd15_leading_20", DDIMScheduler, SD15, 20),
        run_case("ddim_trailing_vpred_zero_snr_10", DDIMScheduler,
                 {**SD15, "timestep_spacing": "trailing", "steps_offset": 0, "prediction_type": "v_prediction",
                  "rescale_betas_zero_snr": True}, 10),
        run_case("ddim_linspace_cos_defaults_6", DDIMScheduler,
                 {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"}, 6),
        # defaults: clip_sample=True, set_alpha_to_one=True (what from_config gives an Euler-style json)
        run_case("ddim_defaults_from_euler_json_8", DDIMScheduler,
                 {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}, 8),
        run_case("dpmpp2m_sd15_leading_20", DPMSolverMultistepScheduler, SD15, 20),
        run_case("dpmpp2m_linspace_defaults_10", DPMSolverMultistepScheduler,
                 {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}, 10),
        run_case("dpmpp2m_trailing_vpred_8", DPMSolverMultistepScheduler,
                 {**SD15, "timestep_spacing": "trailing", "steps_offset": 0, "prediction_type": "v_prediction"}, 8),
        run_case("dpmpp2m_karras_12", DPMSolverMultistepScheduler, {**SD15, "use_karras_sigmas": True}, 12),
        run_case("dpmpp2m_heun_linear_9", DPMSolverMultistepScheduler,
                 {**SD15, "solver_type": "heun", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 9),
        run_case("dpmpp2m_sigma_min_final_6", DPMSolverMultistepScheduler, {**SD15, "final_sigmas_type": "sigma_min"}, 6),
        run_case("dpmpp2m_sigma_min_second_order_final_16", DPMSolverMultistepScheduler,
                 {**SD15, "final_sigmas_type": "sigma_min"}, 16),
        run_case("dpmpp2m_euler_at_final_cos_7", DPMSolverMultistepScheduler,
                 {"beta_schedule": "squaredcos_cap_v2", "euler_at_final": True, "final_sigmas_type": "sigma_min"}, 7),
        run_case("lcm_4", LCMScheduler, {**SD15, "original_inference_steps": 50, "set_alpha_to_one": True}, 4),
        run_case("lcm_8_trailing_ignored", LCMScheduler, {**SD15, "timestep_spacing": "trailing"}, 8),
    ]
    import diffusers

    return {"generator": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
            "model_fn": "out = 0.3 * scaled_input + 0.1 * base + 0.001 * t",
            "cases": cases,
            "rewrite_cases": rewrite_cases()}


# An SD 1.5-style Euler scheduler.json that predates the "outdated config" fix-ups: steps_offset 0
# and no clip_sample (DDIM's default is True). The pipelines rewrite it before building a scheduler.
OLD_EULER_JSON = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 0,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def rewrite_cases() -> list:
    """md_export.pipeline.schedulers with the loop's rewrite (steps_offset=1, clip_sample=False) for
    the guided/unguided modes, and without it (guidance "embedded"), on OLD_EULER_JSON."""
    from md_export.pipeline.schedulers import make_scheduler

    out = []
    for name, guidance, steps in (("ddim", "cfg-batch2", 10), ("ddim", "embedded", 10), ("euler", "none", 8),
                                  ("dpmpp-2m", "cfg-batch2", 9)):
        fixups = {} if guidance == "embedded" else {"steps_offset": 1, "clip_sample": False}
        sched = make_scheduler(name, OLD_EULER_JSON, **fixups)
        sched.set_timesteps(steps)
        rng = np.random.default_rng(99)
        base = (rng.standard_normal(N_VALUES) * 3).astype(np.float32)  # large enough that DDIM's clipping shows
        sample = (base * np.float32(sched.init_noise_sigma)).astype(np.float32)
        per_step = []
        for t in sched.timesteps:
            scaled = sched.scale_model_input(sample, t)
            eps = model_fn(np.asarray(scaled), float(t), base)
            sample = sched.step(eps, t, sample)
            per_step.append(np.asarray(sample, dtype=np.float32).tolist())
        out.append({"scheduler": name, "guidance": guidance, "steps": steps, "config": OLD_EULER_JSON,
                    "timesteps": [float(t) for t in sched.timesteps], "base": base.tolist(),
                    "prev_samples": per_step})
    return out


# --- the app's Gaussian RNG (SplitMix64 + Box-Muller), reference implementation --

MASK = (1 << 64) - 1


class SplitMixGaussian:
    def __init__(self, seed: int):
        self.state = seed & MASK
        self.spare = None

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_double(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def next_gaussian(self) -> float:
        if self.spare is not None:
            v, self.spare = self.spare, None
            return v
        u1 = 1.0 - self.next_double()  # (0, 1]
        u2 = self.next_double()
        r = math.sqrt(-2.0 * math.log(u1))
        self.spare = r * math.sin(2.0 * math.pi * u2)
        return r * math.cos(2.0 * math.pi * u2)


def torch_rng_goldens() -> list:
    """torch.randn with torch.Generator("cpu").manual_seed(seed): two draws in a row from one
    generator (LCM draws step noise after the initial latents), small and large counts."""
    out = []
    for seed, shapes in ((0, [[1, 4, 8, 8], [1, 4, 8, 8]]), (42, [[1, 4, 64, 64], [1, 4, 64, 64]]),
                         (1234, [[3, 7], [5], [2, 3], [40]]), (2**32 + 5, [[2, 16], [1]]),
                         (-1 & (2**63 - 1), [[17], [16]]), (7, [[1], [1], [15], [33]])):
        g = torch.Generator("cpu").manual_seed(seed)
        draws = []
        for shape in shapes:
            v = torch.randn(shape, generator=g, dtype=torch.float32).flatten()
            n = v.numel()
            d = {"shape": shape, "count": n, "sum": float(v.double().sum())}
            if n <= 64:
                d["values"] = v.tolist()
            else:
                d["head"], d["tail"] = v[:32].tolist(), v[-32:].tolist()
                d["index"] = [n // 3, n // 2 + 7]
                d["at_index"] = [float(v[k]) for k in d["index"]]
            draws.append(d)
        out.append({"seed": seed, "draws": draws})
    return out


def rng_goldens() -> dict:
    cases = []
    for seed in (0, 42, 2**63 - 1, -1):
        g = SplitMixGaussian(seed)
        cases.append({"seed": seed, "u64_first": [str(SplitMixGaussian(seed).next_u64())],
                      "gaussians": [float(np.float32(g.next_gaussian())) for _ in range(9)]})
    return {"algorithm": "SplitMix64 -> 53-bit uniform -> Box-Muller (cos first, then sin)", "cases": cases,
            "torch_source": f"torch {torch.__version__} CPU: torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed))",
            "torch_cases": torch_rng_goldens()}


# --- whole pipeline runs (md_export.pipeline.loop.generate) ----------------------

HIDDEN = 8
LATENT = (1, 4, 8, 8)
IMAGE_HW = (16, 16)


def fake_models(record: dict) -> dict:
    """Tiny deterministic models; PipelineTest.kt implements the same formulas in float32."""
    f = np.float32

    def text_encoder(feeds):
        ids = feeds["input_ids"].astype(np.float32)  # [1, 77]
        k = np.arange(HIDDEN, dtype=np.float32)
        h = np.sin(ids[0][:, None] * f(0.001) + k[None, :] * f(0.1)).astype(np.float32)
        return {"last_hidden_state": h[None]}

    def unet(feeds):
        x, t, ehs = feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"]
        # per row: mean of its hidden states (differs between prompts), and the timestep
        m = ehs.reshape(ehs.shape[0], -1).astype(np.float64).mean(axis=1).astype(np.float32)
        out = f(0.4) * x + (m * f(0.5) + t * f(0.0002))[:, None, None, None]
        if "timestep_cond" in feeds:
            c = feeds["timestep_cond"]
            out = out + (f(0.05) * c[:, :4].astype(np.float64).sum(axis=1).astype(np.float32))[:, None, None, None]
        record.setdefault("timesteps", []).append(float(t[0]))
        return {"noise_pred": out.astype(np.float32)}

    def vae_decoder(feeds):
        lat = feeds["latent"]
        record["latent"] = lat.copy()
        up = np.repeat(np.repeat(lat, 2, axis=2), 2, axis=3)  # [1, 4, 16, 16]
        img = np.tanh(up[:, :3] * f(0.5) + up[:, 3:4] * f(0.25)).astype(np.float32)
        return {"image": img}

    return {"text_encoder": text_encoder, "unet": unet, "vae_decoder": vae_decoder}


PIPELINE_CASES = [
    # (name, guidance, scheduler, steps, guidance scale, seed, decoder_applies_scaling, scheduler.json)
    ("euler_cfg", "cfg-batch2", "euler", 6, 7.5, 42, True, SD15),
    ("ddim_cfg_rewritten", "cfg-batch2", "ddim", 5, 4.0, 3, False, OLD_EULER_JSON),
    ("dpmpp2m_none", "none", "dpmpp-2m", 7, 1.0, 123456789, True, OLD_EULER_JSON),
    ("lcm_embedded", "embedded", "lcm", 4, 8.0, 7, True, {**SD15, "original_inference_steps": 50}),
]


def pipeline_goldens() -> dict:
    from md_export.pipeline.loop import generate, guidance_embedding
    from md_export.pipeline.tokenizer import ClipTokenizer

    tok = ClipTokenizer.from_folder(TOKENIZER_DIR)
    cases = []
    for name, guidance, scheduler, steps, scale, seed, dec_scaling, cfg in PIPELINE_CASES:
        pipeline = {"image_height": IMAGE_HW[0], "image_width": IMAGE_HW[1], "latent_channels": LATENT[1],
                    "latent_height": LATENT[2], "latent_width": LATENT[3], "vae_scaling_factor": 0.18215,
                    "vae_shift_factor": 0.1, "decoder_applies_scaling": dec_scaling, "guidance": guidance,
                    "unet_batch": 2 if guidance == "cfg-batch2" else 1, "default_guidance_scale": scale,
                    "default_steps": steps, "scheduler": scheduler, "text_max_length": 77, "text_hidden_size": HIDDEN}
        if guidance == "embedded":
            pipeline["timestep_cond_dim"] = 32
        record: dict = {}
        image = generate(fake_models(record), pipeline, tok, cfg, "a red fox in the snow",
                         negative_prompt="blurry", steps=steps, guidance_scale=scale, seed=seed)
        case = {"name": name, "pipeline": pipeline, "scheduler_config": cfg, "prompt": "a red fox in the snow",
                "negative_prompt": "blurry", "steps": steps, "guidance_scale": scale, "seed": seed,
                "timesteps": record["timesteps"], "decoder_input": record["latent"].flatten().tolist(),
                "image": image.flatten().tolist()}
        if guidance == "embedded":
            case["timestep_cond"] = guidance_embedding(scale, 32)[0].tolist()
        cases.append(case)
    return {"generator": "md_export.pipeline.loop.generate with numpy fake models (make_goldens.py fake_models)",
            "cases": cases}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in (("tokenizer", tokenizer_goldens()), ("schedulers", scheduler_goldens()), ("rng", rng_goldens()),
                       ("pipeline", pipeline_goldens())):
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
