"""Read a generated image back into shapes-v1 attributes, with rules, not a learned model.

1. Background: the median colour of a 4-pixel border (1/32 of the side), named by the nearest
   palette colour.
2. Shape mask: pixels farther than 100 (RGB, 0-255) from that median; the largest 4-connected
   component is the shape, components under 0.25% of the image are ignored, any others are
   "clutter" (a second shape).
3. Colour: the median of the mask's interior (the mask eroded by one pixel, to skip anti-aliased
   edges), nearest palette colour.
4. Class: the mask is compared with an ideal circle, square and upright triangle filling its
   bounding box, each sharp or with corners rounded as a soft renderer draws them (the outline
   blurred by a Gaussian of sigma 1 or 2 pixels and thresholded at one half); the class with the
   best intersection-over-union wins if it is at least 0.7, else the shape is unrecognised (None).
   The fill ratio of the bounding box (circle 0.79, square 1, triangle 0.5) is reported too.
5. Size: half the bounding box's larger side over the image side; small below 0.18, else large
   (the dataset draws small in [0.09, 0.14], large in [0.22, 0.27]).
6. Position: the bounding box's centre (dx, dy) from the image centre, in fractions of the side:
   centre when both are under 0.1, else left/right when |dx| >= |dy|, else top/bottom.

A (prompt, image) pair is correct when every attribute the prompt names matches and there is no
clutter over 25% of the shape's area.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from md_export.shapes.dataset import COLOURS, SHAPES, Attributes, parse_caption

BORDER_FRACTION = 1 / 32
MASK_DISTANCE = 100.0
MIN_COMPONENT_FRACTION = 0.0025
MIN_IOU = 0.7
SOFTNESS_PX = (0.0, 1.0, 2.0)  # corner rounding the shape templates allow (Gaussian sigma, pixels)
SMALL_BELOW = 0.18
CENTRE_WITHIN = 0.1
MAX_CLUTTER = 0.25

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    """What the judge sees in one image. Attributes are None when they cannot be read."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    area_fraction: float  # shape pixels / image pixels
    fill_ratio: float  # shape pixels / bounding-box pixels
    iou: dict[str, float] = field(default_factory=dict)  # against each ideal shape in the bounding box
    clutter: float = 0.0  # pixels of other components / shape pixels
    bbox: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (exclusive)

    def mismatches(self, want: Attributes) -> list[str]:
        """The attributes that differ from `want`, as 'name: want X, read Y' (empty when all match)."""
        out = []
        checks = [
            ("shape", want.shape, self.shape),
            ("colour", want.colour, self.colour),
            ("background", want.background, self.background),
        ]
        if want.size is not None:
            checks.append(("size", want.size, self.size))
        if want.position is not None:
            checks.append(("position", want.position, self.position))
        for name, w, r in checks:
            if w != r:
                out.append(f"{name}: want {w}, read {r}")
        if self.clutter > MAX_CLUTTER:
            out.append(f"clutter: {self.clutter:.2f} of the shape's area in other blobs")
        return out

    def matches(self, want: Attributes) -> bool:
        return not self.mismatches(want)


def to_hwc_uint8(image: np.ndarray) -> np.ndarray:
    """HWC uint8 as is; float [1,3,H,W] / [3,H,W] in [-1, 1] as diffusers would save it."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.dtype == np.uint8:
        raise ValueError(f"image: expected HWC uint8 with 3 channels, got shape {image.shape}")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"image: expected a batch of one, got shape {image.shape}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected [1,3,H,W] or [3,H,W] float in [-1, 1], got shape {image.shape}")
    return np.round(np.clip(image.astype(np.float32) / 2 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def nearest_colour(rgb: np.ndarray) -> str:
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32)[None, :], axis=1)
    return _PALETTE_NAMES[int(np.argmin(d))]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of flat indices, largest first."""
    h, w = mask.shape
    seen = np.zeros(mask.size, dtype=bool)
    flat = mask.ravel()
    comps = []
    for start in np.flatnonzero(flat):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([int(start)]), []
        while queue:
            p = queue.popleft()
            members.append(p)
            y, x = divmod(p, w)
            for q, ok in ((p - w, y > 0), (p + w, y < h - 1), (p - 1, x > 0), (p + 1, x < w - 1)):
                if ok and flat[q] and not seen[q]:
                    seen[q] = True
                    queue.append(q)
        comps.append(np.array(members))
    comps.sort(key=len, reverse=True)
    return comps


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edges padded with zeros, which the caller's canvas already has)."""
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        padded = np.pad(a, [(radius, radius) if ax == axis else (0, 0) for ax in (0, 1)])
        n = a.shape[axis]
        a = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return a


