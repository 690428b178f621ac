"""`--layout apple`: a Core ML bundle that apple/ml-stable-diffusion's Swift package loads as it
is (`StableDiffusionPipeline(resourcesAt:)`), written to OUT/coreml-apple/ so that it sits beside
md-export's own OUT/coreml/ and `md-export check OUT/` finds both.

What the package reads is the committed spec apple_spec.json (each fact with the Swift file and
line it comes from). This module holds what the layout does with it: the checks that refuse a
checkpoint the package cannot run, the files beside the models (vocab.json and merges.txt at the
root, the scheduler the package runs), the pipeline facts in the manifest, the Apple file names,
`validate` (a bundle against every rule of the spec) and `--compile` (xcrun coremlcompiler, macOS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from md_export.bundle.write import TOKENIZER_FILES
from md_export.components.apple import APPLE_NAMES, apple_plan
from md_export.compress.chunk import package_io
from md_export.core.errors import ConversionError, InputError
from md_export.core.io import read_json, write_json
from md_export.core.manifest import MANIFEST, Manifest

NAME = "apple"
FOLDER = "coreml-apple"
SPEC_PATH = Path(__file__).with_name("apple_spec.json")
PACKAGE = "apple/ml-stable-diffusion"


@lru_cache(maxsize=1)
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def _rule(rule_id: str) -> dict:
    for section in (spec()["resources"], spec()["pipeline"]):
        for r in section:
            if r["id"] == rule_id:
                return r
    raise KeyError(rule_id)


def _src(rule: dict) -> str:
    return rule["source"].rsplit("/", 1)[-1]


def package_scheduler(ckpt_scheduler: dict) -> dict:
    """The scheduler the package runs with `--scheduler dpmpp` (DPM-Solver++ 2M, its fixed
    betas, linspace spacing), as a diffusers config: what md-export's loop and the diffusers
    reference run in `md-export check`."""
    fixed = {}
    for r in spec()["pipeline"]:
        fixed.update(r.get("scheduler", {}))
    return {
        "_class_name": "DPMSolverMultistepScheduler",
        **fixed,
        "trained_betas": None,
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "use_karras_sigmas": False,
        "steps_offset": 0,
        "_md_export_checkpoint_scheduler": ckpt_scheduler.get("_class_name", ""),
    }


# -- what the package cannot run -------------------------------------------------------------------


def unsupported(ckpt, plan) -> list[str]:
    """Reasons the package cannot run this checkpoint as exported (empty when it can)."""
    family = ckpt.family or "this checkpoint"
    sched, vae = ckpt.scheduler_config, ckpt.vae_config
    out = []
    if plan.timestep_cond_dim:
        r = spec()["models"]["unet"]["input_names_only"]
        out.append(f"{family}: its UNet takes timestep_cond (LCM's embedded guidance), which the package never feeds ({_src(r)})")
    pred = sched.get("prediction_type", "epsilon")
    if pred != "epsilon":
        out.append(f"{family}: {pred} prediction; the package's schedulers assume epsilon ({_src(_rule('epsilon'))})")
    if sched.get("timestep_spacing") == "trailing":
        out.append(f"{family}: its trailing schedule (few steps from t=999, e.g. SD-Turbo's single step) is not one the package has "
                   f"(PNDM, DPM-Solver++ linspace/leading/karras: {_src(_rule('spacing'))})")
    betas = _rule("betas")["scheduler"]
    differ = [k for k, v in betas.items() if sched.get(k, v) != v]
    if sched.get("trained_betas") or sched.get("rescale_betas_zero_snr"):
        differ.append("trained_betas" if sched.get("trained_betas") else "rescale_betas_zero_snr")
    if differ:
        got = ", ".join(f"{k}={sched.get(k)!r}" for k in differ)
        out.append(f"{family}: scheduler {got}; the package's betas are fixed ({_src(_rule('betas'))})")
    scale = float(vae.get("scaling_factor", 0.18215))
    if abs(scale - _rule("scale-factor")["value"]) > 1e-9:
        out.append(f"{family}: VAE scaling_factor {scale}; the package's CLI decodes with 0.18215 ({_src(_rule('scale-factor'))})")
    if float(vae.get("shift_factor") or 0.0) != 0.0:
        out.append(f"{family}: VAE shift_factor {vae.get('shift_factor')}; the package decodes with none ({_src(_rule('shift-factor'))})")
    if int(vae.get("out_channels", 3)) != 3:
        out.append(f"{family}: the decoder makes {vae.get('out_channels')} channels; the package converts exactly 3 to an image (CGImage+vImage.swift)")
    if plan.with_encoder and int(vae.get("latent_channels", 4)) != 4:
        out.append(f"{family}: {vae.get('latent_channels')} latent channels; the package splits the encoder output as 4 + 4 (Encoder.swift)")
    return out


def notes(ckpt, pipeline: dict) -> list[str]:
    """What differs from the checkpoint's own pipeline but still runs."""
    tok = pipeline["tokenizer"]
    out = []
    if tok["pad_token_id"] != tok["eos_token_id"]:
        out.append(f"the checkpoint's tokenizer pads with id {tok['pad_token_id']}; the package pads with <|endoftext|> "
                   f"({_src(_rule('pad-token'))}), so text embeddings past the prompt differ from the checkpoint's")
    return out


