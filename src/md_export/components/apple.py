"""The IO conventions of Apple's ml-stable-diffusion Swift package (`--layout apple`).

Apple's `StableDiffusionPipeline` feeds its Core ML models differently from md-export's own
contract (docs/bundle-format.md); the facts, with the Swift line each comes from, are in
md_export/bundle/apple_spec.json. Here:

- wrappers around md-export's contract wrappers that take the package's inputs: token ids as
  float32, hidden states as (B, D, 1, 77), a decoder fed latents the package already divided by
  the scaling factor, an encoder returning mean and log-variance;
- `apple_plan`: an export plan whose components have those names, shapes and dtypes;
- `to_apple` / `from_apple`: numpy adapters between the contract's feeds and outputs and the
  package's, doing what the package's Swift code does around each model (float ids, the
  hidden-state transpose, fp16 inputs, the 1/scaling_factor before decoding, the posterior mean
  after encoding). The check drives an Apple bundle through them, so its reference stays the
  contract's fp32 torch modules.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from md_export.components.plan import ComponentPlan, ExportPlan
from md_export.core.spec import TensorSpec

# the package's resource name (without extension) of each md-export component
APPLE_NAMES = {"text_encoder": "TextEncoder", "unet": "Unet", "vae_decoder": "VAEDecoder", "vae_encoder": "VAEEncoder"}
# input and output names as Apple's converter (python_coreml_stable_diffusion/torch2coreml.py) writes them
APPLE_IO = {
    "text_encoder": (("input_ids",), "last_hidden_state"),
    "unet": (("sample", "timestep", "encoder_hidden_states"), "noise_pred"),
    "vae_decoder": (("z",), "image"),
    "vae_encoder": (("x",), "latent"),
}


class AppleTextEncoder(nn.Module):
    """input_ids as float32 (TextEncoder.swift feeds Float32 ids) -> last_hidden_state."""

    def __init__(self, contract: nn.Module):
        super().__init__()
        self.contract = contract

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.contract(input_ids.to(torch.int32))


class AppleUNet(nn.Module):
    """encoder_hidden_states as (B, D, 1, S), the package's toHiddenStates layout."""

    def __init__(self, contract: nn.Module):
        super().__init__()
        self.contract = contract

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.contract(sample, timestep, encoder_hidden_states.squeeze(2).transpose(1, 2))


class AppleVAEDecoder(nn.Module):
    """z = latent / scaling_factor (the package divides before decoding) -> image in [-1, 1]."""

    def __init__(self, contract: nn.Module):
        super().__init__()
        self.decoder = contract.decoder
        self.post_quant_conv = contract.post_quant_conv

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class AppleVAEEncoder(nn.Module):
    """image in [-1, 1] -> mean and log-variance [1, 2C, h, w] (the package samples and scales)."""

    def __init__(self, contract: nn.Module):
        super().__init__()
        self.encoder = contract.encoder
        self.quant_conv = contract.quant_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h


WRAPPERS = {"text_encoder": AppleTextEncoder, "unet": AppleUNet, "vae_decoder": AppleVAEDecoder, "vae_encoder": AppleVAEEncoder}


