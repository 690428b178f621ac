"""Every model of a bundle as a runner speaking md-export's contract, whatever the bundle's
layout, and the pipeline facts the denoising loop reads with them."""

from __future__ import annotations

from pathlib import Path

from md_export.runtime import apple
from md_export.runtime.open import Runner, open_model


def open_bundle(bundle: Path, manifest: dict, engine: str | None = None) -> tuple[dict[str, Runner], dict]:
    """({model name: runner}, pipeline): an Apple-layout bundle through its adapters."""
    if manifest.get("layout") == "apple":
        return apple.open_models(Path(bundle), manifest, engine)
    models = {name: open_model(manifest["target"], Path(bundle), entry, engine) for name, entry in manifest["models"].items()}
    return models, manifest["pipeline"]
