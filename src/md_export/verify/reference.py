"""The fp32 PyTorch reference a check compares against, loaded one component at a time and
computed once per `md-export check` run.

At full size the reference is the largest thing a check holds (SD 1.5: 4.1 GB of fp32 weights)
and its UNet calls are as slow as the artifact's. So a component's module is loaded when a
result of it is first needed, every other component is dropped first (for a pipeline of
`Checkpoint.is_large()`; small ones keep what they loaded), and each result is kept
by what determines it: the checkpoint, the plan's options, the component and the exact input
bytes (for the end-to-end image: the prompt, steps, seed, guidance and the bundle's scheduler
and tokenizer files). Two bundles of one checkpoint (`md-export check out/` over coreml/ and
tflite/) then share every reference result. A bundle cannot choose a result for itself: the key
is a digest of everything the result is computed from.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import ExportPlan, attach_modules
from md_export.verify.end_to_end import reference_image

_VAE_HALVES = ("vae_decoder", "vae_encoder")


class ReferenceCache:
    """Reference results of one check run, by digest. Small: model outputs and one image each."""

    def __init__(self):
        self._values: dict[str, np.ndarray] = {}
        self.hits = 0

    def get(self, key: str):
        value = self._values.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> np.ndarray:
        self._values[key] = value
        return value


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            p = np.ascontiguousarray(p)
            h.update(f"{p.dtype.str}{p.shape}".encode())
            h.update(memoryview(p).cast("B"))
        elif isinstance(p, bytes):
            h.update(len(p).to_bytes(8, "little") + p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _checkpoint_identity(ckpt: Checkpoint, options: dict) -> str:
    folders = [ckpt.unet_dir, ckpt.text_encoder_dir, ckpt.vae_dir, ckpt.tokenizer_dir, ckpt.scheduler_dir]
    return _digest(ckpt.kind, [str(Path(f).resolve()) if f else None for f in folders],
                   [[str(Path(p).resolve()), s] for p, s in ckpt.lora], ckpt.family_name,
                   {k: options.get(k) for k in ("height", "width", "unet_batch", "with_encoder")})


class Reference:
    """The reference components of one bundle's check, over a shared :class:`ReferenceCache`."""

    def __init__(self, plan: ExportPlan, ckpt: Checkpoint, options: dict, cache: ReferenceCache | None = None):
        self.plan, self.ckpt = plan, ckpt
        self.cache = cache if cache is not None else ReferenceCache()
        self._scope = _checkpoint_identity(ckpt, options)
        self._one_at_a_time = ckpt.is_large()  # small pipelines keep their modules (loading costs more than holding)

    def output(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Component `name`'s fp32 output for `feeds` (its inputs by name)."""
        comp = self.plan.components[name]
        arrays = [np.ascontiguousarray(feeds[s.name]) for s in comp.inputs]
        key = _digest("model", self._scope, name, *arrays)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        module = self._module(name)
        with torch.no_grad():
            out = module(*(torch.from_numpy(a) for a in arrays)).numpy()
        return self.cache.put(key, out)

    def image(self, manifest: dict, bundle: Path, prompt: str, steps: int, seed: int, guidance: float) -> np.ndarray:
        """The diffusers pipeline's image on the reference components (see verify.end_to_end)."""
        pipe_cfg = manifest["pipeline"]
        folder = (bundle / pipe_cfg["tokenizer"].get("vocab", "tokenizer/vocab.json")).parent
        files = [bundle / "scheduler.json", *sorted(p for p in folder.glob("*") if p.is_file())]
        key = _digest("image", self._scope, pipe_cfg, prompt, steps, seed, guidance,
                      *[p.name.encode() + b"=" + p.read_bytes() for p in files])
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        self.release(keep=("text_encoder", "unet"))
        missing = tuple(n for n in ("text_encoder", "unet") if self.plan.components[n].module is None)
        if missing:  # (attach_modules loads everything when given no names)
            attach_modules(self.plan, self.ckpt, only=missing)
        try:
            return self.cache.put(key, reference_image(self.plan, self.ckpt, manifest, bundle, prompt, steps, seed, guidance))
        finally:
            self.release()

    def release(self, keep: tuple[str, ...] = (), always: bool = False) -> None:
        """Drop every loaded reference module but those in `keep` (for a small pipeline only when
        `always`: the end of a bundle's check)."""
        if not (self._one_at_a_time or always):
            return
        dropped = False
        for name, comp in self.plan.components.items():
            if comp.module is not None and name not in keep:
                comp.module = None
                dropped = True
        if dropped:
            gc.collect()

    def _module(self, name: str):
        comp = self.plan.components[name]
        if comp.module is None:
            halves = _VAE_HALVES if name in _VAE_HALVES else (name,)
            self.release(keep=halves)
            attach_modules(self.plan, self.ckpt, only=(name,))
        return comp.module


__all__ = ["Reference", "ReferenceCache"]
