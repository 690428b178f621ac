"""Export options: what one export run asks for, built from the command line; config.resolve
fills what it leaves open from a recipe and the family's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from md_export.compress.chunk import CHUNK_LIMIT_MB
from md_export.compress.levels import parse_level
from md_export.core.errors import InputError
from md_export.core.names import COMPONENTS, TARGETS
from md_export.rewrites.registry import RewriteSelection, choose, get


@dataclass
class ExportOptions:
    targets: tuple[str, ...] = TARGETS
    out: Path = Path("out")
    height: int | None = None
    width: int | None = None
    unet_batch: int | None = None
    with_encoder: bool = False
    # "target" or "target:component" -> fp32 | fp16; default per target (export.component_precision)
    precision: dict[str, str] = field(default_factory=dict)
    minimum_deployment_target: str = "iOS17"
    compute_units: str = "ALL"
    force: bool = False
    steps: int | None = None
    scheduler: str | None = None
    rewrites: dict[str, RewriteSelection] = field(default_factory=dict)  # target -> names; absent = the target's defaults
    quantize: dict[str, str] = field(default_factory=dict)  # "target" or "target:component" -> level
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> {model|all: PSNR floor dB}
    recipe: str | None = None  # the recipe file the options came from (recorded in the manifest)
    chunk_unet: bool = False  # Core ML: split the UNet (at least in two), each piece under chunk_limit_mb
    chunk_over_mb: int | None = None  # Core ML: split the UNet only when its package is larger (recipes)
    chunk_limit_mb: int = CHUNK_LIMIT_MB
    npu: tuple[str, ...] = ()  # TFLite: "qualcomm:SM8650,SM8750" specs to compile for ahead of time (md_export.npu)
    layout: str = "md-export"  # core.names.LAYOUTS; "apple": Core ML for apple/ml-stable-diffusion (OUT/coreml-apple/)
    force_layout: bool = False  # apple: export a checkpoint the package cannot run as exported (LCM, v-prediction, ...)
    compile: bool = False  # apple: compile each .mlpackage to .mlmodelc (xcrun coremlcompiler, macOS only)
    command: str = ""


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise InputError(f"--targets {text!r}: use a comma-separated list of {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(targets))


def lora_pairs(files, scales) -> tuple[tuple[str, float], ...]:
    """--lora A --lora B --lora-scale 0.8 [--lora-scale 0.5]: one scale for all, or one per file."""
    files, scales = list(files or ()), list(scales or ())
    if scales and not files:
        raise InputError("--lora-scale without --lora")
    if len(scales) > 1 and len(scales) != len(files):
        raise InputError(f"--lora-scale given {len(scales)} times for {len(files)} --lora files; give one, or one per file")
    if not scales:
        scales = [1.0]
    bad = [s for s in scales if not math.isfinite(s)]
    if bad:
        raise InputError(f"--lora-scale {bad[0]}: use a finite number (1.0 applies the LoRA as trained)")
    return tuple((str(f), float(scales[i] if len(scales) > 1 else scales[0])) for i, f in enumerate(files))


def quantize_per_target(targets, levels: list[str], keep: list[str]) -> dict[str, str]:
    """--quantize LEVEL | COMPONENT=LEVEL and --keep COMPONENT=LEVEL -> ExportOptions.quantize."""
    out: dict[str, str] = {}
    for flag, items in (("--quantize", levels), ("--keep", keep)):
        for item in items:
            comp, sep, level = item.partition("=") if "=" in item and not item.startswith("mixed:") else ("", "", item)
            if flag == "--keep" and not sep:
                raise InputError(f"--keep {item}: use COMPONENT=LEVEL, e.g. vae_decoder=fp16")
            if comp and comp not in COMPONENTS:
                raise InputError(f"{flag} {item}: unknown component '{comp}' (use {', '.join(COMPONENTS)})")
            for t in targets:
                if level.strip().lower() not in ("none", "fp32") or t == "coreml":
                    parse_level(t, level) if level.strip().lower() != "none" else None
                out[f"{t}:{comp}" if comp else t] = "none" if (level in ("fp32",) and t != "coreml") else level
    return out


def rewrites_per_target(targets, requested: list[str], no_defaults: bool, recipe=None) -> dict[str, RewriteSelection]:
    """--rewrite NAME goes to each chosen target it is for (an error if it is for none of them),
    on top of the target's defaults (or, with a recipe that lists rewrites, of its list: the
    recipe merges); nothing given = absent = the defaults or the recipe's list."""
    if not requested and not no_defaults:
        return {}
    for n in requested:
        if not set(get(n).targets) & set(targets):
            raise InputError(f"--rewrite {n}: it is for {', '.join(get(n).targets)}, not {', '.join(targets)}")
    out = {}
    for t in targets:
        mine = [n for n in requested if t in get(n).targets]
        tr = recipe.target.get(t) if recipe is not None else None
        if tr is not None and tr.rewrites is not None and not no_defaults:
            out[t] = choose(t, mine, defaults=False)  # apply_recipe puts the recipe's list first
        else:
            out[t] = choose(t, mine, defaults=not no_defaults)
    return out
