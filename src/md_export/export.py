"""The export spine, one call per stage in flow order: resolve the options, plan the components,
load the reference modules, rewrite and capture each once per rewrite set, then per target lower,
compress, chunk and write the bundle. This is the only place a component's precision is decided."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from md_export import __version__
from md_export.bundle.layout import Layout, get_layout
from md_export.capture.torch_export import capture
from md_export.checkpoint.family import source_extras
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import ComponentPlan, ExportPlan, attach_modules, count_parameters, make_plan
from md_export.compress.apply import compress
from md_export.compress.chunk import chunk_in_bundle
from md_export.compress.size import ideal_bytes
from md_export.config.options import ExportOptions
from md_export.config.recipe import shipped_recipes
from md_export.config.resolve import validate_names, with_family_defaults
from md_export.config.validate import check_options
from md_export.core.deps import package_version
from md_export.core.errors import InputError
from md_export.core.io import atomic_folder, path_bytes, path_sha256, portable_path, utc_now
from md_export.core.manifest import SCHEMA_VERSION, ChunkEntry, Manifest, ModelEntry, NpuEntry, Pipeline, TensorEntry, build, write_manifest
from md_export.core.names import COMPONENTS
from md_export.core.progress import Progress
from md_export.lower.base import LoweredModel, Lowerer, LowerOptions, get_lowerer
from md_export.npu.compile import export_npu
from md_export.rewrites.registry import apply_rewrites, lowering_extra, lowering_scope, resolve


NPU_PACK = "ai_pack"  # the AI Pack folder inside a TFLite bundle


@dataclass
class ExportResult:
    target: str
    bundle: Path
    manifest: dict


def export(ckpt: Checkpoint, options: ExportOptions, progress: Progress | None = None) -> list[ExportResult]:
    progress = progress or Progress()
    options = with_family_defaults(ckpt, options)
    check_options(options, ckpt)  # refuse before any heavy work: numbers, names, the output folder
    validate_names(options)
    layout = get_layout(options.layout)
    for t in options.targets:  # refuse before any heavy work (the layout names the folder)
        if (options.out / layout.folder(t)).exists() and not options.force:
            raise InputError(f"{options.out / layout.folder(t)}: already exists; pass --force to replace it")
    plan = make_plan(ckpt, height=options.height, width=options.width, unet_batch=options.unet_batch,
                     with_encoder=options.with_encoder)  # configs only: a bad size is refused before a backend is imported
    lowerers = {t: get_lowerer(t) for t in options.targets}
    caveats = layout.check(options, ckpt, plan)
    with progress.stage("components", "load"):
        attach_modules(plan, ckpt)
    captures: dict[tuple[str, ...], tuple[dict, list[dict]]] = {}
    results = []
    for target, lowerer in lowerers.items():
        source = _source(ckpt, options, options.out / target)
        rewrites = resolve(target, options.rewrites.get(target))
        precisions = {n: component_precision(options, target, n, lowerer) for n in plan.components}
        tplan = layout.plan(plan, precisions, plan.pipeline_json(ckpt))  # the components in the layout's IO
        components, rewrite_records = _captured(tplan, rewrites, target, captures.setdefault(id(tplan), {}), progress)
        with atomic_folder(options.out / layout.folder(target), options.force) as tmp:
            models = {}
            for name, (comp, ep) in components.items():
                lowered = _lower(lowerer, comp, ep, tmp, options, target, rewrites, progress)
                lowered = _compress(target, lowered, comp, _level(options, target, name), ckpt, plan, options, progress)
                chunked = _chunk(target, lowered, comp, options, progress, layout.max_chunks)
                if not chunked:
                    lowered = replace(lowered, path=layout.place(lowered.path, name))
                with progress.stage(name, "hash", target):
                    models[name] = model_entry(target, comp, lowered, chunked)
            layout.write_resources(tmp, ckpt)
            manifest = _manifest(target, lowerer, options, tplan, ckpt, source, rewrite_records, models, layout, caveats)
            write_manifest(tmp, manifest)
            if target == "tflite" and options.npu:
                manifest.npu = _compile_for_npu(tmp, options.npu, progress)
                write_manifest(tmp, manifest)
            layout.finish(tmp, manifest, options)
        results.append(ExportResult(target, options.out / layout.folder(target), manifest.to_json()))
    return results


# -- precision and levels: decided here only ----------------------------------------------------------


def _level(options: ExportOptions, target: str, component: str) -> str:
    return options.quantize.get(f"{target}:{component}", options.quantize.get(target, "none"))


def target_precision(options: ExportOptions, target: str, lowerer: Lowerer) -> str:
    return options.precision.get(target, lowerer.default_precision)


def component_precision(options: ExportOptions, target: str, component: str, lowerer: Lowerer) -> str:
    """The compute precision one component is lowered at: a recipe's per-component precision,
    else the target's; a Core ML component whose level is fp32 is lowered at fp32 (the way out of
    an fp16 overflow)."""
    if target == "coreml" and _level(options, target, component).strip().lower() == "fp32":
        return "fp32"
    return options.precision.get(f"{target}:{component}", target_precision(options, target, lowerer))


def lower_at(target: str, comp: ComponentPlan, ep, out_dir: Path, options: LowerOptions) -> LoweredModel:
    """Lower one component at `options.precision`. Converters that write fp32 only (TFLite, ONNX)
    lower at fp32 and get their fp16 weights from compression right after."""
    lowerer = get_lowerer(target)
    precision = options.precision
    native = precision if precision in lowerer.native_precisions else "fp32"
    lowered = lowerer.lower(comp, ep, out_dir, replace(options, precision=native))
    if precision != native:
        lowered = compress(target, lowered, comp, precision, {})
    return lowered


def _lower(lowerer: Lowerer, comp: ComponentPlan, ep, out_dir: Path, options: ExportOptions, target: str, rewrites,
           progress: Progress) -> LoweredModel:
    precision = component_precision(options, target, comp.name, lowerer)
    lower_opts = LowerOptions(precision, options.minimum_deployment_target, options.compute_units)
    lower_opts.extra.update(lowering_extra(rewrites))
    with progress.stage(comp.name, "lower", target), lowering_scope(rewrites):
        return lower_at(target, comp, ep, out_dir, lower_opts)


def _compress(target: str, lowered: LoweredModel, comp: ComponentPlan, level: str, ckpt: Checkpoint, plan: ExportPlan,
              options: ExportOptions, progress: Progress) -> LoweredModel:
    if level in ("none", ""):
        return lowered
    with progress.stage(comp.name, f"compress {level}", target):
        return compress(target, lowered, comp, level, {"plan": plan, "checkpoint": ckpt, "options": options})


def _chunk(target: str, lowered: LoweredModel, comp: ComponentPlan, options: ExportOptions, progress: Progress,
           max_chunks: int | None = None) -> dict:
    if not (target == "coreml" and comp.name == "unet" and _wants_chunks(options, lowered.path)):
        return {}
    with progress.stage(comp.name, f"chunk (under {options.chunk_limit_mb} MB)", target):
        return chunk_in_bundle(lowered.path, comp, options.chunk_limit_mb * 1_000_000, 2 if options.chunk_unet else 1,
                               max_chunks=max_chunks)


def _compile_for_npu(bundle: Path, specs: tuple[str, ...], progress: Progress) -> list[NpuEntry]:
    """Each TFLite model compiled ahead of time for each SoC, in the AI Pack layout (bundle/ai_pack/);
    a model the NPU rejects stays on the fallback with the reason recorded."""
    with progress.stage("models", f"NPU compile ({', '.join(specs)})", "tflite"):
        results = export_npu(bundle, list(specs), pack_name=NPU_PACK)
    entries = []
    for r in results:
        data = {k: v for k, v in r.to_json().items() if k != "log"}
        data["file"] = f"{NPU_PACK}/{r.file}" if r.file else None
        entries.append(build(NpuEntry, data))
    return entries


def _wants_chunks(options: ExportOptions, package: Path) -> bool:
    if options.chunk_unet:
        return True
    return options.chunk_over_mb is not None and path_bytes(package) > options.chunk_over_mb * 1_000_000


# -- rewrite and capture, once per rewrite set --------------------------------------------------------


def _captured(plan: ExportPlan, names, target: str, cache: dict, progress: Progress):
    """Components with a target's rewrites applied, each captured once. Targets asking for the
    same rewrites share one capture; rewrites work on copies, never on the reference modules."""
    key = tuple(names)
    if key not in cache:
        comps = {n: plan.components[n] for n in COMPONENTS if n in plan.components}
        records: list[dict] = []
        if key:
            comps = {n: replace(c, module=copy.deepcopy(c.module)) for n, c in comps.items()}
            with progress.stage("components", f"rewrite ({', '.join(key)})", target):
                records = apply_rewrites({n: c.module for n, c in comps.items()}, names, target)
        captured = {}
        for n, c in comps.items():
            with progress.stage(n, "capture", target if key else ""):
                captured[n] = (c, capture(c))
        cache[key] = (captured, records)
    return cache[key]


# -- the manifest ------------------------------------------------------------------------------------


def model_entry(target: str, comp: ComponentPlan, lowered: LoweredModel, chunked: dict) -> ModelEntry:
    chunks = [build(ChunkEntry, c) for c in chunked.get("chunks", [])]
    return ModelEntry(
        file=None if chunks else lowered.path.name,
        format=target,
        signature=lowered.signature,
        inputs=[build(TensorEntry, s.to_json()) for s in comp.inputs],
        outputs=[build(TensorEntry, s.to_json()) for s in comp.outputs],
        precision=lowered.precision,
        compression=lowered.compression,
        parameters=count_parameters(comp.module),
        sha256=None if chunks else path_sha256(lowered.path),
        bytes=sum(c.bytes for c in chunks) if chunks else path_bytes(lowered.path),
        ideal_bytes=lowered.size.get("ideal_bytes") or ideal_bytes(comp.module, lowered.precision),
        size=lowered.size or None,
        notes=list(lowered.notes),
        chunks=chunks,
        chunk_check=chunked.get("chunk_check"),
    )


def _source(ckpt: Checkpoint, options: ExportOptions, bundle: Path) -> dict:
    """Where the bundle came from, with no absolute path of this machine: paths relative to the
    bundle (None where they share no folder), the checkpoint's name, its weights' sha256."""
    bundle = Path(bundle).absolute()
    origin = ckpt.original or ckpt.source
    located = {} if ckpt.kind == "default" else {
        "path": portable_path(origin, bundle) if origin is not None else None,
        "components": {k: portable_path(v, bundle) for k, v in ckpt.component_dirs().items()},
    }
    recipe = Path(options.recipe) if options.recipe else None
    return {
        "name": origin.name if origin is not None and ckpt.kind != "default" else ckpt.kind,
        "kind": ckpt.kind,
        **located,
        "weights_sha256": ckpt.weights_sha256(),
        **({"vocabulary": vocabulary} if (vocabulary := ckpt.training_vocabulary()) else {}),
        **source_extras(ckpt, bundle),
        **({"recipe": recipe.name if recipe.parent == _shipped_recipes_dir() else portable_path(recipe, bundle) or recipe.name}
           if recipe else {}),
    }


def _shipped_recipes_dir() -> Path:
    return next(iter(shipped_recipes().values())).parent


def _manifest(target: str, lowerer: Lowerer, options: ExportOptions, plan: ExportPlan, ckpt: Checkpoint, source: dict,
              rewrite_records: list[dict], models: dict[str, ModelEntry], layout: Layout, caveats: list[str]) -> Manifest:
    coreml = {"minimum_deployment_target": options.minimum_deployment_target, "compute_units": options.compute_units}
    extra = layout.manifest_fields(options, caveats)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        target=target,
        layout=extra.get("layout"),
        created=utc_now(),
        md_export_version=__version__,
        versions=_versions(lowerer),
        command=options.command,
        options={
            "height": plan.height,
            "width": plan.width,
            "unet_batch": plan.unet_batch,
            "with_encoder": plan.with_encoder,
            "precision": target_precision(options, target, lowerer),
            **(coreml if target == "coreml" else {}),
            **extra.get("options", {}),
        },
        source=source,
        pipeline=build(Pipeline, layout.pipeline(plan, ckpt, options)),
        rewrites=rewrite_records,
        models=models,
        parity={"status": "not-run"},
        parity_floors=options.thresholds.get(target, {}),
    )


def _versions(lowerer: Lowerer) -> dict[str, str | None]:
    base = {"python": sys.version.split()[0], "md-export": __version__}
    base.update({d: package_version(d) for d in ("torch", "numpy", "diffusers", "transformers")})
    base.update(lowerer.versions())
    return base
