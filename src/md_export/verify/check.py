"""`md-export check`: load each saved model in its own runtime, feed it inputs shaped like real
ones, and compare with the fp32 PyTorch reference built from the checkpoint the manifest names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import ExportPlan, make_plan
from md_export.core.errors import InputError, MdExportError, MissingDependencyError, UnsupportedOpError
from md_export.core.io import write_file, write_json
from md_export.core.manifest import MANIFEST, Manifest, find_bundles, model_files, read_manifest, write_manifest
from md_export.core.metrics import compare, worst
from md_export.core.progress import Progress
from md_export.pipeline.loop import guidance_embedding
from md_export.pipeline.prompts import bundled_prompts
from md_export.pipeline.tokenizer import ClipTokenizer, validate_tokenizer_files
from md_export.runtime import apple as apple_runtime
from md_export.runtime.coreml import can_run_natively
from md_export.runtime.open import RUNTIME_NAMES, open_model
from md_export.verify.end_to_end import check_end_to_end
from md_export.npu._errors import NpuSetupError
from md_export.npu.check import check_npu_pack
from md_export.verify.floors import floor_for, npu_floor
from md_export.verify.integrity import verify_files
from md_export.verify.reference import Reference, ReferenceCache
from md_export.verify.report import FAIL, NOT_RUN, PASS, Check, ParityReport


def tokenizer_folder(bundle: Path, manifest: dict) -> Path:
    """The folder of the bundle's vocab.json and merges.txt (tokenizer/, or the root in Apple's layout)."""
    return (Path(bundle) / manifest["pipeline"]["tokenizer"].get("vocab", "tokenizer/vocab.json")).parent


def reference_checkpoint(manifest: dict, override: Path | None, bundle: Path) -> Checkpoint:
    """The checkpoint the bundle was exported from (or --checkpoint), verified by weight hashes.
    The manifest records where it was relative to the bundle (never an absolute path); a bundle
    moved away from its checkpoint needs --checkpoint."""
    source = manifest.get("source", {})
    lora = tuple((_from_bundle(bundle, e.get("file") or e.get("name", "")), e["scale"]) for e in source.get("lora") or ())
    if override is not None:
        ckpt = Checkpoint.open(override, lora=lora)
    elif source.get("kind") == "default":
        ckpt = Checkpoint.open(None)
    elif source.get("kind") == "component-folders":
        comps = source.get("components", {})
        missing = [k for k, v in comps.items() if v is None or not _from_bundle(bundle, v).is_dir()]
        if missing:
            raise InputError(f"reference checkpoint: the {missing[0]} folder recorded in the manifest is not here; pass --checkpoint DIR")
        ckpt = Checkpoint.open(None, **{k: _from_bundle(bundle, v) for k, v in comps.items()})
    else:
        rel = source.get("path")
        path = _from_bundle(bundle, rel) if rel else None
        if path is None or not (path.is_dir() or (source.get("kind") == "single-file" and path.is_file())):
            name = source.get("name") or rel or "?"
            where = f"at {path}" if path is not None else "recorded relative to the bundle"
            raise InputError(f"reference checkpoint '{name}' (from the manifest) is not {where}; pass --checkpoint DIR")
        ckpt = Checkpoint.open(path, family=source.get("family") if source.get("kind") == "single-file" else None, lora=lora)
    expected = source.get("weights_sha256") or {}
    if expected:
        actual = ckpt.weights_sha256()
        for name, digest in expected.items():
            if actual.get(name) != digest:
                raise InputError(
                    f"reference checkpoint {ckpt.describe()}: {name} weights differ from the exported ones (sha256); "
                    "pass --checkpoint with the checkpoint this bundle came from"
                )
    return ckpt


def _from_bundle(bundle: Path, rel: str) -> Path:
    """A path the manifest records relative to the bundle (older manifests: absolute)."""
    return Path(os.path.normpath(Path(bundle).absolute() / rel))


class InputFactory:
    """Seeded inputs shaped like real ones: token ids of real prompts through the bundle's own
    tokenizer, text embeddings from the reference encoder, latents ~ N(0, 1), timesteps spread
    over the training schedule. With a ``reference``, embeddings come from it (loaded when needed,
    computed once); without one, from the text encoder module attached to ``plan``."""

    def __init__(self, bundle: Path, manifest: dict, plan: ExportPlan, seed: int, samples: int, reference: Reference | None = None):
        self.bundle, self.manifest, self.plan, self.seed, self.samples = bundle, manifest, plan, seed, samples
        self.reference = reference
        self.prompts = bundled_prompts()
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer.from_folder(
                tokenizer_folder(self.bundle, self.manifest), pad_token_id=self.manifest["pipeline"]["tokenizer"].get("pad_token_id")
            )
        return self._tokenizer

    def ids(self, prompt: str) -> np.ndarray:
        return np.asarray(self.tokenizer().encode(prompt), dtype=np.int32).reshape(1, -1)

    def embed(self, prompt: str) -> np.ndarray:
        if self.reference is not None:
            return self.reference.output("text_encoder", {"input_ids": self.ids(prompt)})
        te = self.plan.components["text_encoder"].module
        with torch.no_grad():
            return te(torch.from_numpy(self.ids(prompt))).numpy()

    def make(self, model: str, i: int) -> dict[str, np.ndarray]:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        comp = self.plan.components[model]
        prompt = self.prompts[i % len(self.prompts)]
        feeds: dict[str, np.ndarray] = {}
        for spec in comp.inputs:
            if spec.name == "input_ids":
                feeds[spec.name] = self.ids("" if i == 0 else prompt)
            elif spec.name == "timestep":
                t = 999.0 - (998.0 * i / max(self.samples - 1, 1))
                feeds[spec.name] = np.full(spec.shape, round(t), dtype=np.float32)
            elif spec.name == "encoder_hidden_states":
                rows = [self.embed(""), self.embed(prompt)] if spec.shape[0] == 2 else [self.embed(prompt)]
                feeds[spec.name] = np.concatenate(rows, axis=0).astype(np.float32)
            elif spec.name == "timestep_cond":
                feeds[spec.name] = guidance_embedding(self.manifest["pipeline"].get("default_guidance_scale", 8.0), spec.shape[1], spec.shape[0])
            elif spec.name == "image":
                feeds[spec.name] = (torch.rand(spec.shape, generator=g) * 2 - 1).numpy()
            else:
                feeds[spec.name] = torch.randn(spec.shape, generator=g).numpy()
        return feeds


def check_bundle(
    bundle: Path,
    *,
    samples: int = 2,
    seed: int = 0,
    checkpoint: Path | None = None,
    thresholds: dict[str, float] | None = None,
    recipe_floors: dict[str, dict[str, float]] | None = None,
    verify: bool = True,
    allow_skip: bool = False,
    end_to_end: bool = True,
    e2e_steps: int = 4,
    progress: Progress | None = None,
    references: ReferenceCache | None = None,
) -> ParityReport:
    """Check one bundle. Floors: `thresholds` (the command line), then `recipe_floors` (a recipe the
    user named: target -> model -> dB), then the defaults per level; the bundle's recorded floors
    only raise them. `verify`: compare every model file with the manifest's sha256 and bytes first.
    `references`: reference results shared with the other bundles of this run (verify.reference)."""
    progress = progress or Progress()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    require_writable(bundle)
    target = manifest["target"]
    floors = {"overrides": thresholds or {}, "recipe": (recipe_floors or {}).get(target, {}),
              "recorded": manifest.get("parity_floors") or {}}
    if samples < 1:
        raise InputError(f"--samples {samples}: use 1 or more")
    if end_to_end and e2e_steps < 1:
        raise InputError(f"--e2e-steps {e2e_steps}: use 1 or more (or --no-e2e)")
    validate_tokenizer_files(tokenizer_folder(bundle, manifest), pad_token_id=manifest["pipeline"]["tokenizer"].get("pad_token_id"))
    with progress.stage("bundle", "verify sha256" if verify else "verify (skipped)", target):
        integrity = {"status": "skipped", "reason": "--no-verify"} if not verify else _integrity(bundle, manifest)
    opts = manifest.get("options", {})
    ckpt = reference_checkpoint(manifest, checkpoint, bundle)
    plan = make_plan(ckpt, height=opts.get("height"), width=opts.get("width"), unet_batch=opts.get("unet_batch"),
                     with_encoder=bool(opts.get("with_encoder")))
    reference = Reference(plan, ckpt, opts, references)  # loads each component when first needed
    factory = InputFactory(bundle, manifest, plan, seed, samples, reference)
    report = ParityReport(bundle, target, samples, seed,
                          {"name": manifest.get("source", {}).get("name") or ckpt.kind, "kind": ckpt.kind, "weights_match": True},
                          allow_skip=allow_skip,
                          integrity=integrity)
    engines = [None] + (["coreml"] if target == "coreml" and can_run_natively() else [])
    for name, entry in manifest["models"].items():
        if name not in plan.components:
            raise InputError(f"{bundle / 'manifest.json'}: model '{name}' is not one md-export knows how to check")
        comp = plan.components[name]
        precision = entry.get("precision", "fp32")
        floor = floor_for(name, precision, floors["overrides"], entry.get("compression"), floors["recipe"], floors["recorded"])
        for engine in engines:
            runtime = engine or RUNTIME_NAMES[target]
            out_name = comp.outputs[0].name
            with progress.stage(name, f"parity ({runtime})", target):
                report.checks.append(_check_model(target, bundle, entry, comp, factory, name, out_name, runtime, engine,
                                                  precision, floor, samples, manifest, reference))
    if target == "tflite" and any(e.get("file") for e in manifest.get("npu", [])):
        with progress.stage("models", "NPU parity (HTP simulator)", target):
            report.checks += check_npu_models(bundle, manifest, seed)
    if end_to_end:
        with progress.stage("pipeline", f"end to end ({e2e_steps} steps)", target):
            report.checks.append(check_end_to_end(bundle, manifest, target, reference, factory, floors, e2e_steps, seed, report))
    reference.release(always=True)
    save_report(bundle, manifest, report)
    return report


def check_npu_models(bundle: Path, manifest: dict, seed: int) -> list[Check]:
    """Every model compiled for an NPU, run in the QNN HTP simulator against the same uncompiled
    .tflite on the CPU (the compiled graph's own numbers). Without the QNN host libraries the checks
    are not run, and say so."""
    precision = {n: e.get("precision", "fp32") for n, e in manifest["models"].items()}
    compiled = [e for e in manifest["npu"] if e.get("file") and e.get("status") == "compiled"]
    try:
        results = check_npu_pack(bundle, floor_of=npu_floor, seed=seed)
    except NpuSetupError as missing:
        return [Check(c["model"], "all outputs", f"qnn-htp-simulator {c['soc']}", precision.get(c["model"], "fp32"), NOT_RUN,
                      npu_floor(precision.get(c["model"]), None), reason=f"HTP simulator not available: {missing}") for c in compiled]
    return [Check(r.model, "all outputs", f"qnn-htp-simulator {r.soc}", precision.get(r.model, "fp32"),
                  PASS if r.passed else FAIL, float(r.floor), metrics={"psnr": r.psnr, "max_abs": r.max_abs}, samples=1,
                  reason="vs the uncompiled .tflite on the CPU")
            for r in results]


def require_writable(bundle: Path) -> None:
    """check writes parity.json, parity.md and the manifest into the bundle: refuse a read-only one
    now, in a second, rather than lose the result after the whole run."""
    probe = bundle / f".md-export-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{bundle}: cannot write the parity report into the bundle ({e.strerror}); "
                         "check a writable copy of it") from None


def _integrity(bundle: Path, manifest: dict) -> dict:
    problems = verify_files(bundle, manifest)
    return {"status": FAIL, "files": problems} if problems else {"status": PASS}


def _check_model(target, bundle, entry, comp, factory, name, out_name, runtime, engine, precision, floor, samples,
                 manifest: dict, reference: Reference) -> Check:
    base = dict(model=name, output=out_name, runtime=runtime, precision=precision, threshold_psnr=floor)
    # the reference results first, then its module is dropped: the artifact loads next to nothing else
    feeds_per_sample = [factory.make(name, i) for i in range(samples)]
    refs = [reference.output(name, feeds) for feeds in feeds_per_sample]
    reference.release()
    try:
        runner = open_model(target, bundle, entry, engine)
        if (manifest or {}).get("layout") == "apple":  # driven as the Swift package drives it, compared in the contract's terms
            runner = apple_runtime.adapt(name, runner, entry, manifest["pipeline"])
    except (MissingDependencyError, ImportError) as e:
        return Check(status=NOT_RUN, reason=f"runtime not available: {e}", **base)
    except MdExportError as e:
        return Check(status=FAIL, reason=f"cannot load {'+'.join(model_files(entry))}: {e}", **base)
    except Exception as e:
        return Check(status=FAIL, reason=f"cannot load {'+'.join(model_files(entry))}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", **base)
    per_sample = []
    for feeds, ref in zip(feeds_per_sample, refs):
        try:
            out = runner(feeds)[out_name]
        except UnsupportedOpError as e:
            return Check(status=NOT_RUN, reason=str(e), **base)
        except Exception as e:
            return Check(status=FAIL, reason=f"run failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", **base)
        try:
            per_sample.append(compare(ref, np.asarray(out, dtype=np.float32)))
        except ValueError as e:
            return Check(status=FAIL, reason=str(e), **base)
    metrics = worst(per_sample)
    ok = metrics["psnr"] >= floor and np.isfinite(metrics["cosine"])
    return Check(status=PASS if ok else FAIL, metrics=metrics, samples=samples, **base)


def save_report(bundle: Path, manifest: dict, report: ParityReport) -> None:
    write_json(bundle / "parity.json", report.to_json())
    write_file(bundle / "parity.md", report.markdown().encode("utf-8"))
    updated = Manifest.from_json(manifest, bundle / MANIFEST)
    updated.parity = report.summary()
    write_manifest(bundle, updated)


def check_bundles(paths, progress: Progress | None = None, **kwargs) -> list[ParityReport]:
    bundles = []
    for p in paths:
        bundles += find_bundles(Path(p))
    references = ReferenceCache()  # bundles of one checkpoint share every reference result
    return [check_bundle(b, progress=progress, references=references, **kwargs) for b in bundles]
