"""The export plan: static shapes of each component derived from the checkpoint's configs, example
inputs shaped like real ones, the pipeline facts the manifest records, and loading the wrapped
fp32 reference modules."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from md_export.checkpoint.folder import Checkpoint
from md_export.components.wrappers import TextEncoderWrapper, UNetWrapper, VAEDecoderWrapper, VAEEncoderWrapper
from md_export.core.errors import InputError
from md_export.core.io import read_json
from md_export.core.names import TEXT_LENGTH
from md_export.core.spec import TensorSpec


@dataclass
class ComponentPlan:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    module: nn.Module | None = field(default=None, repr=False)

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs shaped like real ones: token ids in the CLIP range, latents ~ N(0, 1),
        timesteps inside the training schedule."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            if spec.name == "input_ids":
                t = torch.randint(0, 49406, spec.shape, generator=g, dtype=torch.int64).to(torch.int32)
                t[:, 0] = 49406
            elif spec.name == "timestep":
                t = torch.randint(1, 1000, spec.shape, generator=g).to(torch.float32)
            elif spec.name == "image":
                t = torch.rand(spec.shape, generator=g) * 2 - 1
            else:
                t = torch.randn(spec.shape, generator=g)
            out.append(t.contiguous())
        return tuple(out)


@dataclass
class ExportPlan:
    """Static shapes and pipeline facts derived from the checkpoint's configs."""

    height: int
    width: int
    unet_batch: int
    latent_channels: int
    latent_height: int
    latent_width: int
    vae_factor: int
    text_hidden: int
    timestep_cond_dim: int | None
    with_encoder: bool
    components: dict[str, ComponentPlan]

    def pipeline_json(self, ckpt: Checkpoint, steps: int | None = None, scheduler: str | None = None) -> dict:
        vae = ckpt.vae_config
        if self.timestep_cond_dim:
            guidance = "embedded"
        else:
            guidance = "cfg-batch2" if self.unet_batch == 2 else "none"
        sched_class = ckpt.scheduler_config.get("_class_name", "")
        default_sched = scheduler or _scheduler_name(sched_class)
        return {
            "image_height": self.height,
            "image_width": self.width,
            "latent_channels": self.latent_channels,
            "latent_height": self.latent_height,
            "latent_width": self.latent_width,
            "vae_scaling_factor": float(vae.get("scaling_factor", 0.18215)),
            "vae_shift_factor": float(vae.get("shift_factor") or 0.0),
            "decoder_applies_scaling": True,
            "guidance": guidance,
            "unet_batch": self.unet_batch,
            "default_guidance_scale": {"cfg-batch2": 7.5, "none": 0.0, "embedded": 8.0}[guidance],
            "default_steps": steps or {"cfg-batch2": 20, "none": 4, "embedded": 4}[guidance],
            "scheduler": default_sched,
            "timestep_cond_dim": self.timestep_cond_dim,
            "text_max_length": TEXT_LENGTH,
            "text_hidden_size": self.text_hidden,
            "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", **_special_ids(ckpt)},
        }


def _scheduler_name(class_name: str) -> str:
    return {
        "DDIMScheduler": "ddim",
        "EulerDiscreteScheduler": "euler",
        "EulerAncestralDiscreteScheduler": "euler",
        "DPMSolverMultistepScheduler": "dpmpp-2m",
        "LCMScheduler": "lcm",
    }.get(class_name, "euler")


