"""`md-export eval`: does the bundle still draw what it is asked for?

For a bundle whose model was trained on the shapes vocabulary (the bundled default model), every
(prompt, seed) pair of the fixed evaluation set is generated twice: by the bundle's models in their
runtime through md-export's denoising loop (as the apps run them), and by the fp32 PyTorch
reference in diffusers, same scheduler, steps, guidance and seed. The rule-based judge
(:mod:`md_export.shapes.judge`) reads each image back; prompt accuracy is the share of pairs whose
every attribute matches. Floors: the reference must reach REFERENCE_ACCURACY, and an fp32 or fp16
bundle may lose at most ACCURACY_DROP against it; a compressed level is measured and reported, and
gated only when the command line gives --max-drop. The grid (prompt rows, reference | bundle) goes
into the bundle as prompt_accuracy.png, the numbers into parity.json under "prompt_accuracy".
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from md_export.components.plan import attach_modules, make_plan
from md_export.core.errors import InputError
from md_export.core.io import read_json, write_file, write_json
from md_export.core.manifest import find_bundles, read_manifest
from md_export.core.progress import Progress
from md_export.pipeline.loop import generate
from md_export.pipeline.tokenizer import ClipTokenizer
from md_export.runtime.bundle import open_bundle
from md_export.shapes import VOCABULARY
from md_export.shapes.dataset import evaluation_prompts
from md_export.shapes.evaluate import EvalItem, evaluate
from md_export.verify.check import reference_checkpoint, require_writable, tokenizer_folder
from md_export.verify.end_to_end import reference_pipeline, run_reference
from md_export.verify.floors import ACCURACY_DROP, REFERENCE_ACCURACY
from md_export.verify.report import FAIL, PASS

GRID = "prompt_accuracy.png"
PARITY_KEY = "prompt_accuracy"
MEASURED = "measured"  # a compressed level with no floor: reported, not gated


def bundle_level(manifest: dict) -> str:
    """The bundle's compression level as the floors see it: 'fp32' or 'fp16' when no model is
    compressed beyond its precision, else the models' compressions joined ('int8', 'w8a8+fp16', ...)."""
    models = manifest["models"].values()
    compressions = sorted({str(m.get("compression")) for m in models if m.get("compression") not in (None, "", "none", "fp16", "fp32")})
    if compressions:
        return "+".join(compressions)
    return "fp16" if any(m.get("precision") == "fp16" for m in models) else "fp32"


@dataclass
class AccuracyReport:
    bundle: Path
    target: str
    level: str
    prompts: int
    seeds: list[int]
    steps: int
    guidance_scale: float
    accuracy: float
    reference_accuracy: float
    max_drop: float | None
    items: list[EvalItem] = field(default_factory=list)
    reference_items: list[EvalItem] = field(default_factory=list)
    grid: str = GRID
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reference_status(self) -> str:
        return PASS if self.reference_accuracy >= REFERENCE_ACCURACY - 1e-9 else FAIL

    @property
    def status(self) -> str:
        if self.max_drop is None:
            return MEASURED
        return PASS if self.accuracy >= self.reference_accuracy - self.max_drop - 1e-9 else FAIL

    def exit_code(self) -> int:
        return 1 if FAIL in (self.status, self.reference_status) else 0

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "level": self.level,
            "vocabulary": VOCABULARY,
            "prompts": self.prompts,
            "seeds": self.seeds,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "judge": "md_export.shapes.judge (rule-based: border colour, shape mask geometry, nearest palette colour)",
            "bundle": {"accuracy": self.accuracy, "correct": sum(i.correct for i in self.items), "pairs": len(self.items),
                       "status": self.status, "max_drop": self.max_drop},
            "reference": {"what": "diffusers pipeline over the fp32 PyTorch components, same scheduler, steps, guidance, seeds",
                          "accuracy": self.reference_accuracy, "correct": sum(i.correct for i in self.reference_items),
                          "pairs": len(self.reference_items), "status": self.reference_status, "floor": REFERENCE_ACCURACY},
            "wrong": {"bundle": _wrong(self.items), "reference": _wrong(self.reference_items)},
            "grid": self.grid,
            "seconds": self.seconds,
        }

    def table(self) -> str:
        gate = "no floor at this level (--max-drop sets one)" if self.max_drop is None else f"floor: reference - {self.max_drop * 100:.0f} pts"
        return "\n".join([
            f"{self.bundle} ({self.target}, {self.level}): {self.prompts} prompts x {len(self.seeds)} seeds, {self.steps} steps",
            f"  reference (fp32 PyTorch)  {self.reference_accuracy * 100:5.1f} %   {self.reference_status:<8} floor {REFERENCE_ACCURACY * 100:.0f} %",
            f"  bundle                    {self.accuracy * 100:5.1f} %   {self.status:<8} {gate}",
            *(f"    wrong: {w}" for w in _wrong(self.items)[:8]),
            f"  grid: {self.bundle / self.grid}",
        ])


def _wrong(items: list[EvalItem]) -> list[str]:
    return [f"{i.prompt!r} seed {i.seed}: {'; '.join(i.mismatches)}" for i in items if not i.correct]


