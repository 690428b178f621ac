"""The export spine, one call per stage in flow order: resolve the options, plan the components,
load the reference modules, rewrite and capture each once per rewrite set, then per target lower,
compress, chunk and write the bundle. This is the only place a component's precision is decided."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from md_export import __version__
from md_export.bundle.layout import Layout, get_layout
from md_export.capture.torch_export import capture
from md_export.checkpoint.family import source_extras
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import ComponentPlan, ExportPlan, attach_modules, count_parameters, make_plan
from md_export.compress.apply import compress, needs_calibration
from md_export.compress.calibration import prerecord
from md_export.compress.chunk import chunk_in_bundle
from md_export.compress.size import ideal_bytes
from md_export.config.options import ExportOptions
from md_export.config.recipe import shipped_recipes
from md_export.config.resolve import validate_names, with_family_defaults
from md_export.config.validate import check_options
from md_export.core.deps import package_version
from md_export.core.errors import InputError
from md_export.core.io import atomic_folder, path_bytes, path_sha256, portable_path, utc_now
from md_export.core.isolate import ENV as ISOLATE_ENV, run_in_child, wants_child
from md_export.core.manifest import SCHEMA_VERSION, ChunkEntry, Manifest, ModelEntry, NpuEntry, Pipeline, TensorEntry, build, write_manifest
from md_export.core.names import COMPONENTS
from md_export.core.progress import Progress
from md_export.lower.base import LoweredModel, Lowerer, LowerOptions, get_lowerer
from md_export.npu.compile import export_npu
from md_export.rewrites.registry import lowering_extra, lowering_scope, resolve, rewrite_counts, rewrite_records


NPU_PACK = "ai_pack"  # the AI Pack folder inside a TFLite bundle


@dataclass
class ExportResult:
    target: str
    bundle: Path
    manifest: dict


def export(ckpt: Checkpoint, options: ExportOptions, progress: Progress | None = None) -> list[ExportResult]:
    """Export every target, one component at a time: a component's reference module is loaded,
    rewritten and captured once per rewrite set (targets asking for the same set share the
    capture), lowered, compressed and hashed for each target, then released before the next
    component is loaded, so the peak is that of one component, not of the pipeline. A target that
    fails is dropped (nothing of it written) while the others finish; its error is raised at the end."""
    progress = progress or Progress()
    options = with_family_defaults(ckpt, options)
    layout = get_layout(options.layout)
    # refuse before any heavy work: numbers, names, the output folders of this layout
    check_options(options, ckpt, folders=[layout.folder(t) for t in options.targets])
    validate_names(options)
    for t in options.targets:  # refuse before any heavy work (the layout names the folder)
        if (options.out / layout.folder(t)).exists() and not options.force:
            raise InputError(f"{options.out / layout.folder(t)}: already exists; pass --force to replace it")
    plan = make_plan(ckpt, height=options.height, width=options.width, unet_batch=options.unet_batch,
                     with_encoder=options.with_encoder)  # configs only: a bad size is refused before a backend is imported
    lowerers = {t: get_lowerer(t) for t in options.targets}
    caveats = layout.check(options, ckpt, plan)
    names = [n for n in COMPONENTS if n in plan.components]
    rewrites = {t: resolve(t, options.rewrites.get(t)) for t in lowerers}
    precisions = {t: {n: component_precision(options, t, n, lowerer) for n in names} for t, lowerer in lowerers.items()}
    pipeline = plan.pipeline_json(ckpt)
    if any(needs_calibration(t, _level(options, t, n)) for t in lowerers for n in names):
        with progress.stage("components", "record calibration inputs"):  # needs the whole pipeline: before streaming
            attach_modules(plan, ckpt)
            prerecord(plan, ckpt)
            _release(plan, names)
    weights = ckpt.weights_bytes()
    large = ckpt.is_large()
    in_child = wants_child(large)  # every conversion of this run in a child, or none (core.isolate)
    if in_child:
        progress.info(f"conversions run in child processes ({weights / 1e9:.1f} GB of weights; {ISOLATE_ENV}=never to keep them here)")
    counts: dict[str, dict[str, dict[str, int]]] = {t: {} for t in lowerers}
    models: dict[str, dict[str, ModelEntry]] = {t: {} for t in lowerers}
    with _Staging({t: options.out / layout.folder(t) for t in lowerers}, options.force) as staging:
        for name in names:
            with progress.stage(name, "load"):
                attach_modules(plan, ckpt, only=(name,))
            groups = _rewrite_groups(rewrites, staging.alive())
            for k, (key, targets) in enumerate(groups):
                tcomp = comp = ep = None  # the previous set's module and capture go before the next load
                if large and k and groups[k - 1][0]:
                    # the previous set rewrote the reference in place: a fresh load costs seconds
                    # (weights are memory-mapped), a deep copy of a full-size module its size in RAM
                    _release(plan, (name,))
                    with progress.stage(name, "load again", targets[0]):
                        attach_modules(plan, ckpt, only=(name,))
                tcomp = layout.plan(plan, precisions[targets[0]], pipeline).components[name]
                try:
                    comp, changed = _rewritten(tcomp, key, targets[0], last_use=large or k == len(groups) - 1, progress=progress)
                    with progress.stage(name, "capture", targets[0] if key else ""):
                        ep = capture(comp)
                except Exception as e:  # noqa: BLE001 - every target of this rewrite set fails, the others go on
                    for t in targets:
                        staging.fail(t, e)
                    continue
                args: tuple = ()
                for t in targets:
                    _add_counts(counts[t], changed, name)
                    try:
                        args = (t, lowerers[t], comp, ep, staging.folder(t), options, rewrites[t], ckpt, plan, layout, progress)
                        if in_child:  # the converter's leftovers go with the child
                            models[t][name] = run_in_child(f"{t} {name}: lower", _export_component, *args, large=large,
                                                           in_child_first=_single_threaded_torch)
                        else:
                            models[t][name] = _export_component(*args, large=large)
                    except Exception as e:  # noqa: BLE001
                        staging.fail(t, e)
                del comp, ep, args  # nothing of this component may outlive the loop (streaming)
            _release(plan, (name,))
        results = []
        for target in staging.alive():
            tmp, lowerer = staging.folder(target), lowerers[target]
            try:
                records = rewrite_records(counts[target], rewrites[target], target, names)
                tplan = layout.plan(plan, precisions[target], pipeline)
                source = _source(ckpt, options, options.out / target)
                layout.write_resources(tmp, ckpt)
                manifest = _manifest(target, lowerer, options, tplan, ckpt, source, records, models[target], layout, caveats)
                write_manifest(tmp, manifest)
                if target == "tflite" and options.npu:
                    manifest.npu = _compile_for_npu(tmp, options.npu, progress)
                    write_manifest(tmp, manifest)
                layout.finish(tmp, manifest, options)
            except Exception as e:  # noqa: BLE001
                staging.fail(target, e)
                continue
            staging.commit(target)
            results.append(ExportResult(target, options.out / layout.folder(target), manifest.to_json()))
    staging.raise_first_failure()
    return results


def _export_component(target: str, lowerer: Lowerer, comp: ComponentPlan, ep, tmp: Path, options: ExportOptions, rewrites,
                      ckpt: Checkpoint, plan: ExportPlan, layout: Layout, progress: Progress, large: bool = False) -> ModelEntry:
    name = comp.name
    lowered = _lower(lowerer, comp, ep, tmp, options, target, rewrites, progress, large)
    lowered = _compress(target, lowered, comp, _level(options, target, name), ckpt, plan, options, progress)
    chunked = _chunk(target, lowered, comp, options, progress, layout.max_chunks)
    if not chunked:
        lowered = replace(lowered, path=layout.place(lowered.path, name))
    with progress.stage(name, "hash", target):
        return model_entry(target, comp, lowered, chunked)


class _Staging:
    """One atomic folder per target, open together while the components stream through them.
    fail(target) removes that target's folder now (the others go on); commit(target) renames it
    into place; leaving the block on an exception (Ctrl-C, SIGTERM, a bug) removes all that remain."""

    def __init__(self, folders: dict[str, Path], force: bool):
        self.folders, self.force = folders, force
        self.open: dict[str, tuple] = {}
        self.failures: list[tuple[str, BaseException]] = []
        self.committed = 0
        # the output folders this export makes (-o out/new/ that did not exist): removed again when
        # nothing is written, so a refused checkpoint leaves the tree as it was
        self.made: list[Path] = []
        for parent in {Path(f).parent for f in folders.values()}:
            p = Path(os.path.abspath(parent))
            while not p.exists() and p not in self.made:
                self.made.append(p)
                p = p.parent

    def __enter__(self):
        try:
            for t, folder in self.folders.items():
                cm = atomic_folder(folder, self.force)
                self.open[t] = (cm, cm.__enter__())
        except BaseException as e:
            self._close_all(e)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._close_all(exc if exc is not None else RuntimeError("export ended before this target was written"))
        if not self.committed:
            for p in sorted(self.made, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    p.rmdir()  # only if empty
        return False

    def alive(self) -> list[str]:
        return [t for t in self.folders if t in self.open]

    def folder(self, target: str) -> Path:
        return self.open[target][1]

    def fail(self, target: str, error: BaseException) -> None:
        if target in self.open:
            self._close(target, error)
            # kept until the end of the run: its frames' locals (a component's module and capture)
            # must not be, or a failed target holds a full-size UNet for the rest of the export
            chain: BaseException | None = error
            cleared: set[int] = set()
            while chain is not None and id(chain) not in cleared:
                cleared.add(id(chain))
                traceback.clear_frames(chain.__traceback__)
                chain = chain.__cause__ or chain.__context__
            self.failures.append((target, error))

    def commit(self, target: str) -> None:
        cm, _ = self.open.pop(target)
        cm.__exit__(None, None, None)
        self.committed += 1

    def raise_first_failure(self) -> None:
        if self.failures:
            raise self.failures[0][1]

    def _close(self, target: str, error: BaseException) -> None:
        cm, _ = self.open.pop(target)
        try:
            cm.__exit__(type(error), error, error.__traceback__)  # removes the staging folder
        except BaseException as raised:  # the generator re-raises the error it was given
            if raised is not error:
                raise

    def _close_all(self, error: BaseException) -> None:
        for t in list(self.open):
            self._close(t, error)


def _rewrite_groups(rewrites: dict, targets: list[str]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Targets grouped by the rewrite set they ask for, the unrewritten set first (it uses the
    reference module as it is) so the last group can rewrite the reference in place."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for t in targets:
        groups.setdefault(tuple(rewrites[t]), []).append(t)
    return sorted(groups.items(), key=lambda kv: bool(kv[0]))


def _rewritten(tcomp: ComponentPlan, key: tuple[str, ...], target: str, last_use: bool, progress: Progress):
    """The component with `key`'s rewrites applied: the reference itself when there are none;
    rewritten in place when no later rewrite set needs the reference (or, for a large pipeline, when
    the next set loads it again); else a copy."""
    if not key:
        return tcomp, {}
    module = tcomp.module if last_use else copy.deepcopy(tcomp.module)
    with progress.stage(tcomp.name, f"rewrite ({', '.join(key)})", target):
        changed = rewrite_counts({tcomp.name: module}, list(key), target)
    return replace(tcomp, module=module), changed


def _single_threaded_torch() -> None:
    """In a forked child: torch's OpenMP threads stayed in the parent, and a parallel region would
    wait on them for ever, so torch runs its ops on this one thread (the converters are mostly
    single-threaded Python; numpy's BLAS pool is rebuilt after fork)."""
    import torch

    torch.set_num_threads(1)


def _add_counts(total: dict[str, dict[str, int]], changed: dict[str, dict[str, int]], component: str) -> None:
    for rewrite, per in changed.items():
        total.setdefault(rewrite, {})[component] = per.get(component, 0)


def _release(plan: ExportPlan, names) -> None:
    """Drop the reference modules of `names` (the VAE's two halves go together) and collect them."""
    for n in names:
        for m in (("vae_decoder", "vae_encoder") if n.startswith("vae_") else (n,)):
            if m in plan.components:
                plan.components[m].module = None
    gc.collect()


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
           progress: Progress, large: bool = False) -> LoweredModel:
    precision = component_precision(options, target, comp.name, lowerer)
    lower_opts = LowerOptions(precision, options.minimum_deployment_target, options.compute_units, large=large)
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
