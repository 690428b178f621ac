"""A bundle in Apple's layout (`--layout apple`) run as the Swift package runs it, behind runners
that speak md-export's contract (names, dtypes, the decoder applying the scaling), so the checks
and the denoising loop (md_export.pipeline.loop.generate) drive it unchanged.

Each adapter does what the package's Swift code does around its model: float32 token ids
(TextEncoder.swift), hidden states transposed to (B, D, 1, 77) (StableDiffusionPipeline.swift
toHiddenStates), fp16 UNet inputs, a batch-1 UNet called twice under guidance, the conditional
and unconditional halves apart (StableDiffusionPipeline.swift), latents divided by the scaling
factor before the decoder (Decoder.swift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from md_export.components.apple import from_apple, to_apple
from md_export.runtime.open import Runner, open_model


def _dtype(entry: dict, name: str):
    for spec in entry.get("inputs", ()):
        if spec["name"] == name:
            return np.float16 if spec["dtype"] == "float16" else np.float32
    return np.float32


def adapt(name: str, runner: Runner, entry: dict, pipeline: dict) -> Runner:
    """A contract runner for one model of an Apple bundle (`entry`: its manifest entry)."""
    io_dtype = _dtype(entry, "sample" if name == "unet" else "z" if name == "vae_decoder" else "x")
    model_batch = entry["inputs"][0]["shape"][0] if name == "unet" else 1

    def run_once(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return from_apple(name, runner(to_apple(name, feeds, pipeline, io_dtype)), pipeline)

    if name != "unet":
        return run_once

    def run_unet(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = int(np.asarray(feeds["sample"]).shape[0])
        if batch == model_batch:
            return run_once(feeds)
        if model_batch != 1:
            raise ValueError(f"the UNet of this bundle takes batch {model_batch}, fed {batch}")
        # the package's serial path: one call per row (unconditional, then conditional)
        rows = [run_once({k: np.asarray(v)[i:i + 1] for k, v in feeds.items()})["noise_pred"] for i in range(batch)]
        return {"noise_pred": np.concatenate(rows, axis=0)}

    return run_unet


def contract_pipeline(pipeline: dict) -> dict:
    """The manifest's pipeline of an Apple bundle as the contract loop reads it through the
    adapters: the decoder adapter applies the scaling, the UNet adapter takes the guided batch."""
    out = dict(pipeline, decoder_applies_scaling=True)
    if out.get("guidance") == "cfg-batch2":
        out["unet_batch"] = 2
    return out


def model_openers(bundle: Path, manifest: dict, engine: str | None = None) -> dict:
    """{model name: a function that opens it as a contract runner}."""
    pipeline = manifest["pipeline"]
    return {name: (lambda n=name, e=entry: adapt(n, open_model(manifest["target"], bundle, e, engine), e, pipeline))
            for name, entry in manifest["models"].items()}

