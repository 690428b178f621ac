"""md-export's typer app. Each command is a few lines over library calls; errors become one line
and an exit code (MD_EXPORT_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from md_export.core.errors import InputError, MdExportError
from md_export.core.io import INTERRUPTED, Interrupted
from md_export.cli.output import Output

app = typer.Typer(
    name="md-export",
    help="Export diffusion checkpoints (UNet, CLIP text encoder, VAE) to Core ML, TFLite and ONNX, with parity checks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # keeps each example line of the help on its own line
)

# -- shared options -----------------------------------------------------------------------------

CheckpointArg = typer.Argument(None,
    help="A diffusers pipeline folder, or a single-file .safetensors in the original LDM layout; "
         "omit for the bundled tiny default model.", show_default=False)
OutOpt = typer.Option(Path("out"), "-o", "--out", help="Output folder; each target goes to OUT/<target>/.")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary on stdout.")
QuietOpt = typer.Option(False, "-q", "--quiet", help="No progress or tables.")


def _export_command(target_default: Optional[str]):
    """Build the body shared by `export`, `coreml`, `tflite` and `onnx`."""

    def command(
        ctx: typer.Context,
        checkpoint: Optional[Path] = CheckpointArg,
        out: Path = OutOpt,
        targets: str = typer.Option("coreml,tflite,onnx", "--targets", help="Comma-separated: coreml, tflite, onnx.", hidden=target_default is not None),
        unet: Optional[Path] = typer.Option(None, "--unet", help="UNet folder (config.json + weights).", rich_help_panel="Components"),
        text_encoder: Optional[Path] = typer.Option(None, "--text-encoder", help="CLIP text encoder folder.", rich_help_panel="Components"),
        vae: Optional[Path] = typer.Option(None, "--vae", help="AutoencoderKL folder.", rich_help_panel="Components"),
        tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Folder with vocab.json and merges.txt.", rich_help_panel="Components"),
        scheduler: Optional[Path] = typer.Option(None, "--scheduler", help="Folder with scheduler_config.json.", rich_help_panel="Components"),
        height: Optional[int] = typer.Option(None, "--height", help="Image height; default from the UNet config.", rich_help_panel="Shapes"),
        width: Optional[int] = typer.Option(None, "--width", help="Image width; default from the UNet config.", rich_help_panel="Shapes"),
        unet_batch: Optional[int] = typer.Option(None, "--unet-batch",
            help="2 = classifier-free guidance in one call (default); 1 = guidance-free or distilled models.", rich_help_panel="Shapes"),
        with_encoder: bool = typer.Option(False, "--with-encoder", help="Also export the VAE encoder (image-to-image).", rich_help_panel="Shapes"),
        precision: Optional[str] = typer.Option(None, "--precision",
            help="fp32 or fp16 compute. Default: fp16 for Core ML, fp32 for TFLite and ONNX.", rich_help_panel="Lowering"),
        minimum_deployment_target: str = typer.Option("iOS17", "--minimum-deployment-target",
            help="Core ML: iOS16, iOS17 or iOS18.", rich_help_panel="Lowering"),
        compute_units: str = typer.Option("ALL", "--compute-units", help="Core ML: ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE.", rich_help_panel="Lowering"),
        steps: Optional[int] = typer.Option(None, "--steps", help="Default steps recorded for apps.", rich_help_panel="Lowering"),
        rewrite: list[str] = typer.Option([], "--rewrite",
            help="Add a rewrite (repeatable), e.g. attention=split-einsum, linear-to-conv, gpu-composites; "
                 "see `md-export rewrites`.", rich_help_panel="Lowering"),
        no_default_rewrites: bool = typer.Option(False, "--no-default-rewrites",
            help="Start from no rewrites instead of the target's defaults.", rich_help_panel="Lowering"),
        recipe: Optional[Path] = typer.Option(None, "--recipe",
            help="TOML recipe file, or a shipped recipe's name (a family name, mobilediffusion-ios, "
                 "mobilediffusion-android): targets, shapes, rewrites, compression, parity floors; options "
                 "given here win.", rich_help_panel="Recipe"),
        family: Optional[str] = typer.Option(None, "--family",
            help="Model family (see `md-export families`); default: detected. Needed for single files other "
                 "than SD 1.x/2.x.", rich_help_panel="Recipe"),
        lora: list[Path] = typer.Option([], "--lora",
            help="LoRA .safetensors fused into the UNet and text encoder before export (repeatable).", rich_help_panel="Recipe"),
        lora_scale: list[float] = typer.Option([], "--lora-scale", help="Scale per --lora (one value applies to all; default 1.0).", rich_help_panel="Recipe"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .bin/.ckpt pickles (unpickling runs code)."),
        quantize: list[str] = typer.Option([], "--quantize",
            help="Compression: LEVEL for every model or COMPONENT=LEVEL (repeatable). Core ML: fp16, int8, "
                 "w8a8, palettize-8/6/4/2 (-g16: per grouped channel, iOS18), mixed-bit:4.5; TFLite: fp16, "
                 "int8, w8a8, int4-block32, mixed:fc=int8,conv=fp16; ONNX: fp16, int8, w8a8.", rich_help_panel="Compression"),
        keep: list[str] = typer.Option([], "--keep",
            help="COMPONENT=LEVEL: a component keeps this level instead, e.g. vae_decoder=fp16 (or "
                 "fp32/none).", rich_help_panel="Compression"),
        chunk_unet: bool = typer.Option(False, "--chunk-unet",
            help="Core ML: split the UNet into pieces under --chunk-limit-mb (at least two), chained and "
                 "checked against the whole; for iOS, which loads pieces under 1 GB.", rich_help_panel="Compression"),
        chunk_limit_mb: int = typer.Option(1000, "--chunk-limit-mb",
            help="Core ML: largest UNet piece in MB with --chunk-unet (or a recipe's chunk_over_mb).", rich_help_panel="Compression"),
        npu: list[str] = typer.Option([], "--npu", rich_help_panel="Compression",
            help="TFLite: also compile each model ahead of time for these NPUs, e.g. qualcomm:SM8650,SM8750 (needs md-export\\[npu]; "
                 "see docs/npu.md). Writes the AI Pack layout in the bundle's ai_pack/."),
        layout: str = typer.Option("md-export", "--layout",
            help="Core ML: md-export (OUT/coreml/, md-export's contract) or apple (OUT/coreml-apple/: the files, names "
                 "and inputs apple/ml-stable-diffusion's Swift package loads).", rich_help_panel="Layout"),
        force_layout: bool = typer.Option(False, "--force-layout",
            help="apple: export a checkpoint the package cannot run as exported (LCM, v-prediction, trailing "
                 "schedules) anyway.", rich_help_panel="Layout"),
        compile_models: bool = typer.Option(False, "--compile",
            help="apple: compile each .mlpackage to the .mlmodelc the package loads (xcrun coremlcompiler; macOS only).",
            rich_help_panel="Layout"),
        force: bool = typer.Option(False, "--force", help="Replace existing bundles."),
        no_check: bool = typer.Option(False, "--no-check", help="Skip the parity check after exporting."),
        json_out: bool = JsonOpt,
        quiet: bool = QuietOpt,
    ):
        from md_export.checkpoint.folder import Checkpoint
        from md_export.config.options import ExportOptions, lora_pairs, parse_targets
        from md_export.core.io import portable_command
        from md_export.export import export

        output = Output(json_out, quiet)
        chosen = (target_default,) if target_default else parse_targets(targets)
        options_lora = lora_pairs(lora, lora_scale)
        from md_export.config.options import quantize_per_target, rewrites_per_target
        from md_export.config.recipe import load_recipe
        from md_export.config.resolve import apply_recipe, check_family
        from md_export.config.validate import check_options

        loaded = load_recipe(recipe) if recipe is not None else None
        if precision is not None and precision not in ("fp32", "fp16"):
            raise InputError(f"--precision {precision}: use fp32 or fp16")
        options = ExportOptions(
            targets=chosen, out=out, height=height, width=width, unet_batch=unet_batch, with_encoder=with_encoder,
            precision={t: precision for t in chosen} if precision else {},
            minimum_deployment_target=minimum_deployment_target, compute_units=compute_units, force=force, steps=steps,
            command=shlex.join(["md-export", *portable_command(sys.argv[1:])]),
            rewrites=rewrites_per_target(chosen, rewrite, no_default_rewrites, loaded),
            quantize=quantize_per_target(chosen, quantize, keep),
            chunk_unet=chunk_unet, chunk_limit_mb=chunk_limit_mb, npu=tuple(npu),
            layout=layout, force_layout=force_layout, compile=compile_models,
        )
        from md_export.core.names import LAYOUTS

        if layout not in LAYOUTS:
            raise InputError(f"--layout {layout}: use one of {', '.join(LAYOUTS)}")
        if (force_layout or compile_models) and layout != "apple":
            raise InputError(f"{'--force-layout' if force_layout else '--compile'}: only with --layout apple")
        if chunk_unet and "coreml" not in chosen:
            raise InputError("--chunk-unet: splits the Core ML UNet only; add coreml to --targets (or use `md-export coreml`)")
        if npu:
            from md_export.npu.targets import parse_npu_targets

            if "tflite" not in chosen:
                raise InputError("--npu: compiles TFLite models only; add tflite to --targets (or use `md-export tflite`)")
            parse_npu_targets(list(npu))  # unknown SoCs and vendors without an SDK here fail now, before any work
        if chunk_limit_mb < 1:
            raise InputError(f"--chunk-limit-mb {chunk_limit_mb}: give the largest piece size in MB (e.g. 1000)")
        given_paths = [p for p in (checkpoint, unet, text_encoder, vae, tokenizer, scheduler, *lora) if p is not None]
        # refused here, before the checkpoint is read; export() checks again once a recipe has chosen the targets
        check_options(options if loaded is None else replace(options, targets=()), inputs=given_paths)
        ckpt = Checkpoint.open(checkpoint, unet=unet, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer,
                               scheduler=scheduler, allow_pickle=allow_pickle,
                               family=family or (loaded.family if loaded and checkpoint is not None and checkpoint.is_file() else None),
                               lora=options_lora)
        if loaded is not None:
            check_family(loaded, ckpt)
            sources = {k: ctx.get_parameter_source(k) for k in ctx.params}  # typer vendors click: compare by name
            given = {k for k, src in sources.items() if getattr(src, "name", "") == "COMMANDLINE"}
            options = apply_recipe(loaded, options, given, targets_fixed=target_default is not None)
            chosen = options.targets
        output.print(f"[bold]md-export[/] {ckpt.describe()} -> {', '.join(str(out / t) for t in chosen)}")
        results = export(ckpt, options, output.progress())
        summary = {"bundles": [{"target": r.target, "path": str(r.bundle), "models": {
            n: {k: m[k] for k in ("file", "chunks", "precision", "bytes", "sha256") if k in m} for n, m in r.manifest["models"].items()}} for r in results]}
        exit_code = 0
        if not no_check:
            # the recipe named on this command line sets the check's floors, as `check --recipe` would
            exit_code = _check_after_export([r.bundle for r in results], output, summary, recipe_floors=options.thresholds)
        for r in results:
            sizes = ", ".join(f"{n} {m['bytes'] / 1e6:.1f} MB" for n, m in r.manifest["models"].items())
            output.print(f"[green]wrote[/] {r.bundle}  ({sizes})")
            for caveat in r.manifest.get("options", {}).get("layout_caveats", []):
                output.print(f"[yellow]note[/] {caveat}")
        output.emit(summary)
        raise typer.Exit(exit_code)

    return command


def _check_after_export(bundles, output: Output, summary: dict, recipe_floors: dict | None = None) -> int:
    try:
        from md_export.verify.check import check_bundles
    except ImportError:
        output.print("[yellow]parity check not available in this build; bundles are unchecked[/]")
        summary["parity"] = {"status": "not-run"}
        return 1
    reports = check_bundles(bundles, progress=output.progress(), recipe_floors=recipe_floors)
    summary["parity"] = [r.summary() for r in reports]
    for r in reports:
        output.print(r.table())
    return max((r.exit_code() for r in reports), default=0)


EXAMPLES_EXPORT = """

