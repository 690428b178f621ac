"""The rule-based judge reads clean dataset images back exactly, and refuses wrong ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from md_export.shapes.dataset import COLOURS, SHAPES, Attributes, Layout, ShapesDataset, evaluation_prompts, render
from md_export.shapes.judge import judge, prompt_accuracy, read_image


def test_clean_dataset_images_are_read_back():
    data = ShapesDataset(seed=11)
    samples = [data.sample(i) for i in range(300)]
    assert prompt_accuracy((s.caption, s.image) for s in samples) >= 0.99
    readings = [read_image(s.image) for s in samples[:60]]
    assert all(r.shape == s.attributes.shape and r.colour == s.attributes.colour for r, s in zip(readings, samples))


def test_evaluation_prompts_drawn_cleanly_are_all_correct():
    data = ShapesDataset(seed=2)
    pairs = [(p.prompt, data.draw(p.attributes, k)) for p in evaluation_prompts() for k in range(2)]
    assert prompt_accuracy(pairs) == 1.0


def test_swapped_colours_fail():
    data = ShapesDataset(seed=3)
    pairs = [
        (p.attributes, data.draw(replace(p.attributes, colour=p.attributes.background, background=p.attributes.colour)))
        for p in evaluation_prompts()
    ]
    assert prompt_accuracy(pairs) == 0.0


@pytest.mark.parametrize("blur", [0.0, 1.5])
@pytest.mark.parametrize("shift", [1, 2])
def test_wrong_shape_fails_even_when_soft(blur, shift):
    """The soft templates (rounded corners) must not let one shape pass for another."""
    from PIL import Image, ImageFilter

    data = ShapesDataset(seed=4)
    pairs = []
    for k in range(2):
        for p in evaluation_prompts():
            other = SHAPES[(SHAPES.index(p.attributes.shape) + shift) % 3]
            img = data.draw(replace(p.attributes, shape=other), k)
            if blur:
                img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(blur)))
            pairs.append((p.prompt, img))
    assert prompt_accuracy(pairs) == 0.0


def test_wrong_size_and_position_fail():
    want = Attributes("circle", "red", "blue", "small", "left")
    assert judge(want, render(want, Layout(0.25, 0.5, 0.11)))
    assert not judge(want, render(want, Layout(0.30, 0.5, 0.25)))  # large
    assert not judge(want, render(want, Layout(0.75, 0.5, 0.11)))  # right
    assert not judge(want, render(want, Layout(0.5, 0.5, 0.11)))  # centre
    assert not judge(replace(want, position="top"), render(want, Layout(0.25, 0.5, 0.11)))


def test_no_shape_and_two_shapes_fail():
    want = Attributes("square", "white", "black")
    blank = np.zeros((128, 128, 3), np.uint8)
    r = read_image(blank)
    assert r.background == "black" and r.shape is None and not r.matches(want)
    two = np.maximum(render(want, Layout(0.3, 0.3, 0.12)), render(want, Layout(0.7, 0.7, 0.12)))
    assert judge(want, render(want, Layout(0.3, 0.3, 0.12)))
    assert not judge(want, two)
    assert read_image(two).clutter > 0.9


def test_float_nchw_input_reads_the_same_as_uint8():
    s = ShapesDataset(seed=5).sample(7)
    as_float = s.image.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
    assert read_image(as_float) == read_image(s.image)
    with pytest.raises(ValueError):
        read_image(np.zeros((2, 3, 8, 8), np.float32))


def test_noisy_blurred_images_still_read():
    """Generated images are soft and noisy: the judge must not depend on crisp edges."""
    from PIL import Image, ImageFilter

    data = ShapesDataset(seed=6)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(60):
        s = data.sample(i)
        img = np.asarray(Image.fromarray(s.image).filter(ImageFilter.GaussianBlur(1.5)), np.float32)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        pairs.append((s.attributes, img))
    assert prompt_accuracy(pairs) >= 0.95


def test_washed_out_colours_map_to_the_nearest_palette_colour():
    want = Attributes("triangle", "yellow", "blue")
    img = render(want, Layout(0.5, 0.5, 0.2)).astype(np.float32)
    img = (0.75 * img + 0.25 * 128).astype(np.uint8)  # low contrast, still yellow on blue
    r = read_image(img)
    assert (r.colour, r.background, r.shape) == ("yellow", "blue", "triangle")
    assert set(COLOURS) >= {r.colour, r.background}


def test_empty_pairs_give_zero():
    assert prompt_accuracy([]) == 0.0
