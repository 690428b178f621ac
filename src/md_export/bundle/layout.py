"""Bundle layouts: where a target's bundle goes, what its models are called and take, and the files
beside them. "md-export" is the contract of docs/bundle-format.md (OUT/<target>/); "apple" is the
Core ML bundle apple/ml-stable-diffusion's Swift package loads (OUT/coreml-apple/, bundle.apple).
export.py calls these hooks, one per stage, and nothing else differs between layouts."""

from __future__ import annotations

from pathlib import Path

from md_export.bundle import apple
from md_export.bundle.write import copy_tokenizer, write_scheduler
from md_export.core.errors import InputError, UnknownNameError
from md_export.core.names import LAYOUTS


class Layout:
    name = "md-export"
    max_chunks: int | None = None  # a chunked UNet may have any number of pieces

    def folder(self, target: str) -> str:
        return target

    def check(self, options, ckpt, plan) -> list[str]:
        """Refuse what this layout cannot hold, before any heavy work; return accepted caveats."""
        return []

    def plan(self, plan, precisions: dict[str, str], pipeline: dict):
        return plan

    def place(self, path: Path, component: str) -> Path:
        return path

    def write_resources(self, bundle: Path, ckpt) -> None:
        copy_tokenizer(ckpt.tokenizer_dir, bundle)
        write_scheduler(bundle, ckpt.scheduler_config)

    def pipeline(self, plan, ckpt, options) -> dict:
        return plan.pipeline_json(ckpt, options.steps, options.scheduler)

    def manifest_fields(self, options, caveats: list[str]) -> dict:
        """Fields of the manifest beyond the common ones: {"layout": ..., "options": {...}}."""
        return {}

    def finish(self, bundle: Path, manifest, options) -> None:
        pass


class AppleLayout(Layout):
    name = apple.NAME
    max_chunks = 2  # UnetChunk1 + UnetChunk2 (StableDiffusionPipeline+Resources.swift)

    def folder(self, target: str) -> str:
        return apple.FOLDER

    def check(self, options, ckpt, plan) -> list[str]:
        if tuple(options.targets) != ("coreml",):
            raise InputError(f"--layout apple: a Core ML layout; use `md-export coreml --layout apple` (asked for {', '.join(options.targets)})")
        if options.compile:
            apple.refuse_compile_here(options.out / apple.FOLDER)
        return apple.refuse_unsupported(ckpt, plan, options.force_layout) + apple.notes(ckpt, plan.pipeline_json(ckpt))

    def plan(self, plan, precisions: dict[str, str], pipeline: dict):
        return apple.plan_for(plan, precisions, pipeline)

    def place(self, path: Path, component: str) -> Path:
        return apple.apple_path(path, component)

    def write_resources(self, bundle: Path, ckpt) -> None:
        apple.write_resources(bundle, ckpt)

    def pipeline(self, plan, ckpt, options) -> dict:
        return apple.pipeline_json(plan, ckpt, options.steps)

    def manifest_fields(self, options, caveats: list[str]) -> dict:
        extra = {"layout": self.name, "compile": bool(options.compile)}
        if options.force_layout:
            extra["force_layout"] = True
        if caveats:
            extra["layout_caveats"] = list(caveats)
        return {"layout": self.name, "options": extra}

    def finish(self, bundle: Path, manifest, options) -> None:
        apple.finish(bundle, manifest, options.force_layout, options.compile)


LAYOUT_CLASSES = {"md-export": Layout, "apple": AppleLayout}


def get_layout(name: str | None) -> Layout:
    name = name or "md-export"
    if name not in LAYOUT_CLASSES:
        raise UnknownNameError("layout", name, LAYOUTS)
    return LAYOUT_CLASSES[name]()
