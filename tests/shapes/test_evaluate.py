"""evaluate() over fake generators: right drawings score 1, wrong colours 0; the grid; the vocabulary marker."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from md_export.core.errors import InputError
from md_export.shapes import VOCABULARY, VOCABULARY_FIELD
from md_export.shapes.dataset import ShapesDataset, evaluation_prompts, parse_caption
from md_export.shapes.evaluate import evaluate, require_vocabulary, vocabulary_of

DATA = ShapesDataset(seed=9)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "src" / "md_export" / "default_model"


def draw_right(prompt: str, seed: int) -> np.ndarray:
    return DATA.draw(parse_caption(prompt), seed)


def draw_wrong_colours(prompt: str, seed: int) -> np.ndarray:
    a = parse_caption(prompt)
    return DATA.draw(replace(a, colour=a.background, background=a.colour), seed)


def draw_float_nchw(prompt: str, seed: int) -> np.ndarray:
    return draw_right(prompt, seed).astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0


def test_right_drawings_score_one_and_the_grid_is_written(tmp_path):
    prompts = evaluation_prompts()
    result = evaluate(draw_right, prompts, seeds=[0, 1], reference_fn=draw_float_nchw, grid_path=tmp_path / "grid.png")
    assert result.accuracy == 1.0 and result.reference_accuracy == 1.0
    assert result.n == 48 and all(i.correct and not i.mismatches for i in result.items)
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.height >= 24 * 128 and grid.width >= 300 + 4 * 128
    # the first row's first model cell holds the first prompt's image (framed green)
    arr = np.asarray(grid.convert("RGB"))
    assert tuple(arr[20, 300 + 2 * 134 + 10 + 1]) == (40, 200, 60)
    json.dumps(result.to_json())


def test_wrong_colours_score_zero_and_say_why():
    result = evaluate(draw_wrong_colours, [p.prompt for p in evaluation_prompts()[:6]], seeds=[3])
    assert result.accuracy == 0.0
    assert all(any(m.startswith("colour:") for m in i.mismatches) for i in result.items)
    assert result.reference_accuracy is None


def test_half_wrong_generator_scores_half():
    def half(prompt, seed):
        return draw_right(prompt, seed) if seed % 2 == 0 else draw_wrong_colours(prompt, seed)

    assert evaluate(half, evaluation_prompts()[:4], seeds=[0, 1, 2, 3]).accuracy == 0.5


def test_no_prompts_is_an_input_error():
    with pytest.raises(InputError):
        evaluate(draw_right, [], seeds=[0])


def test_vocabulary_marker(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", VOCABULARY_FIELD: VOCABULARY}))
    assert vocabulary_of(model) == VOCABULARY
    require_vocabulary(model)

    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert vocabulary_of(other) is None
    with pytest.raises(InputError, match="no training vocabulary"):
        require_vocabulary(other)

    # a bundle: its manifest's own field, else the source folder it names
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"source": {"components": {"unet": str(model / "unet")}}}))
    assert vocabulary_of(bundle) == VOCABULARY
    manifest = {"vocabulary": "faces-v2", "source": {"components": {"unet": str(model / "unet")}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="faces-v2"):
        require_vocabulary(bundle)


def test_the_bundled_default_model_declares_shapes_and_fits_10_mb():
    assert vocabulary_of(DEFAULT_MODEL) == VOCABULARY
    weights = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*.safetensors"))
    assert weights <= 10_000_000
    report = json.loads((DEFAULT_MODEL / "training_report.json").read_text())
    assert report["vocabulary"] == VOCABULARY and report["bytes_fp16_safetensors"]["total"] == weights


@pytest.mark.slow
def test_the_bundled_default_model_draws_the_prompts():
    """diffusers' StableDiffusionPipeline (fp32, CPU, 20 Euler steps, guidance 7.5) on the 24 prompts x 2 seeds."""
    from md_export.shapes.evaluate import reference_generate_fn

    result = evaluate(reference_generate_fn(DEFAULT_MODEL), evaluation_prompts(), seeds=[0, 1])
    assert result.accuracy >= 0.9, [(i.prompt, i.seed, i.mismatches) for i in result.items if not i.correct]
