"""Shared, session-scoped artifacts: the bundled default model exported once to every format.

Everything else (error cases, metrics, tokenizer...) builds its own tiny inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def default_export(tmp_path_factory):
    """out/ with coreml, tflite and onnx bundles of the default model (no parity run yet)."""
    from md_export.checkpoint import Checkpoint
    from md_export.export import ExportOptions, export

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
