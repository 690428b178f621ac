"""Shared, session-scoped artifacts: the bundled default model exported once to every format.

Everything else (error cases, metrics, tokenizer...) builds its own tiny inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("SOURCE_DATE_EPOCH", "1764547200")  # reproducible exports (tests/bundle/test_reproducible.py)


@pytest.fixture(scope="session")
def default_export(tmp_path_factory):
    """out/ with coreml, tflite and onnx bundles of the default model (no parity run yet)."""
    from md_export.checkpoint.folder import Checkpoint
    from md_export.config.options import ExportOptions
    from md_export.export import export

    out = tmp_path_factory.mktemp("default_export")
    results = export(Checkpoint.open(None), ExportOptions(out=out, command="pytest"))
    return {r.target: r for r in results}


@pytest.fixture
def bundle_copy(default_export, tmp_path):
    """A private copy of one exported bundle, for tests that modify it."""

    def copy(target: str) -> Path:
        dest = tmp_path / target
        shutil.copytree(default_export[target].bundle, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """name -> that family's tiny random-weight checkpoint (seed 0), written by `init` once per session."""
    from md_export.checkpoint.init import init_checkpoint

    root = tmp_path_factory.mktemp("families")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = init_checkpoint(name, root / name, size="tiny", seed=0)
        return made[name]

    return get


@pytest.fixture(scope="session")
def recipe_export(family_checkpoint, tmp_path_factory):
    """(recipe name, target) -> ExportResult of that shipped recipe on its family's tiny checkpoint
    at the checkpoint's own size, exported once per session (tests share the cell)."""
    from md_export.checkpoint.folder import Checkpoint
    from md_export.config.options import ExportOptions
    from md_export.export import export
    from md_export.config.recipe import load_recipe
    from md_export.config.resolve import apply_recipe

    root = tmp_path_factory.mktemp("recipe_exports")
    done: dict[tuple[str, str], object] = {}

    def get(name: str, target: str):
        if (name, target) not in done:
            recipe = load_recipe(name)
            ck = Checkpoint.open(family_checkpoint(recipe.family))
            size = ck.unet_config["sample_size"] * 8
            base = ExportOptions(targets=(target,), out=root / name, height=size, width=size, command="pytest")
            (done[name, target],) = export(ck, apply_recipe(recipe, base, given={"targets", "height", "width"}))
        return done[name, target]

    return get
