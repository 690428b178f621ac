"""A synthetic captioned image set: one flat-coloured shape on a flat background, drawn on the fly.

Vocabulary ("shapes-v1"):

- shape: circle, square, triangle (axis-aligned square, upright triangle);
- colour of the shape and of the background: red, green, blue, yellow, white, black (never the same);
- optional size: small, large;
- optional position: on the left, on the right, at the top, at the bottom, in the centre (drawn
  and judged, but the bundled default model is trained with ``p_position=0``: without them).

Captions are plain English in one template, the optional words in a fixed order::

    a red circle on a blue background
    a small yellow triangle on the left on a black background

Geometry (fractions of the image side): a shape is given by its bounding box's centre and its
half-extent r (circle radius, half the square's side, half the triangle's base and height). Small is
r in [0.09, 0.14], large r in [0.22, 0.27], unspecified r in [0.12, 0.25]. A position puts the
bounding-box centre at 0.25 or 0.75 along its axis (0.5 for the centre), jittered by up to 0.04 and
kept inside the image. With no position word the shape is in the centre (the same jitter), so
every caption says where its shape is (``unplaced="anywhere"`` places it anywhere inside instead;
a model trained that way learned position words far more slowly). The judge
(:mod:`md_export.shapes.judge`) reads these attributes back with the same thresholds.

Images are drawn 4x larger with PIL and box-filtered down (anti-aliased edges). Everything is
deterministic given ``seed``: :meth:`ShapesDataset.sample` of the same (seed, index) is the same
image and caption on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
POSITION_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
SIZE_RANGES = {"small": (0.09, 0.14), "large": (0.22, 0.27), None: (0.12, 0.25)}
POSITION_JITTER = 0.04
MARGIN = 0.03  # a shape stays this far inside the image
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Attributes:
    """What a caption asks for. ``size`` and ``position`` are None when the caption does not say."""

    shape: str
    colour: str
    background: str
    size: str | None = None
    position: str | None = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape '{self.shape}': use one of {', '.join(SHAPES)}")
        for field, value in (("colour", self.colour), ("background", self.background)):
            if value not in COLOURS:
                raise ValueError(f"{field} '{value}': use one of {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise ValueError(f"colour and background are both '{self.colour}'")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"size '{self.size}': use one of {', '.join(SIZES)} or None")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"position '{self.position}': use one of {', '.join(POSITIONS)} or None")

    @property
    def caption(self) -> str:
        words = ["a"]
        if self.size:
            words.append(self.size)
        words += [self.colour, self.shape]
        if self.position:
            words.append(POSITION_PHRASES[self.position])
        words += ["on a", self.background, "background"]
        return " ".join(words)


_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre", "center": "centre"}


def parse_caption(text: str) -> Attributes:
    """The attributes a caption in this vocabulary asks for (the inverse of :attr:`Attributes.caption`).

    Word order is free except that the background colour is the colour word just before
    "background"; raises ValueError when a caption names no shape or not two colours."""
    words = text.lower().replace(",", " ").replace(".", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    size = next((w for w in words if w in SIZES), None)
    position = next((_POSITION_WORDS[w] for w in words if w in _POSITION_WORDS), None)
    colours = [(i, w) for i, w in enumerate(words) if w in COLOURS]
    if shape is None or len(colours) < 2:
        raise ValueError(f"caption '{text}': expected a shape ({', '.join(SHAPES)}) and two colours")
    background = None
    if "background" in words:
        bg_at = words.index("background")
        before = [w for i, w in colours if i < bg_at]
        background = before[-1] if before else None
    if background is None:
        background = colours[-1][1]
    colour = next(w for _, w in colours if w != background)
    return Attributes(shape=shape, colour=colour, background=background, size=size, position=position)


@dataclass(frozen=True)
class Layout:
    """Where a shape is drawn: bounding-box centre (cx, cy) and half-extent r, fractions of the side."""

    cx: float
    cy: float
    r: float


UNPLACED = ("centre", "anywhere")


def sample_layout(attrs: Attributes, rng: np.random.Generator, unplaced: str = "centre") -> Layout:
    """Draw a layout for `attrs`; `unplaced` says where a shape with no position word goes."""
    if unplaced not in UNPLACED:
        raise ValueError(f"unplaced '{unplaced}': use one of {', '.join(UNPLACED)}")
    lo, hi = SIZE_RANGES[attrs.size]
    r = float(rng.uniform(lo, hi))
    lo_c, hi_c = r + MARGIN, 1.0 - r - MARGIN
    if attrs.position is None and unplaced == "anywhere":
        cx, cy = float(rng.uniform(lo_c, hi_c)), float(rng.uniform(lo_c, hi_c))
    else:
        px, py = POSITION_CENTRES[attrs.position or "centre"]
        cx = px + float(rng.uniform(-POSITION_JITTER, POSITION_JITTER))
        cy = py + float(rng.uniform(-POSITION_JITTER, POSITION_JITTER))
        cx, cy = min(max(cx, lo_c), hi_c), min(max(cy, lo_c), hi_c)
    return Layout(cx, cy, r)


def render_scene(background: str, shapes: list[tuple[str, str, Layout]], size: int = 128) -> np.ndarray:
    """Draw shapes, each (shape, colour, layout), in order on a flat background: HWC uint8 [size, size, 3]."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[background])
    draw = ImageDraw.Draw(img)
    for shape, colour, layout in shapes:
        cx, cy, r = layout.cx * big, layout.cy * big, layout.r * big
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:
            raise ValueError(f"shape '{shape}': use one of {', '.join(SHAPES)}")
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()


