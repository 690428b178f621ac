"""Generate the golden files the Kotlin core tests compare against.

Run from the repository root with the project's venv:

    .venv/bin/python android_demo/core/tools/make_goldens.py

Writes android_demo/core/src/test/resources/goldens/{tokenizer,schedulers,rng}.json.
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
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler
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
    if hasattr(sched, "sigmas") and cls is EulerDiscreteScheduler:
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
        run_case("lcm_4", LCMScheduler, {**SD15, "original_inference_steps": 50, "set_alpha_to_one": True}, 4),
        run_case("lcm_8_trailing_ignored", LCMScheduler, {**SD15, "timestep_spacing": "trailing"}, 8),
    ]
    import diffusers

    return {"generator": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
            "model_fn": "out = 0.3 * scaled_input + 0.1 * base + 0.001 * t",
            "cases": cases}


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


def rng_goldens() -> dict:
    cases = []
    for seed in (0, 42, 2**63 - 1, -1):
        g = SplitMixGaussian(seed)
        cases.append({"seed": seed, "u64_first": [str(SplitMixGaussian(seed).next_u64())],
                      "gaussians": [float(np.float32(g.next_gaussian())) for _ in range(9)]})
    return {"algorithm": "SplitMix64 -> 53-bit uniform -> Box-Muller (cos first, then sin)", "cases": cases}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in (("tokenizer", tokenizer_goldens()), ("schedulers", scheduler_goldens()), ("rng", rng_goldens())):
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
