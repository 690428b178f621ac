"""PNG helpers for images in the contract's layout (float32 NCHW in [-1, 1])."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from md_export.core.errors import InputError
from md_export.core.io import write_file


def _hwc_float01(image: np.ndarray) -> np.ndarray:
    """[1,3,H,W] / [3,H,W] float in [-1,1], or HWC uint8, -> HWC float in [0,1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        if image.ndim != 3:
            raise InputError(f"image: expected HWC uint8, got shape {image.shape}")
        return image.astype(np.float32) / 255.0
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InputError(f"image: expected a batch of one, got shape {image.shape}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise InputError(f"image: expected [1,C,H,W] or [C,H,W] with C in 1,3,4, got shape {image.shape}")
    return np.clip(image.astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float NCHW image in [-1, 1] -> HWC uint8 (as diffusers' postprocess + PIL conversion: clip, *255, round)."""
    return np.round(_hwc_float01(image) * 255).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a float NCHW image in [-1, 1] (or an HWC uint8 array) as PNG."""
    from PIL import Image

    arr = to_uint8(image)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    write_file(Path(path), buffer.getvalue())  # whole or not at all, never through a symlink


def side_by_side(ref: np.ndarray, art: np.ndarray, amplify: float = 8) -> np.ndarray:
    """HWC uint8: reference | artifact | |reference - artifact| * amplify (in [0,1] pixel units)."""
    a, b = _hwc_float01(ref), _hwc_float01(art)
    if a.shape != b.shape:
        raise InputError(f"side_by_side: shapes differ, {a.shape} vs {b.shape}")
    diff = np.clip(np.abs(a - b) * float(amplify), 0.0, 1.0)
    return np.round(np.concatenate([a, b, diff], axis=1) * 255).astype(np.uint8)


__all__ = ["save_png", "side_by_side", "to_uint8"]