def _ideal(shape: str, xs: np.ndarray, ys: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    u, v = (xs + 0.5 - x0) / (x1 - x0), (ys + 0.5 - y0) / (y1 - y0)  # [0, 1] across the box
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return inside
    return inside & (np.abs(u - 0.5) <= v / 2)  # triangle: apex at the top, base at the bottom


def _templates(bw: int, bh: int, softness: float = 0.0) -> dict[str, np.ndarray]:
    """Ideal shapes whose bounding box is bw x bh (pixel centres sampled). With `softness` > 0
    (pixels), each outline is blurred by a Gaussian of that sigma and thresholded at one half (the
    same shape with rounded corners, as a soft renderer such as a small decoder draws it), drawn
    large enough that the rounded shape still spans the whole box."""
    if softness <= 0:
        ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
        return {k: _ideal(k, xs, ys, (0, 0, bw, bh)) for k in SHAPES}
    pad = int(np.ceil(3 * softness)) + 4
    ys, xs = np.mgrid[-pad : bh + pad, -pad : bw + pad].astype(np.float32)
    out = {}
    for k in SHAPES:
        box = (0.0, 0.0, float(bw), float(bh))
        for _ in range(2):  # the second pass widens the box by what rounding took off each side
            soft = _blur(_ideal(k, xs, ys, box).astype(np.float32), softness) >= 0.5
            rows, cols = np.flatnonzero(soft.any(axis=1)) - pad, np.flatnonzero(soft.any(axis=0)) - pad
            if not len(rows):
                break
            box = (box[0] - cols[0], box[1] - rows[0], box[2] + (bw - 1 - cols[-1]), box[3] + (bh - 1 - rows[-1]))
        out[k] = soft[pad : pad + bh, pad : pad + bw]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:, :] &= mask[:-1, :]
    m[:-1, :] &= mask[1:, :]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def read_image(image: np.ndarray) -> Reading:
    """Judge one image (HWC uint8, or float [1,3,H,W] / [3,H,W] in [-1, 1])."""
    img = to_hwc_uint8(image).astype(np.float32)
    h, w, _ = img.shape
    b = max(2, round(min(h, w) * BORDER_FRACTION))
    border = np.concatenate(
        [img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3), img[:, :b].reshape(-1, 3), img[:, -b:].reshape(-1, 3)]
    )
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)

    far = np.linalg.norm(img - bg_rgb[None, None, :], axis=2) > MASK_DISTANCE
    min_pixels = max(1, int(MIN_COMPONENT_FRACTION * h * w))
    comps = [c for c in _components(far) if len(c) >= min_pixels]
    if not comps:
        return Reading(background, None, None, None, None, 0.0, 0.0)
    main = comps[0]
    clutter = float(sum(len(c) for c in comps[1:]) / len(main))
    mask = np.zeros(h * w, dtype=bool)
    mask[main] = True
    mask = mask.reshape(h, w)

    interior = _erode(mask)
    pix = img[interior] if interior.sum() >= 4 else img[mask]
    colour = nearest_colour(np.median(pix, axis=0))

    ys, xs = np.divmod(main, w)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    bw, bh = x1 - x0, y1 - y0
    box = mask[y0:y1, x0:x1]
    ious = {}
    for softness in SOFTNESS_PX:
        for name, tpl in _templates(bw, bh, softness).items():
            inter = np.logical_and(box, tpl).sum()
            union = np.logical_or(box, tpl).sum()
            ious[name] = max(ious.get(name, 0.0), float(inter / union) if union else 0.0)
    best = max(ious, key=ious.get)
    shape = best if ious[best] >= MIN_IOU else None

    r = max(bw / w, bh / h) / 2
    size = "small" if r < SMALL_BELOW else "large"
    dx, dy = (x0 + x1) / 2 / w - 0.5, (y0 + y1) / 2 / h - 0.5
    if max(abs(dx), abs(dy)) < CENTRE_WITHIN:
        position = "centre"
    elif abs(dx) >= abs(dy):
        position = "left" if dx < 0 else "right"
    else:
        position = "top" if dy < 0 else "bottom"
    return Reading(
        background,
        colour,
        shape,
        size,
        position,
        float(len(main) / (h * w)),
        float(len(main) / (bw * bh)),
        ious,
        clutter,
        (x0, y0, x1, y1),
    )


def as_attributes(prompt: str | Attributes) -> Attributes:
    return prompt if isinstance(prompt, Attributes) else parse_caption(prompt)


def judge(prompt: str | Attributes, image: np.ndarray) -> bool:
    """Does `image` show what `prompt` asks for?"""
    return read_image(image).matches(as_attributes(prompt))


def prompt_accuracy(pairs: Iterable[tuple[str | Attributes, np.ndarray]]) -> float:
    """Share of (prompt, image) pairs whose every named attribute matches (0.0 for no pairs)."""
    results = [judge(p, img) for p, img in pairs]
    return float(sum(results) / len(results)) if results else 0.0


__all__ = ["Reading", "as_attributes", "judge", "nearest_colour", "prompt_accuracy", "read_image", "to_hwc_uint8"]
