"""Train md-export's bundled default model on the shapes-v1 vocabulary (src/md_export/shapes/).

The pipeline is made of the standard classes (diffusers AutoencoderKL, UNet2DConditionModel and
EulerDiscreteScheduler, transformers CLIPTextModel with the repository's CLIP tokenizer), so every
export path is the one a real Stable Diffusion checkpoint takes. Stages:

1. vae       AutoencoderKL on 64x64 crops of 128x128 images of 1-3 shapes (more edges per pixel than
             the captioned images), then on whole images (L1 + MSE + a small KL term); the latent
             scaling factor is set to 1/std of the latents; the judge's accuracy on reconstructions
             of captioned images is recorded.
2. cache     the VAE encodes a fixed set of captioned images once (posterior means).
3. diffusion CLIP text encoder + UNet trained together on the cached latents: epsilon prediction,
             DDPM noise with a small offset-noise term, min-SNR-5 loss weights, 10% of captions
             dropped to "" (classifier-free guidance), EMA weights.

Everything is seeded; data and noise for a step depend only on (seed, step), so a run resumed with
``--resume`` from its last checkpoint (written every ``--checkpoint-every`` steps into ``--work``)
continues the same run. The result is written in fp16 as a diffusers pipeline folder (``--out``,
default src/md_export/default_model/; the tokenizer files there are kept) with training_report.json.

Run it with the worktree's src on the path (PYTHONPATH=src) or an installed md-export:

    nice -n 10 python scripts/train_default_model.py --work /tmp/shapes_train > train.log 2>&1 &
    python scripts/train_default_model.py --work /tmp/shapes_train --resume      # after an interruption
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from md_export.families.tiny import SD_SCHEDULER_CONFIG, tiny_text_config, tiny_unet_config, tiny_vae_config
from md_export.shapes import VOCABULARY, VOCABULARY_FIELD
from md_export.shapes.dataset import (
    Attributes,
    ShapesDataset,
    evaluation_prompts,
    random_attributes,
    random_scene,
    render,
    sample_layout,
)
from md_export.shapes.judge import prompt_accuracy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "md_export" / "default_model"
TOKENIZER_DIR = DEFAULT_OUT / "tokenizer"

# the UNet keeps the old default widths; 2 attention heads instead of 8 (head width 16/32) train ~2x faster on CPU
UNET_OVERRIDES = {"block_out_channels": (32, 64), "attention_head_dim": 2}
TEXT_OVERRIDES: dict = {}
# wider low-resolution blocks: (16, 16, 32, 32) rendered small triangles as blobs
VAE_OVERRIDES = {"block_out_channels": (16, 32, 64, 64)}


def build_models(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**tiny_vae_config(**VAE_OVERRIDES))
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(**TEXT_OVERRIDES)))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**tiny_unet_config(**UNET_OVERRIDES))
    return vae, text_encoder, unet


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class Progress:
    """tqdm bar with the loss; plain log lines every `every` steps when stderr is not a terminal."""

    def __init__(self, total: int, initial: int, desc: str, every: int = 50):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.5 if tty else 60)
        self.tty, self.every, self.desc, self.t0, self.s0 = tty, every, desc, time.time(), initial

    def update(self, step: int, **stats):
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
        self.bar.update(1)
        if not self.tty and (step + 1) % self.every == 0:
            rate = (time.time() - self.t0) / max(1, step + 1 - self.s0)
            msg = " ".join(f"{k}={v:.4f}" for k, v in stats.items())
            print(f"[{self.desc}] step {step + 1}/{self.bar.total} {msg} ({rate:.2f} s/step)", flush=True)

    def close(self):
        self.bar.close()


# --------------------------------------------------------------------------------------------------
# state


class Run:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.pt"
        self.vae, self.text_encoder, self.unet = build_models(args.seed)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.opt_vae = torch.optim.AdamW(self.vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
        params = list(self.text_encoder.parameters()) + list(self.unet.parameters())
        self.opt_diff = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=True)
        self.s = {"stage": "vae", "step": 0, "elapsed": {}, "cpu": {}, "losses": {}, "history": [], "evals": []}

    VAE_KEYS = ("seed", "vae_steps_crop", "vae_steps_full", "vae_batch", "vae_lr", "kl_weight")
    DIFFUSION_KEYS = (
        "cache_size",
        "steps",
        "batch",
        "lr",
        "caption_dropout",
        "offset_noise",
        "min_snr",
        "ema",
        "fg_weight",
        "high_noise_fraction",
        "high_noise_from",
    )

    def config(self, keys=VAE_KEYS + DIFFUSION_KEYS) -> dict:
        return {k: getattr(self.args, k) for k in keys}

    def reuse_vae(self, path: Path):
        """Take the finished VAE stage (weights, scale, times, losses) of another run with the same VAE options."""
        blob = torch.load(path, weights_only=False)
        mine = self.config(self.VAE_KEYS)
        missing = [k for k in self.VAE_KEYS if k not in blob["config"]]
        if missing:  # states written before these options were recorded used their defaults
            print(f"--reuse-vae: {path} does not record {', '.join(missing)}; assuming this run's values", flush=True)
        theirs = {k: blob["config"].get(k, mine[k]) for k in self.VAE_KEYS}
        if theirs != mine or blob["run"]["stage"] == "vae":
            raise SystemExit(
                f"--reuse-vae {path}: VAE stage not finished there, or other VAE options (there, here): "
                f"{ {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]} }"
            )
        self.vae.load_state_dict(blob["vae"])
        self.vae.register_to_config(scaling_factor=blob["scaling_factor"])
        for key in ("elapsed", "cpu", "losses"):
            self.s[key]["vae"] = blob["run"][key]["vae"]
        for key in ("scaling_factor", "vae_reconstruction_accuracy"):
            self.s[key] = blob["run"].get(key)
        self.s["vae_reused_from"] = str(path)
        self.s["stage"], self.s["step"] = "cache", 0
        self.save()
        print(f"reused the VAE stage of {path}", flush=True)

    def save(self):
        blob = {
            "run": self.s,
            "config": self.config(),
            "vae": self.vae.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "opt_vae": self.opt_vae.state_dict(),
            "opt_diff": self.opt_diff.state_dict(),
            "scaling_factor": float(self.vae.config.scaling_factor),
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.state_path)

    def load(self):
        blob = torch.load(self.state_path, weights_only=False)
        if blob["config"] != self.config():
            diff = {k: (blob["config"].get(k), v) for k, v in self.config().items() if blob["config"].get(k) != v}
            raise SystemExit(f"--resume: {self.state_path} was written with other options (saved, now): {diff}")
        self.s = blob["run"]
        self.vae.load_state_dict(blob["vae"])
        self.vae.register_to_config(scaling_factor=blob["scaling_factor"])
        self.text_encoder.load_state_dict(blob["text_encoder"])
        self.unet.load_state_dict(blob["unet"])
        self.ema_text.load_state_dict(blob["ema_text"])
        self.ema_unet.load_state_dict(blob["ema_unet"])
        self.opt_vae.load_state_dict(blob["opt_vae"])
        self.opt_diff.load_state_dict(blob["opt_diff"])
        print(f"resumed {self.state_path}: stage {self.s['stage']} step {self.s['step']}", flush=True)

    def clock(self, stage: str, wall: float, cpu: float):
        self.s["elapsed"][stage] = self.s["elapsed"].get(stage, 0.0) + wall
        self.s["cpu"][stage] = self.s["cpu"].get(stage, 0.0) + cpu


# --------------------------------------------------------------------------------------------------
# stage 1: VAE


def train_vae(run: Run):
    a = run.args
    total = a.vae_steps_crop + a.vae_steps_full
    vae = run.vae.train()
    bar = Progress(total, run.s["step"], "vae")
    t0, c0 = time.time(), time.process_time()
    ema = None
    for step in range(run.s["step"], total):
        scenes = [random_scene(np.random.default_rng([a.seed, 100, step, k])) for k in range(a.vae_batch)]
        x = torch.from_numpy(np.stack(scenes).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
        if step < a.vae_steps_crop:  # random 64x64 crops: same edges, a quarter of the pixels
            rng = np.random.default_rng([a.seed, 7, step])
            ox, oy = rng.integers(0, 65, size=2)
            x = x[:, :, oy : oy + 64, ox : ox + 64].contiguous()
        for g in run.opt_vae.param_groups:
            g["lr"] = lr_at(step, total, a.vae_lr, 100)
        gen = torch.Generator().manual_seed(a.seed * 7919 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1, mse = (rec - x).abs().mean(), F.mse_loss(rec, x)
        kl = post.kl().mean()
        loss = l1 + mse + a.kl_weight * kl
        run.opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        run.opt_vae.step()
        ema = l1.item() if ema is None else 0.98 * ema + 0.02 * l1.item()
        run.s["step"] = step + 1
        run.s["losses"]["vae"] = {"l1": ema, "mse": mse.item(), "kl": kl.item()}
        bar.update(step, l1=ema, mse=mse.item(), kl=kl.item())
        if (step + 1) % a.checkpoint_every == 0 and step + 1 < total:
            run.clock("vae", time.time() - t0, time.process_time() - c0)
            t0, c0 = time.time(), time.process_time()
            run.save()
    bar.close()
    vae.eval()
    # the latent scale, as SD's 0.18215 was chosen: 1/std of posterior samples
    with torch.no_grad():
        images, _ = ShapesDataset(seed=a.seed + 300, unplaced="anywhere").batch(0, 256)
        z = vae.encode(torch.from_numpy(images)).latent_dist.sample(torch.Generator().manual_seed(a.seed))
        scale = float(f"{1.0 / z.std().item():.5f}")
        full_l1 = (vae.decode(z).sample - torch.from_numpy(images)).abs().mean().item()
    vae.register_to_config(scaling_factor=scale)
    run.s["losses"]["vae"]["heldout_l1_full_128"] = full_l1
    run.s["scaling_factor"] = scale
    run.s["vae_reconstruction_accuracy"] = recon = reconstruction_accuracy(vae, a.seed)
    print(
        f"[vae] scaling_factor {scale}, held-out L1 on 128x128 images {full_l1:.4f}, judge on reconstructions {recon}", flush=True
    )
    run.clock("vae", time.time() - t0, time.process_time() - c0)
    run.s["stage"], run.s["step"] = "cache", 0
    run.save()


def reconstruction_accuracy(vae, seed: int, n: int = 96) -> dict:
    """The judge's accuracy on VAE reconstructions of captioned images: any size, and small only."""
    out = {}
    for name, force_small in (("captioned", False), ("small_shapes", True)):
        rng = np.random.default_rng([seed, 400, int(force_small)])
        attrs = []
        for _ in range(n):
            at = random_attributes(rng)
            attrs.append(Attributes(at.shape, at.colour, at.background, "small", at.position) if force_small else at)
        imgs = (
            np.stack([render(at, sample_layout(at, rng, "anywhere")) for at in attrs]).astype(np.float32).transpose(0, 3, 1, 2)
            / 127.5
            - 1
        )
        with torch.no_grad():
            rec = torch.cat(
                [vae.decode(vae.encode(torch.from_numpy(imgs[i : i + 32])).latent_dist.mean).sample for i in range(0, n, 32)]
            )
        out[name] = prompt_accuracy(zip(attrs, [r[None] for r in rec.numpy()]))
    return out


