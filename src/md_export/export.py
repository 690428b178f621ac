"""The export spine: load the checkpoint's components once, capture each once, lower that capture
for every requested target, and write one bundle per target."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import __version__
from .backends.base import LowerOptions, get_backend, package_version
from .bundle import SCHEMA_VERSION, atomic_folder, path_bytes, path_sha256, utc_now, write_json
from .capture import capture
from .checkpoint import Checkpoint
from .compress import compress, ideal_bytes
from .compress.chunk import CHUNK_LIMIT_MB, chunk_in_bundle
from .components import COMPONENT_ORDER, ExportPlan, attach_modules, count_parameters, make_plan
from .errors import InputError
from .families import source_extras
from .progress import Progress
from .recipe import validate_names, with_family_defaults
from .rewrites import apply_rewrites
from .rewrites import lowering_extra as rewrite_lowering_extra
from .rewrites import lowering_scope as rewrite_lowering_scope
from .rewrites import resolve as resolve_rewrites

ALL_TARGETS = ("coreml", "tflite", "onnx")


@dataclass
class ExportOptions:
    targets: tuple[str, ...] = ALL_TARGETS
    out: Path = Path("out")
    height: int | None = None
    width: int | None = None
    unet_batch: int | None = None
    with_encoder: bool = False
    precision: dict[str, str] = field(default_factory=dict)  # target -> fp32 | fp16; default per backend
    minimum_deployment_target: str = "iOS17"
    compute_units: str = "ALL"
    force: bool = False
    steps: int | None = None
    scheduler: str | None = None
    rewrites: dict[str, list[str]] = field(default_factory=dict)  # target -> names; absent = the target's defaults
    quantize: dict[str, str] = field(default_factory=dict)  # "target" or "target:component" -> level
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> {model|all: PSNR floor dB}
    recipe: str | None = None  # the recipe file the options came from (recorded in the manifest)
    chunk_unet: bool = False  # Core ML: split the UNet (at least in two), each piece under chunk_limit_mb
    chunk_over_mb: int | None = None  # Core ML: split the UNet only when its package is larger (recipes)
    chunk_limit_mb: int = CHUNK_LIMIT_MB
    command: str = ""


@dataclass
class ExportResult:
    target: str
    bundle: Path
    manifest: dict


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad or not targets:
        raise InputError(f"--targets {text!r}: use a comma-separated list of {', '.join(ALL_TARGETS)}")
    return tuple(dict.fromkeys(targets))


def export(ckpt: Checkpoint, options: ExportOptions, progress: Progress | None = None) -> list[ExportResult]:
    progress = progress or Progress()
    options = with_family_defaults(ckpt, options)
    validate_names(options)
    backends = {t: get_backend(t) for t in options.targets}
    for t in options.targets:  # refuse before any heavy work
        if (options.out / t).exists() and not options.force:
            raise InputError(f"{options.out / t}: already exists; pass --force to replace it")
    plan = make_plan(ckpt, height=options.height, width=options.width, unet_batch=options.unet_batch, with_encoder=options.with_encoder)
    with progress.stage("components", "load"):
        attach_modules(plan, ckpt)
    variants: dict[tuple[str, ...], tuple[dict, list[dict]]] = {}
    sources = {
        "path": ckpt.describe(),
        "kind": ckpt.kind,
        "components": {k: str(v) for k, v in ckpt.component_dirs().items()},
        "weights_sha256": ckpt.weights_sha256(),
        **source_extras(ckpt),
        **({"recipe": options.recipe} if options.recipe else {}),
    }
    results = []
    for target, backend in backends.items():
        precision = options.precision.get(target, backend.default_precision)
        lower_opts = LowerOptions(precision, options.minimum_deployment_target, options.compute_units)
        rewrite_names = resolve_rewrites(target, options.rewrites.get(target))
        lower_opts.extra.update(rewrite_lowering_extra(rewrite_names))
        components, rewrite_records = _variant(plan, rewrite_names, target, variants, progress)
        with atomic_folder(options.out / target, options.force) as tmp:
            models = {}
            for name, (comp, ep) in components.items():
                with progress.stage(name, "lower", target), rewrite_lowering_scope(rewrite_names):
                    lowered = backend.lower(comp, ep, tmp, lower_opts)
                level = options.quantize.get(f"{target}:{name}", options.quantize.get(target, "none"))
                if level not in ("none", ""):
                    with progress.stage(name, f"compress {level}", target):
                        lowered = compress(target, lowered, comp, level, {"plan": plan, "checkpoint": ckpt, "options": options})
                chunked = {}
                if target == "coreml" and name == "unet" and _wants_chunks(options, lowered.path):
                    with progress.stage(name, f"chunk (under {options.chunk_limit_mb} MB)", target):
                        chunked = chunk_in_bundle(lowered.path, comp, options.chunk_limit_mb * 1_000_000, 2 if options.chunk_unet else 1)
                with progress.stage(name, "hash", target):
                    models[name] = {
                        **({"file": lowered.path.name} if not chunked else {}),
                        "format": target,
                        **({"signature": lowered.signature} if lowered.signature else {}),
                        "inputs": [s.to_json() for s in comp.inputs],
                        "outputs": [s.to_json() for s in comp.outputs],
                        "precision": lowered.precision,
                        "compression": lowered.compression,
                        "parameters": count_parameters(comp.module),
                        **({"sha256": path_sha256(lowered.path)} if not chunked else {}),
                        "bytes": sum(c["bytes"] for c in chunked["chunks"]) if chunked else path_bytes(lowered.path),
                        "ideal_bytes": lowered.size.get("ideal_bytes") or ideal_bytes(comp.module, lowered.precision),
                        **({"size": lowered.size} if lowered.size else {}),
                        **({"notes": lowered.notes} if lowered.notes else {}),
                        **chunked,
                    }
            _copy_tokenizer(ckpt, tmp)
            write_json(tmp / "scheduler.json", ckpt.scheduler_config)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "target": target,
                "created": utc_now(),
                "md_export_version": __version__,
                "versions": _versions(backend),
                "command": options.command,
                "options": {
                    "height": plan.height,
                    "width": plan.width,
                    "unet_batch": plan.unet_batch,
                    "with_encoder": plan.with_encoder,
                    "precision": precision,
                    **({"minimum_deployment_target": options.minimum_deployment_target, "compute_units": options.compute_units} if target == "coreml" else {}),
                },
                "source": sources,
                "pipeline": plan.pipeline_json(ckpt, options.steps, options.scheduler),
                "rewrites": rewrite_records,
                "models": models,
                "parity": {"status": "not-run"},
                "parity_floors": options.thresholds.get(target, {}),
            }
            write_json(tmp / "manifest.json", manifest)
        results.append(ExportResult(target, options.out / target, manifest))
    return results


def _wants_chunks(options: ExportOptions, package: Path) -> bool:
    if options.chunk_unet:
        return True
    return options.chunk_over_mb is not None and path_bytes(package) > options.chunk_over_mb * 1_000_000


def _variant(plan: ExportPlan, names: list[str], target: str, cache: dict, progress: Progress):
    """Components with a target's rewrites applied, each captured once. Targets asking for the
    same rewrites share one capture; rewrites work on copies, never on the reference modules."""
    key = tuple(names)
    if key not in cache:
        comps = {n: plan.components[n] for n in _ordered(plan)}
        records: list[dict] = []
        if names:
            comps = {n: replace(c, module=copy.deepcopy(c.module)) for n, c in comps.items()}
            with progress.stage("components", f"rewrite ({', '.join(names)})", target):
                records = apply_rewrites({n: c.module for n, c in comps.items()}, names, target)
        captured = {}
        for n, c in comps.items():
            with progress.stage(n, "capture", target if names else ""):
                captured[n] = (c, capture(c))
        cache[key] = (captured, records)
    return cache[key]


def _ordered(plan: ExportPlan) -> list[str]:
    return [n for n in COMPONENT_ORDER if n in plan.components]


def _copy_tokenizer(ckpt: Checkpoint, bundle: Path) -> None:
    dest = bundle / "tokenizer"
    dest.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        src = ckpt.tokenizer_dir / name
        if src.is_file():
            shutil.copyfile(src, dest / name)


def _versions(backend) -> dict[str, str | None]:
    import sys

    base = {"python": sys.version.split()[0], "md-export": __version__}
    base.update({d: package_version(d) for d in ("torch", "numpy", "diffusers", "transformers")})
    base.update(backend.versions())
    return base
