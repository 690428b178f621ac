"""`md-export sensitivity`: per-layer sensitivity of each component to weight compression, over
inputs recorded from the reference pipeline; a JSON recipe and a PNG plot per component."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.compress import sensitivity as S
from md_export.compress.calibration import calibration_feeds
from md_export.core.errors import InputError
from md_export.core.progress import Progress

ANALYSED_TARGETS = ("coreml", "tflite")  # the targets with a per-layer analysis (palettes; per-channel ints)


def run_sensitivity(checkpoint: Path | None, target: str, out: Path, components: list[str], average_bits: float | None,
                    samples: int, progress: Progress | None = None,
                    on_written: Callable[[str, dict], None] | None = None, analyze: Callable | None = None) -> dict[str, dict]:
    """`analyze(component, feeds, target)`: scores every layer (default: one after another here;
    md_export.sweep.sensitivity.ray_analyzer fans the layers out as Ray tasks, same scores)."""
    progress = progress or Progress()
    analyze = analyze or S.analyze
    if target not in ANALYSED_TARGETS:
        raise InputError(f"--target {target}: use coreml or tflite")
    ckpt = Checkpoint.open(checkpoint)
    plan = make_plan(ckpt)
    names = components or [n for n in ("unet", "text_encoder", "vae_decoder") if n in plan.components]
    for n in names:
        if n not in plan.components:
            raise InputError(f"--component {n}: use one of {', '.join(plan.components)}")
    attach_modules(plan, ckpt)
    context: dict = {"plan": plan, "checkpoint": ckpt}
    written = {}
    for n in names:
        with progress.stage(n, "sensitivity", target):
            feeds = calibration_feeds(plan.components[n], context, limit=samples)
            data = S.recipe_json(n, target, analyze(plan.components[n], feeds, target), average_bits)
            j, p = S.write(out, data)
        written[n] = {"json": str(j), "png": str(p), "layers": len(data["layers"]),
                      **({"average_bits": data["mixed_bit"]["average_bits"]} if average_bits else {})}
        if on_written is not None:
            on_written(n, written[n])
    return written