def _special_ids(ckpt: Checkpoint) -> dict[str, int]:
    """bos/eos/pad ids from the tokenizer's own files. SD 1.x pads with <|endoftext|>;
    SD 2.x tokenizers pad with "!" (id 0)."""
    vocab = read_json(ckpt.tokenizer_dir / "vocab.json")
    pad = "<|endoftext|>"
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = ckpt.tokenizer_dir / name
        if p.is_file():
            tok = read_json(p).get("pad_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if tok:
                pad = tok
                break
    ids = {"bos_token_id": "<|startoftext|>", "eos_token_id": "<|endoftext|>", "pad_token_id": pad}
    missing = [t for t in ids.values() if t not in vocab]
    if missing:
        raise InputError(f"{ckpt.tokenizer_dir / 'vocab.json'}: not a CLIP vocabulary (no {missing[0]!r})")
    return {k: int(vocab[t]) for k, t in ids.items()}


def unet_downsampling(unet_config: dict) -> int:
    """How many times the UNet halves its input: one per down block but the last."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def make_plan(
    ckpt: Checkpoint,
    *,
    height: int | None = None,
    width: int | None = None,
    unet_batch: int | None = None,
    with_encoder: bool = False,
) -> ExportPlan:
    unet, vae, text = ckpt.unet_config, ckpt.vae_config, ckpt.text_encoder_config
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    step = vae_factor * unet_downsampling(unet)
    sample = unet["sample_size"]
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    height = sample * vae_factor if height is None else height  # 0 is a bad size, not "the default"
    width = sample * vae_factor if width is None else width
    for what, v in (("height", height), ("width", width)):
        if v <= 0 or v % step:
            lo = max(step, v // step * step)
            raise InputError(
                f"--{what} {v}: this UNet takes sizes that are multiples of {step} "
                f"(VAE {vae_factor}x, UNet {step // vae_factor}x); try {lo} or {lo + step}"
            )
    tcond = unet.get("time_cond_proj_dim")
    if unet_batch is None:
        unet_batch = 1 if tcond else 2
    if unet_batch not in (1, 2):
        raise InputError(f"--unet-batch {unet_batch}: use 2 (classifier-free guidance in one call) or 1 (no guidance)")
    C, h, w = unet["in_channels"], height // vae_factor, width // vae_factor
    D = text["hidden_size"]
    if unet["cross_attention_dim"] != D:
        raise InputError(
            f"{ckpt.unet_dir / 'config.json'}: cross_attention_dim {unet['cross_attention_dim']} does not match "
            f"the text encoder's hidden_size {D} ({ckpt.text_encoder_dir / 'config.json'})"
        )
    B = unet_batch
    comps = {
        "text_encoder": ComponentPlan(
            "text_encoder",
            [TensorSpec("input_ids", (1, TEXT_LENGTH), "int32", "BS")],
            [TensorSpec("last_hidden_state", (1, TEXT_LENGTH, D), "float32", "BSD")],
        ),
        "unet": ComponentPlan(
            "unet",
            [
                TensorSpec("sample", (B, C, h, w), "float32", "NCHW"),
                TensorSpec("timestep", (B,), "float32", "B"),
                TensorSpec("encoder_hidden_states", (B, TEXT_LENGTH, D), "float32", "BSD"),
            ]
            + ([TensorSpec("timestep_cond", (B, tcond), "float32", "BT")] if tcond else []),
            [TensorSpec("noise_pred", (B, unet.get("out_channels", C), h, w), "float32", "NCHW")],
        ),
        "vae_decoder": ComponentPlan(
            "vae_decoder",
            [TensorSpec("latent", (1, vae["latent_channels"], h, w), "float32", "NCHW")],
            [TensorSpec("image", (1, vae.get("out_channels", 3), height, width), "float32", "NCHW")],
        ),
    }
    if with_encoder:
        comps["vae_encoder"] = ComponentPlan(
            "vae_encoder",
            [TensorSpec("image", (1, vae.get("in_channels", 3), height, width), "float32", "NCHW")],
            [TensorSpec("latent", (1, vae["latent_channels"], h, w), "float32", "NCHW")],
        )
    return ExportPlan(height, width, B, C, h, w, vae_factor, D, tcond, with_encoder, comps)


def attach_modules(plan: ExportPlan, ckpt: Checkpoint, only: tuple[str, ...] | None = None) -> None:
    """Load the fp32 reference modules and wrap them (what parity compares against)."""
    wanted = set(only or plan.components)
    if "text_encoder" in wanted:
        plan.components["text_encoder"].module = TextEncoderWrapper(ckpt.load_text_encoder()).eval()
    if "unet" in wanted:
        plan.components["unet"].module = UNetWrapper(ckpt.load_unet(), bool(plan.timestep_cond_dim)).eval()
    if wanted & {"vae_decoder", "vae_encoder"}:
        vae = ckpt.load_vae()
        if "vae_decoder" in wanted:
            plan.components["vae_decoder"].module = VAEDecoderWrapper(vae).eval()
        if "vae_encoder" in wanted and "vae_encoder" in plan.components:
            plan.components["vae_encoder"].module = VAEEncoderWrapper(vae).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
