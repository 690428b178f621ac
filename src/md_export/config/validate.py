"""Checks on the options of a run, made before any checkpoint is opened or model loaded: each
refusal is one line naming the option and what it takes (exit 2). `check_options` covers an
export (numbers, names, the output folder), `check_generate` a `generate` run. Only core is
imported here, so the checks cost nothing next to the work they guard."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from md_export.core.errors import InputError
from md_export.core.names import COMPUTE_UNITS, DEPLOYMENT_TARGETS, PRECISIONS, SCHEDULERS

MAX_STEPS = 1000  # no schedule md-export runs has more training timesteps than this by default
MAX_SIDE = 4096  # pixels per side: past this an export runs out of memory long before it reaches a phone


def _positive(flag: str, value, what: str = "a positive integer") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{flag} {value}: use {what}")


def check_options(options, ckpt=None, inputs=(), folders=None) -> None:
    """An ExportOptions (duck-typed: config.options imports the rewrite registry): numbers in range,
    names known, the output folder writable and not holding an input (`inputs`: paths given on the
    command line; with `ckpt`, its folders too). With `ckpt`, also the checks that need its
    scheduler (steps within the training schedule)."""
    _positive("--height", options.height, "a positive image height in pixels, e.g. 512")
    _positive("--width", options.width, "a positive image width in pixels, e.g. 512")
    for flag, v in (("--height", options.height), ("--width", options.width)):
        if v is not None and v > MAX_SIDE:
            raise InputError(f"{flag} {v}: larger than {MAX_SIDE} pixels; on-device models are exported at 256 to 1024")
    if options.unet_batch is not None and options.unet_batch not in (1, 2):
        raise InputError(f"--unet-batch {options.unet_batch}: use 2 (classifier-free guidance in one call) or 1 (no guidance)")
    _positive("--steps", options.steps, f"a number of denoising steps from 1 to {MAX_STEPS}")
    if options.steps is not None and options.steps > _train_steps(ckpt):
        raise InputError(f"--steps {options.steps}: more than the scheduler's {_train_steps(ckpt)} training timesteps")
    if options.scheduler is not None and options.scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler {options.scheduler}: use one of {', '.join(SCHEDULERS)}")
    if options.minimum_deployment_target not in DEPLOYMENT_TARGETS:
        raise InputError(f"--minimum-deployment-target {options.minimum_deployment_target}: use one of {', '.join(DEPLOYMENT_TARGETS)}")
    if options.compute_units not in COMPUTE_UNITS:
        raise InputError(f"--compute-units {options.compute_units}: use one of {', '.join(COMPUTE_UNITS)}")
    for key, p in options.precision.items():
        if p not in PRECISIONS:
            raise InputError(f"--precision {p} ({key}): use {' or '.join(PRECISIONS)}")
    _positive("--chunk-limit-mb", options.chunk_limit_mb, "the largest piece size in MB, e.g. 1000")
    for target, floors in options.thresholds.items():
        for model, db in floors.items():
            if not (isinstance(db, (int, float)) and math.isfinite(db)):
                raise InputError(f"{target} parity floor {model}={db}: use a finite PSNR in dB")
    # folders: the bundle folder of each target in the chosen layout (coreml-apple for --layout apple)
    check_output(options.out, folders if folders is not None else options.targets, options.force, [*map(Path, inputs), *_inputs(ckpt)])


def _train_steps(ckpt) -> int:
    if ckpt is None:
        return MAX_STEPS
    n = ckpt.scheduler_config.get("num_train_timesteps", MAX_STEPS)
    return n if isinstance(n, int) and n > 0 else MAX_STEPS


def _inputs(ckpt) -> list[Path]:
    if ckpt is None:
        return []
    paths = list(ckpt.component_dirs().values())
    if ckpt.source is not None:
        paths.append(Path(ckpt.source))
    return paths + [Path(f) for f, _ in ckpt.lora]


def check_output(out: Path, targets, force: bool, inputs=()) -> None:
    """-o OUT: a folder (or one that can be made) where this user can create the staging folders
    (probed by making and removing an empty temporary folder in the nearest existing parent), whose
    OUT/<target> bundles are folders, replaced only with --force and never holding an input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: is a file; give a folder (each target is written to OUT/<target>/)")
    for t in targets:
        dest = out / t
        if dest.exists() and not dest.is_dir():
            raise InputError(f"-o {out}: {dest} exists and is not a folder; move it away")
        if dest.exists() and not force:
            raise InputError(f"{dest}: already exists; pass --force to replace it")
        resolved = dest.resolve()
        for p in inputs:
            rp = Path(p).resolve()
            if rp == resolved or resolved in rp.parents:
                raise InputError(f"-o {out}: writing {dest} would replace {p}, an input of this export; choose another output folder")
    probe_writable(out, "-o")


def probe_writable(folder: Path, flag: str, given: Path | str | None = None) -> None:
    """Make and remove an empty temporary folder in `folder`, or in its nearest existing parent if
    it does not exist yet: nothing is left behind, and a read-only or foreign folder is refused now.
    The message names `given` (what the user typed, a file inside `folder`, say) or the folder."""
    folder = Path(folder)
    shown = folder if given is None else given
    base = folder
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{flag} {shown}: {base} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".md-export-probe-", dir=base)
        os.rmdir(probe)
    except OSError as e:
        raise InputError(f"{flag} {shown}: cannot create files in {base} ({e.strerror or e})") from None


def check_generate(steps, guidance_scale, seed, scheduler, out: Path) -> None:
    """`generate` options, before the bundle's models are opened."""
    _positive("--steps", steps, f"a number of denoising steps from 1 to {MAX_STEPS}")
    if steps is not None and steps > MAX_STEPS:
        raise InputError(f"--steps {steps}: more than {MAX_STEPS}; the schedules md-export runs have {MAX_STEPS} training timesteps")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise InputError(f"--guidance-scale {guidance_scale}: use a finite number (7.5 is usual; 1 turns guidance off)")
    if not -(2**63) <= seed < 2**64:  # what torch.Generator.manual_seed takes
        raise InputError(f"--seed {seed}: use an integer from -2**63 to 2**64-1")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler {scheduler}: use one of {', '.join(SCHEDULERS)}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"-o {out}: is a folder; give the PNG file to write, e.g. {out / 'image.png'}")
    if out.suffix.lower() != ".png":
        raise InputError(f"-o {out}: the image is written as PNG; give a file name ending in .png")
    probe_writable(out.parent, "-o", out)


def check_generate_bundle(bundle: Path, manifest: dict, scheduler_config: dict, steps) -> None:
    """`generate` against what the bundle holds: the steps fit its scheduler, and the pipeline's
    latent is the one its UNet takes (a hand-edited manifest must not allocate a huge latent)."""
    train = scheduler_config.get("num_train_timesteps")
    if steps is not None and isinstance(train, int) and steps > train:
        raise InputError(f"--steps {steps}: more than the bundle's scheduler has training timesteps ({train})")
    pipe = manifest["pipeline"]
    unet = manifest["models"].get("unet")
    if unet is None:
        return
    sample = next((t for t in unet["inputs"] if t["name"] == "sample"), None)
    if sample is None or len(sample["shape"]) != 4:
        return
    want = [pipe["latent_channels"], pipe["latent_height"], pipe["latent_width"]]
    if list(sample["shape"][1:]) != want:
        raise InputError(f"{Path(bundle) / 'manifest.json'}: pipeline latent {want} is not what the UNet takes ({list(sample['shape'][1:])}); "
                         "the manifest was edited or is from another bundle")