Examples:

    md-export export       (the bundled tiny default model, all three formats)
    md-export export ./ckpt -o out/ --targets coreml,tflite,onnx
    md-export export ./ckpt --recipe recipes/mobilediffusion-ios.toml -o out/
    md-export export model.safetensors --family sd15
    md-export export ./ckpt --lora style.safetensors --lora-scale 0.8
    md-export export --unet u/ --text-encoder te/ --vae v/ --tokenizer tok/ -o out/
"""

app.command("export", help="Export to several targets at once (all three by default)." + EXAMPLES_EXPORT)(_export_command(None))
app.command("coreml",
    help="Export a Core ML bundle (.mlpackage, ML program, fp16 compute by default).\n\n    "
         "md-export coreml ./ckpt -o out/ --minimum-deployment-target iOS17\n\n    "
         "md-export coreml ./ckpt --layout apple -o out/      (out/coreml-apple/ for apple/ml-stable-diffusion)\n\n    "
         "md-export coreml ./ckpt --layout apple --chunk-unet -o out/")(_export_command("coreml"))
app.command("tflite", help="Export a TFLite (LiteRT) bundle, one named signature per model.\n\n    md-export tflite ./ckpt -o out/")(_export_command("tflite"))
app.command("onnx", help="Export an ONNX bundle (dynamo exporter; external data over 2 GB).\n\n    md-export onnx ./ckpt -o out/")(_export_command("onnx"))


@app.command("rewrites")
def rewrites_cmd(target: Optional[str] = typer.Option(None, "--target", help="Only rewrites for coreml, tflite or onnx."), json_out: bool = JsonOpt):
    """Every rewrite: targets, whether it keeps numerics, default for which target, what it matches.

        md-export rewrites
        md-export coreml ./ckpt --rewrite attention=split-einsum --rewrite linear-to-conv
        md-export tflite ./ckpt --no-default-rewrites
    """
    from md_export.rewrites.registry import listing
    from md_export.cli.render_rewrites import render_rewrites

    output = Output(json_out)
    data = [r for r in listing() if target is None or target in r["targets"]]
    render_rewrites(output, data)
    output.emit(data)


@app.command("lint")
def lint_cmd(
    paths: list[Path] = typer.Argument(..., help="Bundles, or folders of bundles."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on any finding."),
    json_out: bool = JsonOpt,
):
    """Per model: the op histogram and every op, dtype, rank or shape the accelerator path is known
    to reject (TFLite: GPU delegate; Core ML: Neural Engine; ONNX: mobile execution providers).

        md-export lint out/tflite
        md-export lint out/coreml --strict --json
    """
    from md_export.verify.lint import lint_paths, render_lint

    output = Output(json_out)
    data = lint_paths(paths)
    render_lint(output, data)
    output.emit(data)
    raise typer.Exit(1 if strict and any(m["findings"] for b in data for m in b["models"].values()) else 0)


@app.command("families")
def families_cmd(json_out: bool = JsonOpt):
    """Registered model families: what each expects (text encoder, guidance, steps) and its recipe.

        md-export families
        md-export families --json
    """
    from md_export.config.recipe import recipes_of
    from md_export.families.registry import all_families

    output = Output(json_out)
    data = [{**f.describe(), "recipes": recipes_of(f.name)} for f in all_families().values()]
    for d in data:
        extra = " + timestep_cond" if d["timestep_cond"] else ""
        output.print(f"[bold]{d['name']:<16}[/] {d['description']}")
        output.print(f"{'':<17}text: {d['text_encoder']}; {d['resolution']}px; guidance {d['guidance']} (UNet batch {d['unet_batch']}{extra}); "
                     f"{d['default_steps']} steps {d['scheduler']}; {d['prediction_type']}; "
                     f"--recipe {', '.join(d['recipes']) or '(none shipped)'}")
    output.emit(data)


@app.command("init")
def init_cmd(
    family: str = typer.Argument(..., help="A registered family (see `md-export families`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to write (diffusers layout)."),
    size: str = typer.Option("tiny", "--size", help="tiny (same topology, small widths) or full (the published size)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty folder."),
    json_out: bool = JsonOpt,
):
    """Write a random-weight checkpoint of a family's architecture (seeded; tokenizer from the default model).

        md-export init mobilediffusion --size tiny -o ./md-tiny
        md-export init sd15 --size full -o /tmp/sd15-random
    """
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import count_parameters
    from md_export.checkpoint.init import init_checkpoint

    output = Output(json_out)
    folder = init_checkpoint(family, out, size=size, seed=seed, force=force)
    ck = Checkpoint.open(folder)
    params = {"unet": count_parameters(ck.load_unet()), "text_encoder": count_parameters(ck.load_text_encoder()),
              "vae": count_parameters(ck.load_vae())}
    output.print(f"[green]wrote[/] {folder}  ({family}, {size}, seed {seed}; parameters: "
                 + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in params.items()) + ")")
    output.emit({"path": str(folder), "family": family, "size": size, "seed": seed, "parameters": params})


@app.command("inspect")
def inspect_cmd(
    path: Optional[Path] = typer.Argument(None, help="A checkpoint folder, a bundle, or a folder of bundles; omit for the default model."),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    unet_batch: Optional[int] = typer.Option(None, "--unet-batch"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Show what an export with this recipe would record."),
    json_out: bool = JsonOpt,
):
    """Show what a checkpoint holds and what would be exported (with the family's defaults, as
    export records them), or what a bundle holds.

        md-export inspect ./ckpt
        md-export inspect ./ckpt --recipe mobilediffusion-ios
        md-export inspect out/coreml
    """
    from md_export.checkpoint.folder import Checkpoint
    from md_export.tools.inspect import inspect_bundles, inspect_checkpoint, is_bundle_path
    from md_export.cli.render import render_bundle, render_checkpoint

    output = Output(json_out)
    if path is not None and is_bundle_path(path):
        data = inspect_bundles(path)
        for b in data:
            render_bundle(output, b)
        output.emit(data)
    else:
        from md_export.config.recipe import load_recipe

        loaded = load_recipe(recipe) if recipe is not None else None
        data = inspect_checkpoint(Checkpoint.open(path), loaded, height=height, width=width, unet_batch=unet_batch, steps=steps)
        render_checkpoint(output, data)
        output.emit(data)


@app.command("sensitivity")
def sensitivity_cmd(
    checkpoint: Optional[Path] = CheckpointArg,
    target: str = typer.Option("coreml", "--target", help="coreml (k-means palettes of 8/6/4/2 bits) or tflite (fp16/int8/int4 per channel)."),
    out: Path = typer.Option(Path("sensitivity"), "-o", "--out", help="Folder for <component>.json and <component>.png."),
    component: list[str] = typer.Option([], "--component", help="Component to analyse (repeatable; default unet, text_encoder, vae_decoder)."),
    average_bits: Optional[float] = typer.Option(None, "--average-bits", help="Also pick bits per layer for this parameter-weighted average."),
    samples: int = typer.Option(4, "--samples", help="Recorded calibration inputs per component."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Score the layers as Ray tasks: local, auto (RAY_ADDRESS), "
                                      "ray://host:port; the checkpoint must be at the same path on every node."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="With --ray local: CPUs of the local instance (default: all)."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Per-layer sensitivity to weight compression: each conv/linear layer compressed alone at each
    bit width, PSNR of the component output over inputs recorded from the reference pipeline on
    the bundled prompts. Writes a JSON recipe and a PNG plot per component.

        md-export sensitivity ./ckpt --target coreml -o sens/
        md-export sensitivity --component unet --average-bits 4.5 -o sens/
        md-export sensitivity ./ckpt --target coreml -o sens/ --ray auto
    """
    from md_export.tools.sensitivity import run_sensitivity

    output = Output(json_out, quiet)
    analyze = None
    if ray is not None and ray.strip() not in ("off", "serial", "none", "no"):
        from md_export.sweep.run import ray_mode
        from md_export.sweep.sensitivity import ray_analyzer

        _, address = ray_mode(ray)
        analyze = ray_analyzer(checkpoint, address, num_cpus=num_cpus,
                               on_piece=lambda k, n: output.print(f"  {k}/{n} layer pieces scored"))
    written = run_sensitivity(checkpoint, target, out, component, average_bits, samples, output.progress(),
                              on_written=lambda n, w: output.print(f"[green]wrote[/] {w['json']} and {w['png']} ({w['layers']} layers)"),
                              analyze=analyze)
    output.emit(written)