def refuse_unsupported(ckpt, plan, force: bool) -> list[str]:
    reasons = unsupported(ckpt, plan)
    if reasons and not force:
        raise InputError(f"--layout apple: {'; '.join(reasons)}; pass --force-layout to export anyway")
    return reasons


def compile_command(folder: Path) -> str:
    return f'cd {folder} && for p in *.mlpackage; do xcrun coremlcompiler compile "$p" .; done'


def refuse_compile_here(folder: Path) -> None:
    if sys.platform != "darwin":
        raise InputError(f"--compile: Xcode's coremlcompiler runs on macOS only; export without --compile, then on a Mac run: {compile_command(folder)}")


def compile_packages(folder: Path) -> list[str]:
    """Compile every .mlpackage of the folder to .mlmodelc beside it (what the package loads)."""
    if shutil.which("xcrun") is None:
        raise InputError(f"--compile: xcrun not found; install Xcode's command line tools, or run later: {compile_command(folder)}")
    made = []
    for pkg in sorted(folder.glob("*.mlpackage")):
        proc = subprocess.run(["xcrun", "coremlcompiler", "compile", str(pkg), str(folder)], capture_output=True, text=True)
        compiled = folder / f"{pkg.stem}.mlmodelc"
        if proc.returncode != 0 or not compiled.is_dir():
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise ConversionError(f"coreml: xcrun coremlcompiler compile {pkg.name} failed (exit {proc.returncode})"
                                  + (f": {detail[0]}" if detail else ""))
        made.append(compiled.name)
    return made


# -- the export hooks (md_export.bundle.layout.AppleLayout calls these) ---------------------------


def plan_for(plan, precisions: dict[str, str], pipeline: dict):
    return apple_plan(plan, precisions, pipeline)


def apple_path(path: Path, component: str) -> Path:
    """Move a component's package to its Apple name (Unet.mlpackage, ...)."""
    dest = path.with_name(APPLE_NAMES[component] + path.suffix)
    if dest != path:
        path.rename(dest)
    return dest


def write_resources(bundle: Path, ckpt) -> None:
    """vocab.json and merges.txt at the root (with the tokenizer's config files, which the
    package ignores and the diffusers reference reads), and the package's scheduler."""
    for name in TOKENIZER_FILES:
        src = ckpt.tokenizer_dir / name
        if src.is_file():
            shutil.copyfile(src, bundle / name)
    write_json(bundle / "scheduler.json", package_scheduler(ckpt.scheduler_config))


def pipeline_json(plan, ckpt, steps: int | None) -> dict:
    """The manifest's pipeline of an Apple bundle: guidance as the package does it (classifier-free
    at its default scale 7.5 whatever the UNet batch), its DPM-Solver++, the decoder not scaling,
    the tokenizer files at the root, padded as the package pads."""
    pipe = replace(plan, unet_batch=2).pipeline_json(ckpt, steps, "dpmpp-2m")
    tok = pipe["tokenizer"]
    pipe.update(unet_batch=plan.unet_batch, decoder_applies_scaling=False, scheduler="dpmpp-2m")
    pipe["tokenizer"] = dict(tok, vocab="vocab.json", merges="merges.txt", pad_token_id=tok["eos_token_id"])
    return pipe


# -- validate a bundle against the spec ------------------------------------------------------------


class Problem(str):
    """A rule a bundle breaks: the message, with `rule` (its spec id) and `kind` (file | model |
    pipeline; pipeline problems are what --force-layout accepts)."""

    rule: str
    kind: str

    def __new__(cls, rule: str, kind: str, message: str):
        obj = super().__new__(cls, message)
        obj.rule, obj.kind = rule, kind
        return obj