def eval_bundle(bundle: Path, *, prompts: int = 24, seeds: int = 2, steps: int | None = None, checkpoint: Path | None = None,
                max_drop: float | None = None, progress: Progress | None = None, reference_cache: dict | None = None) -> AccuracyReport:
    """Judge one bundle and the fp32 reference on the same prompts and seeds (see the module text).
    `reference_cache` shares the reference's images between bundles of the same checkpoint."""
    import time

    progress = progress or Progress()
    bundle = Path(bundle)
    if prompts < 1:
        raise InputError(f"--prompts {prompts}: use 1 or more")
    if seeds < 1:
        raise InputError(f"--seeds {seeds}: use 1 or more")
    if steps is not None and steps < 1:
        raise InputError(f"--steps {steps}: use 1 or more")
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise InputError(f"--max-drop {max_drop * 100:g}: give points between 0 and 100")
    manifest = read_manifest(bundle)
    target = manifest["target"]
    ckpt = reference_checkpoint(manifest, checkpoint, bundle)
    vocabulary = ckpt.training_vocabulary()
    if vocabulary != VOCABULARY:
        said = f"declares vocabulary '{vocabulary}'" if vocabulary else "declares no training vocabulary (_md_export_vocabulary in model_index.json)"
        raise InputError(f"{bundle}: its reference checkpoint ({ckpt.describe()}) {said}; md-export eval judges only models "
                         f"trained on '{VOCABULARY}', like the bundled default model (use md-export check for parity)")
    require_writable(bundle)
    level = bundle_level(manifest)
    if max_drop is None:
        max_drop = ACCURACY_DROP.get(level)
    opts = manifest.get("options", {})
    with progress.stage("reference", "load", target):
        plan = make_plan(ckpt, height=opts.get("height"), width=opts.get("width"), unet_batch=opts.get("unet_batch"),
                         with_encoder=bool(opts.get("with_encoder")))
        attach_modules(plan, ckpt)
        models, pipe_cfg = open_bundle(bundle, manifest)
    n_steps = steps or int(pipe_cfg["default_steps"])
    guidance = float(pipe_cfg["default_guidance_scale"]) if pipe_cfg["guidance"] != "none" else 0.0
    tokenizer = ClipTokenizer.from_folder(tokenizer_folder(bundle, manifest), pad_token_id=pipe_cfg["tokenizer"].get("pad_token_id"))
    scheduler_config = read_json(bundle / "scheduler.json")

    def bundle_fn(prompt: str, seed: int) -> np.ndarray:
        return generate(models, pipe_cfg, tokenizer, scheduler_config, prompt, steps=n_steps, guidance_scale=guidance, seed=seed)

    key = (json.dumps(ckpt.weights_sha256(), sort_keys=True), json.dumps(scheduler_config, sort_keys=True), pipe_cfg["scheduler"],
           n_steps, guidance, pipe_cfg["image_height"], pipe_cfg["image_width"])
    cache = reference_cache if reference_cache is not None else {}
    pipe = []

    def reference_fn(prompt: str, seed: int) -> np.ndarray:
        if (key, prompt, seed) not in cache:
            if not pipe:
                pipe.append(reference_pipeline(plan, ckpt, pipe_cfg, bundle))
            cache[(key, prompt, seed)] = run_reference(pipe[0], pipe_cfg, prompt, n_steps, seed, guidance)
        return cache[(key, prompt, seed)]

    seed_list = list(range(seeds))
    t0 = time.perf_counter()
    with progress.stage("pipeline", f"prompt accuracy ({prompts} prompts x {seeds} seeds, {n_steps} steps)", target):
        result = evaluate(bundle_fn, evaluation_prompts(prompts), seed_list, reference_fn=reference_fn,
                          labels=("reference (fp32 PyTorch)", f"bundle ({target}, {level})"))
    report = AccuracyReport(bundle, target, level, prompts, seed_list, n_steps, guidance, result.accuracy,
                            float(result.reference_accuracy), max_drop, result.items, result.reference_items,
                            seconds={"generate_and_judge": round(time.perf_counter() - t0, 1)})
    png = io.BytesIO()
    result.grid.save(png, format="PNG")
    write_file(bundle / GRID, png.getvalue())
    _record(bundle, report)
    return report


def _record(bundle: Path, report: AccuracyReport) -> None:
    """Put the result into parity.json beside check's results (a parity.json that is not a plain
    JSON object file in the bundle is replaced, not followed or merged)."""
    path = bundle / "parity.json"
    data: dict = {}
    if path.is_file() and not path.is_symlink():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            data = {}
    data[PARITY_KEY] = report.to_json()
    write_json(path, data)


def eval_bundles(paths, progress: Progress | None = None, **kwargs) -> list[AccuracyReport]:
    bundles = []
    for p in paths:
        bundles += find_bundles(Path(p))
    cache: dict = {}
    return [eval_bundle(b, progress=progress, reference_cache=cache, **kwargs) for b in bundles]
