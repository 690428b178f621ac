"""Every model of a bundle as a runner speaking md-export's contract, whatever the bundle's
layout, and the pipeline facts the denoising loop reads with them."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from md_export.runtime import apple
from md_export.runtime.open import Runner, open_model


def open_bundle(bundle: Path, manifest: dict, engine: str | None = None, one_at_a_time: bool = False) -> tuple[Mapping[str, Runner], dict]:
    """({model name: runner}, pipeline): an Apple-layout bundle through its adapters.
    ``one_at_a_time``: each model is opened when first called and the one called before it is
    closed (see :class:`OneAtATime`)."""
    bundle = Path(bundle)
    if manifest.get("layout") == "apple":
        openers = apple.model_openers(bundle, manifest, engine)
        pipeline = apple.contract_pipeline(manifest["pipeline"])
    else:
        openers = {name: (lambda e=entry: open_model(manifest["target"], bundle, e, engine)) for name, entry in manifest["models"].items()}
        pipeline = manifest["pipeline"]
    if one_at_a_time:
        return OneAtATime(openers), pipeline
    return {name: open_() for name, open_ in openers.items()}, pipeline


class OneAtATime(Mapping):
    """The bundle's models, only one of them open at a time. The denoising loop calls the text
    encoder, then the UNet for every step, then the VAE decoder, so a check of a full-size bundle
    holds one model and its runtime's copy of the weights (LiteRT's XNNPACK repacks them) instead
    of the whole pipeline's; the results are the same. A model called again after another is
    opened again."""

    def __init__(self, openers: dict[str, Callable[[], Runner]]):
        self._openers = openers
        self._name: str | None = None
        self._runner: Runner | None = None

    def __getitem__(self, name: str) -> Runner:
        if name not in self._openers:
            raise KeyError(name)
        return lambda feeds: self._open(name)(feeds)

    def __iter__(self):
        return iter(self._openers)

    def __len__(self) -> int:
        return len(self._openers)

    def _open(self, name: str) -> Runner:
        if self._name != name:
            self._runner = self._name = None
            gc.collect()  # the previous model's interpreter goes before the next one maps its file
            self._runner, self._name = self._openers[name](), name
        return self._runner