# --------------------------------------------------------------------------------------------------
# stage 2: latent cache


def tokenize(captions: list[str]) -> torch.Tensor:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    return tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def foreground_mask(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Latent-resolution mask of the shape: latent pixels whose 8x8 patch (or a neighbour's) differs
    from the background (the corner pixel; shapes never touch the border). uint8 [B, 1, h, w]."""
    fg = ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.25).float()
    m = F.max_pool2d(F.max_pool2d(fg, factor), 3, stride=1, padding=1)
    return m.to(torch.uint8)


def build_cache(run: Run):
    a = run.args
    path = run.work / "latents.pt"
    if run.s["stage"] == "cache":
        t0, c0 = time.time(), time.process_time()
        data = ShapesDataset(seed=a.seed + 200, p_position=a.p_position)
        vae = run.vae.eval()
        chunk, latents, masks, captions = 64, [], [], []
        bar = Progress(a.cache_size // chunk, 0, "cache", every=20)
        with torch.no_grad():
            for k in range(a.cache_size // chunk):
                images, caps = data.batch(k * chunk, chunk)
                x = torch.from_numpy(images)
                latents.append(vae.encode(x).latent_dist.mean.to(torch.float16))
                masks.append(foreground_mask(x))
                captions += caps
                bar.update(k)
        bar.close()
        torch.save(
            {"latents": torch.cat(latents), "masks": torch.cat(masks), "captions": captions, "ids": tokenize(captions)}, path
        )
        run.clock("cache", time.time() - t0, time.process_time() - c0)
        run.s["stage"], run.s["step"] = "diffusion", 0
        run.save()
    return torch.load(path)


# --------------------------------------------------------------------------------------------------
# stage 3: text encoder + UNet


def ema_update(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def pipeline_of(vae, text_encoder, unet):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def quick_eval(run: Run, n_prompts: int, steps: int = 20) -> float:
    from md_export.shapes.evaluate import evaluate, pipeline_generate_fn

    a = run.args
    pipe = pipeline_of(run.vae, run.ema_text, run.ema_unet)
    pipe.set_progress_bar_config(disable=True)
    every = evaluation_prompts(positions=a.p_position > 0)  # k * 3 + k % 3: shapes cycle, every group covered
    prompts = [every[(k * 3 + k % 3) % len(every)] for k in range(n_prompts)]
    result = evaluate(pipeline_generate_fn(pipe, steps=steps), [p.prompt for p in prompts], [1000])
    return result.accuracy


def train_diffusion(run: Run, cache: dict):
    from diffusers import DDPMScheduler

    a = run.args
    noise_sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER_CONFIG.items() if k != "steps_offset"})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    latents_all = cache["latents"].float() * float(run.vae.config.scaling_factor)
    ids_all = cache["ids"]
    pixel_weight_all = 1.0 + a.fg_weight * cache["masks"].float()
    empty_ids = tokenize([""])
    n = latents_all.shape[0]
    te, unet = run.text_encoder.train(), run.unet.train()
    bar = Progress(a.steps, run.s["step"], "diffusion")
    t0, c0 = time.time(), time.process_time()
    ema_loss = run.s["losses"].get("diffusion", {}).get("ema_loss")
    for step in range(run.s["step"], a.steps):
        gen = torch.Generator().manual_seed(a.seed * 1000003 + step)
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        x0 = latents_all[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(a.batch, generator=gen) < a.caption_dropout
        ids[drop] = empty_ids[0]
        noise = torch.randn(x0.shape, generator=gen) + a.offset_noise * torch.randn((a.batch, x0.shape[1], 1, 1), generator=gen)
        # a share of the batch at high noise only, where the layout (position, size) is decided
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (a.batch,), generator=gen)
        high = torch.rand(a.batch, generator=gen) < a.high_noise_fraction
        t = torch.where(
            high, torch.randint(a.high_noise_from, noise_sched.config.num_train_timesteps, (a.batch,), generator=gen), t
        )
        xt = noise_sched.add_noise(x0, noise, t)
        for g in run.opt_diff.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, 200)
        context = te(ids).last_hidden_state
        pred = unet(xt, t, context).sample
        w = torch.clamp(snr[t], max=a.min_snr) / snr[t]  # min-SNR-gamma weights for epsilon prediction
        pw = pixel_weight_all[idx]  # the shape's latent pixels count (1 + fg_weight) times: the background is the easy part
        per = (pw * (pred - noise) ** 2).sum(dim=(1, 2, 3)) / (pw.sum(dim=(1, 2, 3)) * pred.shape[1])
        loss = (w * per).mean()
        run.opt_diff.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(te.parameters()) + list(unet.parameters()), 1.0)
        run.opt_diff.step()
        decay = min(a.ema, (1 + step) / (10 + step))
        ema_update(run.ema_unet, unet, decay)
        ema_update(run.ema_text, te, decay)
        mse = ((pred - noise) ** 2).mean().item()
        ema_loss = mse if ema_loss is None else 0.99 * ema_loss + 0.01 * mse
        run.s["step"] = step + 1
        run.s["losses"]["diffusion"] = {"ema_loss": ema_loss, "last_mse": mse, "last_weighted": loss.item()}
        bar.update(step, mse=ema_loss, lr=run.opt_diff.param_groups[0]["lr"])
        if (step + 1) % 500 == 0:
            run.s["history"].append({"step": step + 1, "mse": ema_loss})
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            acc = quick_eval(run, 8)
            run.s["evals"].append({"step": step + 1, "accuracy_8_prompts": acc})
            print(f"[diffusion] step {step + 1}: EMA model, 8 prompts x 1 seed, 20 Euler steps: accuracy {acc:.3f}", flush=True)
        if (step + 1) % a.checkpoint_every == 0 and step + 1 < a.steps:
            run.clock("diffusion", time.time() - t0, time.process_time() - c0)
            t0, c0 = time.time(), time.process_time()
            run.save()
    bar.close()
    run.clock("diffusion", time.time() - t0, time.process_time() - c0)
    run.s["stage"], run.s["step"] = "done", 0
    run.save()


# --------------------------------------------------------------------------------------------------
# output


SD_SCALING = 0.18215


def with_sd_scaling(vae, target: float = SD_SCALING):
    """The same autoencoder with SD's latent scaling factor: its latents are multiplied by
    k = scaling_factor / target (quant_conv's mean rows times k, its log-variance bias plus 2 ln k,
    post_quant_conv's weights over k), so latents * target equals the trained latents *
    scaling_factor and the UNet sees exactly what it was trained on. Apps that assume 0.18215, like
    the CLI of Apple's Swift package, then decode the default model correctly."""
    import math

    k = float(vae.config.scaling_factor) / target
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    c = qc.out_channels // 2
    with torch.no_grad():
        qc.weight[:c] *= k
        qc.bias[:c] *= k
        qc.bias[c:] += 2.0 * math.log(k)
        pqc.weight /= k
    vae.register_to_config(scaling_factor=target)
    return vae


def write_pipeline(run: Run, out: Path, command: str):
    from diffusers import EulerDiscreteScheduler

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "text_encoder", "vae", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
    # fp16 on disk keeps the package small; md-export and diffusers load it as fp32
    copy.deepcopy(run.ema_unet).to(torch.float16).save_pretrained(out / "unet")
    copy.deepcopy(run.ema_text).to(torch.float16).save_pretrained(out / "text_encoder")
    with_sd_scaling(copy.deepcopy(run.vae)).to(torch.float16).save_pretrained(out / "vae")
    EulerDiscreteScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    if (out / "tokenizer").resolve() != TOKENIZER_DIR.resolve():
        shutil.copytree(TOKENIZER_DIR, out / "tokenizer", dirs_exist_ok=True)
    (out / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_md_export_note": "tiny default model trained on the shapes-v1 vocabulary by scripts/train_default_model.py "
                f"(seed {run.args.seed}); see training_report.json",
                VOCABULARY_FIELD: VOCABULARY,
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
                "safety_checker": [None, None],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        )
        + "\n"
    )
    sizes = {sub: sum(f.stat().st_size for f in (out / sub).glob("*.safetensors")) for sub in ("unet", "text_encoder", "vae")}
    s = run.s
    report = {
        "vocabulary": VOCABULARY,
        "command": run.s.get("command", command),
        **({"written_by": command} if run.s.get("command", command) != command else {}),
        "seed": run.args.seed,
        "options": {k: _portable(v) if isinstance(v, Path) else v for k, v in vars(run.args).items()},
        "threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "wall_seconds": {k: round(v, 1) for k, v in s["elapsed"].items()} | {"total": round(sum(s["elapsed"].values()), 1)},
        "process_cpu_seconds": {k: round(v, 1) for k, v in s["cpu"].items()} | {"total": round(sum(s["cpu"].values()), 1)},
        "steps": {
            "vae_crop_64": run.args.vae_steps_crop,
            "vae_full_128": run.args.vae_steps_full,
            "vae_batch": run.args.vae_batch,
            "diffusion": run.args.steps,
            "diffusion_batch": run.args.batch,
            "cached_latents": run.args.cache_size,
        },
        "final_losses": s["losses"],
        "loss_history": s["history"],
        "evals_during_training": s["evals"],
        "vae_scaling_factor": SD_SCALING,
        "vae_scaling_factor_trained": float(run.vae.config.scaling_factor),  # folded into the VAE's weights (with_sd_scaling)
        "vae_reconstruction_accuracy": s.get("vae_reconstruction_accuracy"),
        "parameters": {"unet": n_params(run.unet), "text_encoder": n_params(run.text_encoder), "vae": n_params(run.vae)},
        "bytes_fp16_safetensors": sizes | {"total": sum(sizes.values())},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({sum(sizes.values()) / 1e6:.2f} MB of weights)", flush=True)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="pipeline folder to write (default: the bundled default model)")
    ap.add_argument("--work", type=Path, default=Path("train_work"), help="checkpoints and the latent cache")
    ap.add_argument("--resume", action="store_true", help="continue from --work/state.pt")
    ap.add_argument(
        "--reuse-vae", type=Path, help="start from the finished VAE stage of another run's state.pt (same VAE options)"
    )
    ap.add_argument("--stop-after", choices=("vae", "cache"), help="stop after a stage (continue later with --resume)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps-crop", type=int, default=2000)
    ap.add_argument("--vae-steps-full", type=int, default=200)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--cache-size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=7000, help="diffusion steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--p-position", type=float, default=0.0,
                    help="share of captions with a position word (0: the default model's vocabulary has none)")
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--offset-noise", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--fg-weight", type=float, default=3.0, help="extra loss weight of the shape's latent pixels")
    ap.add_argument("--high-noise-fraction", type=float, default=0.5, help="share of samples drawn at t >= --high-noise-from")
    ap.add_argument("--high-noise-from", type=int, default=600)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=1750, help="quick accuracy check of the EMA model (0: never)")
    ap.add_argument("--eval-seeds", type=int, nargs="*", default=[0, 1], help="seeds of the final evaluation (none: skip it)")
    ap.add_argument("--eval-grid", type=Path, help="write the final evaluation's image grid here (PNG)")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate the pipeline in --out (after training)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.eval_only:
        final_eval(args.out, args.eval_seeds or [0, 1], args.eval_grid)
        return
    command = "python " + " ".join(
        [str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0]] + sys.argv[1:]
    )
    run = Run(args)
    if args.resume and run.state_path.exists():
        run.load()
    elif run.state_path.exists():
        raise SystemExit(f"{run.state_path} exists: pass --resume to continue it, or use another --work")
    elif args.reuse_vae:
        run.reuse_vae(args.reuse_vae)
    if "command" not in run.s:  # the command that trained the weights (a state from before this was recorded: its report's)
        old = args.out / "training_report.json"
        run.s["command"] = json.loads(old.read_text()).get("command", command) if args.resume and old.is_file() else command
    print(
        f"parameters: unet {n_params(run.unet):,}, text encoder {n_params(run.text_encoder):,}, vae {n_params(run.vae):,}; "
        f"threads {torch.get_num_threads()}",
        flush=True,
    )
    if run.s["stage"] == "vae":
        train_vae(run)
    if args.stop_after == "vae":
        return
    cache = build_cache(run)
    if args.stop_after == "cache":
        return
    if run.s["stage"] == "diffusion":
        train_diffusion(run, cache)
    write_pipeline(run, args.out, command)
    if args.eval_seeds:
        final_eval(args.out, args.eval_seeds, args.eval_grid)