@app.command("sweep")
def sweep_cmd(
    spec: Optional[Path] = typer.Argument(None, help="A sweep file (TOML, schema_version 1); see sweeps/default.toml."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder: cells/, sweep.json, sweep.md, plots/."),
    ray: Optional[str] = typer.Option(None, "--ray", help="local, auto (RAY_ADDRESS), ray://host:port, or off; default: Ray if installed."),
    report: Optional[Path] = typer.Option(None, "--report", help="Only merge the finished cells of this sweep folder again."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs for a local Ray instance (default: all)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the cells that failed with md-export's own error."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any cell falls below its parity floor."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Export and check many cells (checkpoints or families x targets x levels), each a Ray task
    or, without Ray, a child process one at a time; merged into sweep.json, sweep.md and plots.

        md-export sweep sweeps/default.toml -o run/
        md-export sweep sweep.toml -o sweeps/run1 --ray auto
        md-export sweep --report sweeps/run1
    """
    from md_export.sweep.cli import sweep_command

    raise typer.Exit(sweep_command(spec, report or out, ray, report is not None, num_cpus=num_cpus,
                                   retry_failed=retry_failed, strict=strict, json_out=json_out, quiet=quiet))


@app.command("env")
def env_cmd(json_out: bool = JsonOpt):
    """Versions of torch, coremltools, litert-torch, onnxruntime and friends, and known-bad combinations."""
    from md_export.tools.environment import report
    from md_export.cli.render import render_env

    output = Output(json_out)
    data = report()
    render_env(output, data)
    output.emit(data)
    raise typer.Exit(1 if any(f["level"] == "error" for f in data["findings"]) else 0)


@app.command("check")
def check_cmd(
    paths: list[Path] = typer.Argument(..., help="Bundles, or folders of bundles (out/ checks out/coreml, out/tflite, out/onnx)."),
    samples: int = typer.Option(2, "--samples", help="Seeded inputs per model."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Reference checkpoint, if not where the manifest says."),
    threshold: list[str] = typer.Option([], "--threshold", help="PSNR floor override, MODEL=DB (text_encoder, unet, vae_decoder, end_to_end, all)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the floors of this recipe (file or shipped name) where --threshold gives none."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip comparing model files with the manifest's sha256 (reported as skipped)."),
    allow_skip: bool = typer.Option(False, "--allow-skip", help="A check that could not run (runtime missing) does not fail the run."),
    no_e2e: bool = typer.Option(False, "--no-e2e", help="Skip the end-to-end image comparison."),
    e2e_steps: int = typer.Option(4, "--e2e-steps", help="Denoising steps for the end-to-end comparison."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the reports as JSON to this file ('-' for stdout)."),
    quiet: bool = QuietOpt,
):
    """Run every saved model in its own runtime (TFLite interpreter, onnxruntime, Core ML evaluator)
    against the fp32 PyTorch reference, then the whole text-to-image loop against diffusers.

    First every model file is compared with the manifest's sha256 and bytes. Floors come from
    --threshold, then --recipe, then md-export's defaults per compression level; floors recorded
    in the bundle can only raise them.

    Exit 0: every check meets its floor; 1: any falls short, could not run, or a file does not match
    its sha256; 2: bad input.

        md-export check out/
        md-export check out/coreml --samples 4 --seed 0 --json report.json
        md-export check out/ --recipe mobilediffusion-ios
    """
    from md_export.config.recipe import load_recipe
    from md_export.verify.check import check_bundles
    from md_export.verify.floors import parse_overrides

    _refuse_unwritable_json(json_path, "report.json")
    output = Output(json_path == "-", quiet)
    overrides = parse_overrides(threshold)
    recipe_floors = {t: dict(r.parity) for t, r in load_recipe(recipe).target.items()} if recipe is not None else None
    reports = check_bundles(paths, progress=output.progress(), samples=samples, seed=seed, checkpoint=checkpoint,
                            thresholds=overrides, recipe_floors=recipe_floors, verify=not no_verify, allow_skip=allow_skip,
                            end_to_end=not no_e2e, e2e_steps=e2e_steps)
    _report(output, reports, json_path)


@app.command("eval")
def eval_cmd(
    paths: list[Path] = typer.Argument(..., help="Bundles, or folders of bundles (out/ evaluates out/coreml, out/tflite, out/onnx)."),
    prompts: int = typer.Option(24, "--prompts", help="How many prompts of the fixed evaluation set."),
    seeds: int = typer.Option(2, "--seeds", help="Seeds per prompt (0, 1, ...)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps; default: the manifest's default_steps."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Reference checkpoint, if not where the manifest says."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Points the bundle may lose against the reference "
                                             "(default: 2 for fp32 and fp16 bundles, no floor for compressed levels)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the reports as JSON to this file ('-' for stdout)."),
    quiet: bool = QuietOpt,
):
    """Prompt accuracy: generate the fixed evaluation prompts with the bundle (its models in their
    runtime, as the apps run them) and with the fp32 PyTorch reference, same seeds and steps, and read
    every image back with a rule-based judge (shape, colour, background, size).

    Only for models trained on the shapes vocabulary (the bundled default model); others are refused.
    Writes prompt_accuracy.png (prompt rows: reference | bundle) into the bundle and the numbers into
    its parity.json. Exit 0: floors met (reference >= 90 %; fp32/fp16 bundles within 2 points of it);
    1: below a floor; 2: bad input.

        md-export eval out/
        md-export eval out/tflite --prompts 12 --seeds 1
    """
    from md_export.verify.prompt_accuracy import eval_bundles

    _refuse_unwritable_json(json_path, "eval.json")
    output = Output(json_path == "-", quiet)
    reports = eval_bundles(paths, progress=output.progress(), prompts=prompts, seeds=seeds, steps=steps, checkpoint=checkpoint,
                           max_drop=None if max_drop is None else max_drop / 100.0)
    _report(output, reports, json_path)


def _refuse_unwritable_json(json_path: str | None, example: str) -> None:
    """A --json report that cannot be written is refused before the run, not lost after it."""
    from md_export.config.validate import probe_writable

    if json_path and json_path != "-":
        if Path(json_path).is_dir():
            raise InputError(f"--json {json_path}: is a folder; give the file to write, e.g. {Path(json_path) / example}")
        probe_writable(Path(json_path).parent, "--json", json_path)


def _report(output, reports, json_path: str | None):
    """Print each report's table, write --json, and exit with the worst report's code."""
    for r in reports:
        output.print(r.table())
    data = [r.to_json() for r in reports]
    if json_path and json_path != "-":
        Path(json_path).write_text(__import__("json").dumps(data, indent=2) + "\n", encoding="utf-8")
    output.emit(data)
    raise typer.Exit(max(r.exit_code() for r in reports))


@app.command("generate")
def generate_cmd(
    bundle: Path = typer.Argument(..., help="An exported bundle (out/tflite, out/onnx or out/coreml)."),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    negative_prompt: str = typer.Option("", "--negative-prompt"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default: the manifest's default_steps."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale"),
    seed: int = typer.Option(0, "--seed"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="ddim, euler, dpmpp-2m or lcm; default from the manifest."),
    out: Path = typer.Option(Path("image.png"), "-o", "--out", help="PNG to write."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Make an image from a bundle, running its models in their runtime, as the apps do.

        md-export generate out/tflite --prompt "a red fox in snow" --steps 8 --seed 0 -o fox.png
    """
    import time

    from md_export.core.io import read_json
    from md_export.core.manifest import read_manifest
    from md_export.pipeline.image import save_png
    from md_export.pipeline.loop import generate
    from md_export.pipeline.tokenizer import ClipTokenizer
    from md_export.runtime.bundle import open_bundle
    from md_export.verify.check import tokenizer_folder
    from md_export.config.validate import check_generate, check_generate_bundle

    check_generate(steps, guidance_scale, seed, scheduler, out)
    output = Output(json_out, quiet)
    manifest = read_manifest(bundle)
    scheduler_config = read_json(bundle / "scheduler.json")
    check_generate_bundle(bundle, manifest, scheduler_config, steps)
    models, pipeline = open_bundle(bundle, manifest)
    tokenizer = ClipTokenizer.from_folder(tokenizer_folder(bundle, manifest), pad_token_id=manifest["pipeline"]["tokenizer"].get("pad_token_id"))
    t0 = time.perf_counter()
    with output.progress().stage("pipeline", f"generate ({steps or manifest['pipeline']['default_steps']} steps)", manifest["target"]):
        image = generate(models, pipeline, tokenizer, scheduler_config, prompt,
                         negative_prompt, steps=steps, guidance_scale=guidance_scale, seed=seed, scheduler=scheduler)
    save_png(out, image)
    seconds = time.perf_counter() - t0
    output.print(f"[green]wrote[/] {out} ({image.shape[-1]}x{image.shape[-2]}, {seconds:.1f} s)")
    output.emit({"image": str(out), "seconds": seconds, "bundle": str(bundle), "prompt": prompt, "seed": seed})


def _quiet_third_party() -> None:
    """Keep torch/torchao/TF/coremltools start-up chatter off the user's terminal
    (MD_EXPORT_DEBUG=1 keeps it). torch sets its loggers' levels when imported, so import first."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    # litert-torch's converter logs "oneDNN custom operations are on" from C++ at import, past
    # TF_CPP_MIN_LOG_LEVEL; off, the converter writes the same bytes (tiny default model, int8)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' pass-by-pass bars; md-export shows its own progress
    warnings.filterwarnings("ignore")
    import torch  # noqa: F401

    for name in list(logging.root.manager.loggerDict) + ["torch", "torchao", "coremltools", "absl", "transformers", "diffusers"]:
        if name.split(".")[0] in ("torch", "torchao", "coremltools", "absl", "transformers", "diffusers", "onnxscript", "litert_torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """(Exit, Abort, ClickException) classes of every click typer may use: recent typer vendors
    its own copy (typer._click, with Exit/Abort in typer.exceptions), older ones use click."""
    found: dict[str, list] = {"Exit": [], "Abort": [], "ClickException": []}
    for name in ("typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for key, classes in found.items():
            cls = getattr(mod, key, None)
            if isinstance(cls, type) and cls not in classes:
                classes.append(cls)
    return tuple(found["Exit"]), tuple(found["Abort"]), tuple(found["ClickException"])


def _terminate(signum, frame):
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("MD_EXPORT_DEBUG", "") not in ("", "0")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # CI timeouts and `docker stop`: clean up as for Ctrl-C
    if not debug:
        _quiet_third_party()
    exit_types, abort_types, usage_types = _click_exceptions()
    try:
        rv = app(args=argv, prog_name="md-export", standalone_mode=False)
        return rv if isinstance(rv, int) else 0  # standalone_mode=False returns typer.Exit's code
    except exit_types as e:
        return e.exit_code
    except abort_types:
        print("md-export: aborted", file=sys.stderr)
        return 130
    except usage_types as e:  # bad options or arguments: click's own message, exit 2
        e.show()
        return 2
    except MdExportError as e:
        if debug:
            traceback.print_exc()
        print(f"md-export: error: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, Interrupted) as e:
        code = 143 if isinstance(e, Interrupted) else 130
        cleaned = ", ".join(str(t) for t in INTERRUPTED)
        print(f"md-export: interrupted; nothing written to {cleaned}" if cleaned else "md-export: interrupted", file=sys.stderr)
        return code
    except Exception as e:  # a bug or an unexpected library failure: still one line, traceback on demand
        if debug:
            traceback.print_exc()
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"md-export: internal error: {type(e).__name__}: {detail} (set MD_EXPORT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 4


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