def _bindings(pipe: dict) -> dict:
    return {"B": pipe["unet_batch"], "C": pipe["latent_channels"], "h": pipe["latent_height"], "w": pipe["latent_width"],
            "H": pipe["image_height"], "W": pipe["image_width"], "D": pipe["text_hidden_size"], "S": pipe["text_max_length"]}


def _shape(symbolic: list, env: dict) -> list[int]:
    return [env[d] if isinstance(d, str) else d for d in symbolic]


def _where(rule: dict) -> str:
    return f"({_src(rule)})"


def _check_io(file: str, kind: str, specs: list[dict], found: list[dict], env: dict, problems: list) -> None:
    by_name = {f["name"]: f for f in found}
    for r in specs:
        if "shape" not in r and "name" not in r and "position" not in r:
            continue  # a rule about values, not declared IO
        if "name" in r:
            got = by_name.get(r["name"])
            if got is None:
                problems.append(Problem(r["id"], "model", f"{file}: no {kind} named '{r['name']}' {_where(r)}; has {sorted(by_name)}"))
                continue
        else:
            if len(found) <= r["position"]:
                problems.append(Problem(r["id"], "model", f"{file}: no {kind} {r['position']} {_where(r)}"))
                continue
            got = found[r["position"]]
        what = f"{file}: {kind} '{got['name']}'"
        if "dtype" in r and got["dtype"] not in r["dtype"]:
            problems.append(Problem(r["id"], "model", f"{what} is {got['dtype']}, the package needs {' or '.join(r['dtype'])} {_where(r)}"))
        if "shape" in r and got["shape"] != _shape(r["shape"], env):
            problems.append(Problem(r["id"], "model", f"{what} has shape {got['shape']}, expected {_shape(r['shape'], env)} {_where(r)}"))


def _check_count(file: str, kind: str, rule: dict | None, found: list, problems: list) -> None:
    if rule is not None and len(found) != rule["count"]:
        problems.append(Problem(f"{kind}-count", "model", f"{file}: {len(found)} {kind}s ({', '.join(f['name'] for f in found)}), "
                                                          f"the package reads exactly {rule['count']} {_where(rule)}"))


def _check_unet(bundle: Path, files: list[str], env: dict, problems: list) -> None:
    s = spec()["models"]["unet"]
    names = [r["name"] for r in s["inputs"]]
    if env["B"] not in s["batch"]["values"]:
        problems.append(Problem("batch", "model", f"UNet batch {env['B']}: the package runs 1 or 2 {_where(s['batch'])}"))
    if len(files) == 1:
        ins, outs = package_io(bundle / files[0])
        _check_io(files[0], "input", s["inputs"], ins, env, problems)
        extra = [i["name"] for i in ins if i["name"] not in names]
        if extra:
            problems.append(Problem("unet-inputs", "model", f"{files[0]}: inputs {extra} are never fed {_where(s['input_names_only'])}"))
        _check_count(files[0], "output", {"count": 1, **s["outputs"][0]}, outs, problems)
        _check_io(files[0], "output", s["outputs"], outs, env, problems)
        return
    chunk_rule = s["chunks"]
    if len(files) != chunk_rule["count"]:
        problems.append(Problem("unet-chunks-exactly-two", "file", f"{len(files)} UNet chunks; the package loads exactly two "
                                                                   f"{_where(_rule('unet-chunks-exactly-two'))}"))
        return
    (in1, out1), (in2, out2) = package_io(bundle / files[0]), package_io(bundle / files[1])
    if "sample" not in {i["name"] for i in in1}:
        problems.append(Problem("sample-in-first", "model", f"{files[0]}: no 'sample' input {_where(s['sample_in_first_model'])}"))
    produced = {o["name"] for o in out1}
    fed = produced | set(names)
    missing = [i["name"] for i in in2 if i["name"] not in fed]
    if missing:
        problems.append(Problem("unet-chunks", "model", f"{files[1]}: inputs {missing} are neither outputs of {files[0]} nor UNet inputs {_where(chunk_rule)}"))
    originals = [i for i in in1 + in2 if i["name"] not in produced]
    seen = {}
    for i in originals:
        seen.setdefault(i["name"], i)
    extra = [n for n in seen if n not in names]
    if extra:
        problems.append(Problem("unet-inputs", "model", f"UNet chunks: inputs {extra} are never fed {_where(s['input_names_only'])}"))
    _check_io("+".join(files), "input", [r for r in s["inputs"] if r["name"] in seen], list(seen.values()), env, problems)
    _check_count(files[1], "output", {"count": 1, **s["outputs"][0]}, out2, problems)
    _check_io(files[1], "output", s["outputs"], out2, env, problems)