def _portable(path: Path) -> str:
    """A path for the report that ships with the weights: relative to the repository when inside it,
    else only its name (no absolute path of the training machine goes into the package)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path) if not path.is_absolute() else f"<outside the repository>/{path.name}"


def final_eval(out: Path, seeds: list[int], grid: Path | None) -> dict:
    """The reference pipeline read from `out` (diffusers, fp32, CPU, 20 Euler steps, guidance 7.5) on
    the 24 evaluation prompts x `seeds`, judged; the result goes into training_report.json."""
    from md_export.shapes.evaluate import evaluate, reference_generate_fn

    t0, c0 = time.time(), time.process_time()
    result = evaluate(reference_generate_fn(out), evaluation_prompts(), seeds, grid_path=grid, labels=("", "diffusers fp32"))
    wrong = [f"{i.prompt!r} seed {i.seed}: {'; '.join(i.mismatches)}" for i in result.items if not i.correct]
    summary = {
        "what": "diffusers StableDiffusionPipeline from this folder, fp32, CPU, EulerDiscrete 20 steps, guidance 7.5, judged by "
        "md_export.shapes.judge",
        "prompts": len(evaluation_prompts()),
        "seeds": list(seeds),
        "accuracy": result.accuracy,
        "correct": sum(i.correct for i in result.items),
        "pairs": result.n,
        "wrong": wrong,
        "wall_seconds": round(time.time() - t0, 1),
        "process_cpu_seconds": round(time.process_time() - c0, 1),
        "threads": torch.get_num_threads(),
    }
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(out / "vae"), torch_dtype=torch.float32).eval()
    recon = reconstruction_accuracy(vae, 0)
    report_path = out / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if "vae_reconstruction_accuracy" in report and "vae_reconstruction_accuracy_at_training" not in report:
        report["vae_reconstruction_accuracy_at_training"] = report["vae_reconstruction_accuracy"]
    report["vae_reconstruction_accuracy"] = recon  # the saved fp16 VAE, judged by the current judge
    report["reference_prompt_accuracy"] = summary
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    for w in wrong:
        print(f"  wrong: {w}")
    print(
        f"[eval] prompt accuracy {result.accuracy:.3f} ({summary['correct']}/{result.n}) in {summary['wall_seconds']} s",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main()