def render(attrs: Attributes, layout: Layout, size: int = 128) -> np.ndarray:
    """Draw one captioned image: HWC uint8 [size, size, 3]."""
    return render_scene(attrs.background, [(attrs.shape, attrs.colour, layout)], size)


def random_scene(rng: np.random.Generator, max_shapes: int = 3, size: int = 128) -> np.ndarray:
    """An uncaptioned image of 1..max_shapes shapes of any size, position and colour (each differing
    from the background): more edges and corners per pixel, for training an autoencoder."""
    first = random_attributes(rng, p_size=0.0, p_position=0.0)
    shapes = []
    for k in range(int(rng.integers(1, max_shapes + 1))):
        a = first if k == 0 else random_attributes(rng, p_size=0.0, p_position=0.0)
        colour = a.colour if a.colour != first.background else first.colour
        r = float(rng.uniform(SIZE_RANGES["small"][0], SIZE_RANGES["large"][1]))
        lo, hi = r + MARGIN, 1.0 - r - MARGIN
        shapes.append((a.shape, colour, Layout(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), r)))
    return render_scene(first.background, shapes, size)


def random_attributes(rng: np.random.Generator, p_size: float = 0.5, p_position: float = 0.5) -> Attributes:
    colours = list(COLOURS)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colours[int(rng.integers(len(colours)))]
    background = [c for c in colours if c != colour][int(rng.integers(len(colours) - 1))]
    size = SIZES[int(rng.integers(len(SIZES)))] if rng.random() < p_size else None
    position = POSITIONS[int(rng.integers(len(POSITIONS)))] if rng.random() < p_position else None
    return Attributes(shape, colour, background, size, position)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # HWC uint8
    caption: str
    attributes: Attributes
    layout: Layout


class ShapesDataset:
    """Captioned images drawn on the fly. ``sample(i)`` depends only on (seed, i, the options)."""

    def __init__(
        self, seed: int = 0, image_size: int = 128, p_size: float = 0.5, p_position: float = 0.5, unplaced: str = "centre"
    ):
        self.seed, self.image_size, self.p_size, self.p_position = int(seed), int(image_size), p_size, p_position
        self.unplaced = unplaced

    def sample(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, int(index)])
        attrs = random_attributes(rng, self.p_size, self.p_position)
        layout = sample_layout(attrs, rng, self.unplaced)
        return Sample(render(attrs, layout, self.image_size), attrs.caption, attrs, layout)

    def draw(self, attrs: Attributes, index: int = 0) -> np.ndarray:
        """An image of given attributes (layout drawn from (seed, index))."""
        rng = np.random.default_rng([self.seed, int(index), 1])
        return render(attrs, sample_layout(attrs, rng, self.unplaced), self.image_size)

    def batch(self, start: int, n: int) -> tuple[np.ndarray, list[str]]:
        """Images [n, 3, H, W] float32 in [-1, 1] and their captions, for indices start .. start+n-1."""
        samples = [self.sample(start + k) for k in range(n)]
        images = np.stack([s.image for s in samples]).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        return images, [s.caption for s in samples]

    def __iter__(self) -> Iterator[Sample]:
        i = 0
        while True:
            yield self.sample(i)
            i += 1


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    attributes: Attributes


def evaluation_prompts(n: int = 24, positions: bool = False) -> list[EvalPrompt]:
    """The fixed evaluation set (24 prompts by default), built by a rule, no randomness.

    Prompts come in groups of eight: no optional words, then a size (small, large alternating), and
    so on. ``positions=True`` adds a third group, a position (each of the five, the last three also
    with a size): the bundled default model is not trained on position words (its 0.8M-parameter
    UNet placed shapes right about a quarter of the time), so they are not in its evaluation.
    Shapes cycle every prompt, shape colours every six, and the background is the shape colour
    shifted by 1 + (i // 6) % 5 places, so each colour appears as shape and as background and no two
    of the first 30 prompts share a pair."""
    colours = list(COLOURS)
    groups = 3 if positions else 2
    out: list[EvalPrompt] = []
    for i in range(n):
        group, j = (i // 8) % groups, i % 8
        colour = colours[i % 6]
        background = colours[(i % 6 + 1 + (i // 6) % 5) % 6]
        size = SIZES[j % 2] if group == 1 or (group == 2 and j >= 5) else None
        position = POSITIONS[j % 5] if group == 2 else None
        attrs = Attributes(SHAPES[i % 3], colour, background, size, position)
        out.append(EvalPrompt(attrs.caption, attrs))
    return out


def with_colours(attrs: Attributes, colour: str, background: str) -> Attributes:
    return replace(attrs, colour=colour, background=background)


__all__ = [
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Attributes",
    "EvalPrompt",
    "Layout",
    "Sample",
    "ShapesDataset",
    "evaluation_prompts",
    "parse_caption",
    "random_attributes",
    "random_scene",
    "render",
    "render_scene",
    "sample_layout",
]