def validate(bundle: Path) -> list[Problem]:
    """Every rule of the spec the bundle at `bundle` breaks (empty: the package can load it)."""
    bundle = Path(bundle)
    manifest = read_json(bundle / MANIFEST)
    problems: list[Problem] = []
    if manifest.get("layout") != NAME:
        return [Problem("layout", "file", f"{bundle / MANIFEST}: layout is {manifest.get('layout')!r}, not 'apple'")]
    pipe = manifest["pipeline"]
    env = _bindings(pipe)
    models = manifest["models"]
    for r in spec()["resources"]:
        if "file" not in r:
            continue
        comp = r.get("component")
        if comp is not None:
            if comp not in models:
                if r["required"]:
                    problems.append(Problem(r["id"], "file", f"{bundle}: no {r['file']} model {_where(r)}"))
                continue
            chunks = models[comp].get("chunks")
            files = [c["file"] for c in chunks] if chunks else [models[comp].get("file")]
            allowed = [f"{c}.mlpackage" for c in r.get("chunks", [])] if chunks else [f"{r['file']}.mlpackage"]
            if files != allowed:
                problems.append(Problem(r["id"], "file", f"{bundle}: {comp} is {files}, the package reads {allowed} {_where(r)}"))
            for f in files:
                if f and not (bundle / f).exists():
                    problems.append(Problem(r["id"], "file", f"{bundle / f}: missing {_where(r)}"))
            if models[comp].get("chunks") and (bundle / f"{r['file']}.mlpackage").exists():
                problems.append(Problem(r["id"], "file", f"{bundle}: both {r['file']}.mlpackage and its chunks; the package would load the chunks"))
        elif not (bundle / r["file"]).is_file():
            problems.append(Problem(r["id"], "file", f"{bundle / r['file']}: missing {_where(r)}"))
    stray = [p.name for p in bundle.glob("UnetChunk*.mlpackage") if p.name not in ("UnetChunk1.mlpackage", "UnetChunk2.mlpackage")]
    if stray:
        two = _rule("unet-chunks-exactly-two")
        problems.append(Problem(two["id"], "file", f"{bundle}: {stray}: the package loads exactly two chunks {_where(two)}"))
    if any(p.kind == "file" for p in problems):
        return problems
    for comp, s in spec()["models"].items():
        if comp not in models:
            continue
        files = [c["file"] for c in models[comp]["chunks"]] if models[comp].get("chunks") else [models[comp]["file"]]
        if comp == "unet":
            _check_unet(bundle, files, env, problems)
            continue
        ins, outs = package_io(bundle / files[0])
        _check_count(files[0], "input", s.get("input_count"), ins, problems)
        _check_count(files[0], "output", s.get("output_count"), outs, problems)
        _check_io(files[0], "input", s["inputs"], ins, env, problems)
        _check_io(files[0], "output", s["outputs"], outs, env, problems)
    if pipe.get("decoder_applies_scaling") is not spec()["models"]["vae_decoder"]["scaling"]["applies_scaling"]:
        problems.append(Problem("scaling", "model", f"{bundle / MANIFEST}: decoder_applies_scaling is {pipe.get('decoder_applies_scaling')}; "
                                                    f"the package scales before decoding {_where(spec()['models']['vae_decoder']['scaling'])}"))
    sched = read_json(bundle / "scheduler.json") if (bundle / "scheduler.json").is_file() else {}
    for r in spec()["pipeline"]:
        if "field" in r:
            value = pipe
            for part in r["field"].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            want = pipe["tokenizer"]["eos_token_id"] if r["value"] == "eos" else r["value"]
            if value != want:
                problems.append(Problem(r["id"], "pipeline", f"{bundle / MANIFEST}: pipeline.{r['field']} is {value!r}, the package uses {want!r} {_where(r)}"))
        for k, v in r.get("scheduler", {}).items():
            if sched.get(k) != v:
                problems.append(Problem(r["id"], "pipeline", f"{bundle / 'scheduler.json'}: {k} is {sched.get(k)!r}, the package uses {v!r} {_where(r)}"))
    return problems


def finish(bundle: Path, manifest: Manifest, force: bool, compile_models: bool) -> None:
    """After the manifest is written in the staging folder: the bundle must meet the spec (a
    forced export may break the pipeline rules it was forced past), then compile on macOS."""
    problems = [p for p in validate(bundle) if not (force and p.kind == "pipeline")]
    if problems:
        raise ConversionError(f"coreml --layout apple: the bundle breaks {PACKAGE}'s expectations: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if compile_models:
        compile_packages(bundle)
