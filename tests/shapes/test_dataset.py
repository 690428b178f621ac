"""The shapes-v1 dataset: deterministic, captions that parse back, the fixed evaluation set."""

from __future__ import annotations

import numpy as np
import pytest

from md_export.shapes.dataset import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Attributes,
    ShapesDataset,
    evaluation_prompts,
    parse_caption,
)


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = ShapesDataset(seed=5), ShapesDataset(seed=5), ShapesDataset(seed=6)
    for i in range(5):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.caption == sb.caption and np.array_equal(sa.image, sb.image)
    assert any(not np.array_equal(a.sample(i).image, c.sample(i).image) for i in range(5))
    assert a.sample(0).caption != a.sample(1).caption or not np.array_equal(a.sample(0).image, a.sample(1).image)


def test_samples_cover_the_vocabulary_and_never_paint_shape_on_same_colour():
    data = ShapesDataset(seed=1)
    seen = {"shape": set(), "colour": set(), "background": set(), "size": set(), "position": set()}
    for i in range(400):
        s = data.sample(i)
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        a = s.attributes
        assert a.colour != a.background
        for k, values in seen.items():
            values.add(getattr(a, k))
        # the border is the background colour (shapes stay inside the image)
        assert np.array_equal(s.image[0, 0], np.array(COLOURS[a.background], np.uint8))
        assert parse_caption(s.caption) == a
    assert seen["shape"] == set(SHAPES) and seen["colour"] == set(COLOURS) == seen["background"]
    assert seen["size"] == set(SIZES) | {None} and seen["position"] == set(POSITIONS) | {None}


def test_caption_wording():
    assert Attributes("circle", "red", "blue").caption == "a red circle on a blue background"
    assert (
        Attributes("triangle", "yellow", "black", "small", "left").caption
        == "a small yellow triangle on the left on a black background"
    )
    assert parse_caption("A large white square at the top on a green background.") == Attributes(
        "square", "white", "green", "large", "top"
    )
    assert parse_caption("a blue circle in the center on a red background").position == "centre"


@pytest.mark.parametrize(
    "bad", [{"colour": "red", "background": "red"}, {"shape": "hexagon"}, {"colour": "pink"}, {"size": "huge"}]
)
def test_invalid_attributes_are_refused(bad):
    kw = {"shape": "circle", "colour": "red", "background": "blue"} | bad
    with pytest.raises(ValueError):
        Attributes(**kw)


def test_caption_without_two_colours_is_refused():
    with pytest.raises(ValueError, match="two colours"):
        parse_caption("a red circle")


def test_evaluation_prompts_are_fixed_and_balanced():
    prompts = evaluation_prompts()
    assert len(prompts) == 24 and prompts == evaluation_prompts()
    assert prompts[0].prompt == "a red circle on a green background"
    assert len({p.prompt for p in prompts}) == 24
    for field, values in (("shape", SHAPES), ("colour", COLOURS), ("background", COLOURS)):
        counts = {v: sum(getattr(p.attributes, field) == v for p in prompts) for v in values}
        assert min(counts.values()) >= 4, (field, counts)
    assert {p.attributes.position for p in prompts} == {None}  # the default model is not trained on positions
    assert {p.attributes.size for p in prompts} == set(SIZES) | {None}
    assert all(parse_caption(p.prompt) == p.attributes for p in prompts)
    placed = evaluation_prompts(positions=True)
    assert {p.attributes.position for p in placed} == set(POSITIONS) | {None}
    assert all(parse_caption(p.prompt) == p.attributes for p in placed)


def test_batch_is_float_nchw_in_unit_range():
    images, captions = ShapesDataset(seed=0).batch(10, 3)
    assert images.shape == (3, 3, 128, 128) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert captions == [ShapesDataset(seed=0).sample(10 + k).caption for k in range(3)]


def test_random_scenes_are_seeded_and_hold_one_to_three_shapes():
    from md_export.shapes.dataset import random_scene
    from md_export.shapes.judge import read_image

    a = [random_scene(np.random.default_rng([0, k])) for k in range(20)]
    b = [random_scene(np.random.default_rng([0, k])) for k in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(read_image(x).area_fraction > 0 for x in a)
    assert any(read_image(x).clutter > 0 for x in a)  # some scenes have more than one blob


def test_unplaced_shapes_go_in_the_centre_unless_asked_anywhere():
    from md_export.shapes.judge import read_image

    centred = ShapesDataset(seed=2)
    anywhere = ShapesDataset(seed=2, unplaced="anywhere")
    plain = [i for i in range(200) if centred.sample(i).attributes.position is None][:40]
    assert {read_image(centred.sample(i).image).position for i in plain} == {"centre"}
    assert len({read_image(anywhere.sample(i).image).position for i in plain}) >= 4
    with pytest.raises(ValueError, match="unplaced"):
        ShapesDataset(unplaced="left").sample(0)