@dataclass
class AppleComponentPlan(ComponentPlan):
    """A component in the package's IO; `contract` is md-export's own plan of the same model."""

    contract: ComponentPlan | None = field(default=None, repr=False)
    pipeline: dict = field(default_factory=dict, repr=False)  # scaling facts the adapters need

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """The contract's example inputs as the package would feed them (float32 for capture:
        the fp16 input dtypes are declared to the converter, not to torch)."""
        feeds = {s.name: t.numpy() for s, t in zip(self.contract.inputs, self.contract.example_inputs(seed))}
        apple = to_apple(self.name, feeds, self.pipeline)
        return tuple(torch.from_numpy(np.ascontiguousarray(apple[s.name], dtype=np.float32)) for s in self.inputs)

    def from_contract(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_apple(self.name, feeds, self.pipeline)


def apple_specs(name: str, contract: ComponentPlan, io_dtype: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of one component in the package's names, shapes and dtypes. `io_dtype`
    is float16 for an fp16 model (Apple's converter's inputs) and float32 for an fp32 one."""
    ins, outs = {s.name: s for s in contract.inputs}, contract.outputs[0]
    if name == "text_encoder":
        return [TensorSpec("input_ids", ins["input_ids"].shape, "float32", "BS")], [outs]
    if name == "unet":
        B, S, D = ins["encoder_hidden_states"].shape
        return ([TensorSpec("sample", ins["sample"].shape, io_dtype, "NCHW"),
                 TensorSpec("timestep", ins["timestep"].shape, io_dtype, "B"),
                 TensorSpec("encoder_hidden_states", (B, D, 1, S), io_dtype, "BC1S")],
                [TensorSpec("noise_pred", outs.shape, "float32", "NCHW")])
    if name == "vae_decoder":
        return [TensorSpec("z", ins["latent"].shape, io_dtype, "NCHW")], [TensorSpec("image", outs.shape, "float32", "NCHW")]
    if name == "vae_encoder":
        n, c, h, w = outs.shape
        return [TensorSpec("x", ins["image"].shape, io_dtype, "NCHW")], [TensorSpec("latent", (n, 2 * c, h, w), "float32", "NCHW")]
    raise KeyError(f"no Apple layout for component '{name}'")


def apple_plan(plan: ExportPlan, precisions: dict[str, str], pipeline: dict) -> ExportPlan:
    """The plan with every component in the package's IO, wrapping the contract's modules (no
    weights are copied). `precisions`: component -> fp16 | fp32 (the input dtypes follow);
    `pipeline`: the contract's pipeline facts (vae_scaling_factor, vae_shift_factor)."""
    out = copy.copy(plan)
    comps = {}
    for name, c in plan.components.items():
        ins, outs = apple_specs(name, c, "float16" if precisions.get(name, "fp16") == "fp16" else "float32")
        module = WRAPPERS[name](c.module).eval() if c.module is not None else None
        comps[name] = AppleComponentPlan(name, ins, outs, module, contract=c, pipeline=dict(pipeline))
    out.components = comps
    return out


# -- adapters: what the package's Swift code does around each model ---------------------------------


def _scale(pipeline: dict) -> tuple[np.float32, np.float32]:
    return np.float32(pipeline.get("vae_scaling_factor", 0.18215)), np.float32(pipeline.get("vae_shift_factor", 0.0) or 0.0)


def to_apple(name: str, feeds: dict[str, np.ndarray], pipeline: dict, io_dtype=np.float16) -> dict[str, np.ndarray]:
    """Contract feeds -> the package's feeds for one model. `latent` is the latent as the scheduler
    produced it: the decoder's `z` is latent / scaling_factor + shift (Decoder.swift)."""
    if name == "text_encoder":
        return {"input_ids": np.asarray(feeds["input_ids"]).astype(np.float32)}
    if name == "unet":
        ehs = np.asarray(feeds["encoder_hidden_states"], dtype=np.float32)
        return {"sample": np.asarray(feeds["sample"]).astype(io_dtype),
                "timestep": np.asarray(feeds["timestep"]).astype(io_dtype),
                "encoder_hidden_states": np.ascontiguousarray(ehs.transpose(0, 2, 1)[:, :, None, :]).astype(io_dtype)}
    if name == "vae_decoder":
        scale, shift = _scale(pipeline)
        z = np.asarray(feeds["latent"], dtype=np.float32) / scale + shift
        return {"z": z.astype(io_dtype)}
    if name == "vae_encoder":
        return {"x": np.asarray(feeds["image"]).astype(io_dtype)}
    raise KeyError(f"no Apple layout for component '{name}'")


def from_apple(name: str, outputs: dict[str, np.ndarray], pipeline: dict) -> dict[str, np.ndarray]:
    """The package's outputs -> the contract's. The UNet, decoder and encoder are read by their
    only output (the package takes `featureNames.first`); the encoder's posterior mean is scaled
    as the package scales its sample (Encoder.swift), the log-variance half is dropped."""
    if name == "text_encoder":
        return {"last_hidden_state": np.asarray(outputs["last_hidden_state"], dtype=np.float32)}
    (value,) = outputs.values()
    value = np.asarray(value, dtype=np.float32)
    if name == "unet":
        return {"noise_pred": value}
    if name == "vae_decoder":
        return {"image": value}
    if name == "vae_encoder":
        scale, shift = _scale(pipeline)
        c = value.shape[1] // 2
        return {"latent": (value[:, :c] - shift) * scale}
    raise KeyError(f"no Apple layout for component '{name}'")
