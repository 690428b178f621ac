"""Prompt accuracy of a text-to-image model on the shapes-v1 vocabulary, for any way of generating.

``evaluate(generate_fn, prompts, seeds)`` calls ``generate_fn(prompt, seed) -> image`` (HWC uint8 or
float [1,3,H,W] in [-1, 1]) for every prompt and seed, reads each image with the rule-based judge
(:mod:`md_export.shapes.judge`) and returns an :class:`EvalResult`: the share of (prompt, seed) pairs
whose every named attribute matches, each pair's reading and mismatches, and a PNG grid (one row per
prompt: the reference's images, then the model's, each framed green when the judge accepts it and
red when not). Pass ``reference_fn`` to put a second generator (the fp32 PyTorch pipeline) beside the
first and score it too.

Generators: :func:`reference_generate_fn` (diffusers' StableDiffusionPipeline from a model folder, fp32,
CPU), :func:`pipeline_generate_fn` (an already built diffusers pipeline) and :func:`loop_generate_fn`
(md-export's own denoising loop over a bundle's runtime callables, ``md_export.pipeline.loop.generate``).

Only models trained on this vocabulary can be judged this way: :func:`vocabulary_of` reads the
marker (``"_md_export_vocabulary": "shapes-v1"`` in a model folder's model_index.json, or a bundle
manifest's ``vocabulary``) and :func:`require_vocabulary` refuses anything else by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from md_export.core.errors import InputError
from md_export.shapes import VOCABULARY, VOCABULARY_FIELD
from md_export.shapes.dataset import Attributes, EvalPrompt, evaluation_prompts
from md_export.shapes.judge import Reading, as_attributes, read_image, to_hwc_uint8

GenerateFn = Callable[[str, int], np.ndarray]
PromptLike = str | EvalPrompt | Attributes


@dataclass(frozen=True)
class EvalItem:
    prompt: str
    seed: int
    correct: bool
    mismatches: list[str]
    reading: Reading

    def to_json(self) -> dict:
        r = self.reading
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "correct": self.correct,
            "mismatches": self.mismatches,
            "read": {"shape": r.shape, "colour": r.colour, "background": r.background, "size": r.size, "position": r.position},
        }


@dataclass
class EvalResult:
    accuracy: float
    items: list[EvalItem]
    reference_accuracy: float | None = None
    reference_items: list[EvalItem] = field(default_factory=list)
    grid: Any = None  # PIL.Image.Image
    grid_path: Path | None = None

    @property
    def n(self) -> int:
        return len(self.items)

    def to_json(self) -> dict:
        out = {
            "vocabulary": VOCABULARY,
            "accuracy": self.accuracy,
            "pairs": self.n,
            "correct": sum(i.correct for i in self.items),
            "items": [i.to_json() for i in self.items],
        }
        if self.reference_accuracy is not None:
            out |= {"reference_accuracy": self.reference_accuracy, "reference_items": [i.to_json() for i in self.reference_items]}
        if self.grid_path is not None:
            out["grid"] = str(self.grid_path)
        return out


def _as_prompt(p: PromptLike) -> tuple[str, Attributes]:
    if isinstance(p, EvalPrompt):
        return p.prompt, p.attributes
    if isinstance(p, Attributes):
        return p.caption, p
    return p, as_attributes(p)


def _run(
    fn: GenerateFn, prompts: list[tuple[str, Attributes]], seeds: Sequence[int]
) -> tuple[list[EvalItem], list[list[np.ndarray]]]:
    items, images = [], []
    for text, attrs in prompts:
        row = []
        for seed in seeds:
            img = to_hwc_uint8(fn(text, int(seed)))
            reading = read_image(img)
            bad = reading.mismatches(attrs)
            items.append(EvalItem(text, int(seed), not bad, bad, reading))
            row.append(img)
        images.append(row)
    return items, images


def evaluate(
    generate_fn: GenerateFn,
    prompts: Iterable[PromptLike] | None = None,
    seeds: Sequence[int] = (0, 1),
    *,
    reference_fn: GenerateFn | None = None,
    grid_path: str | Path | None = None,
    labels: tuple[str, str] = ("reference", "model"),
) -> EvalResult:
    """Judge `generate_fn` on `prompts` (default: the 24 evaluation prompts) x `seeds`."""
    plist = [_as_prompt(p) for p in (prompts if prompts is not None else evaluation_prompts())]
    if not plist or not seeds:
        raise InputError("evaluate: no prompts or no seeds given")
    items, images = _run(generate_fn, plist, seeds)
    result = EvalResult(accuracy=sum(i.correct for i in items) / len(items), items=items)
    ref_images = None
    if reference_fn is not None:
        ref_items, ref_images = _run(reference_fn, plist, seeds)
        result.reference_items = ref_items
        result.reference_accuracy = sum(i.correct for i in ref_items) / len(ref_items)
    result.grid = make_grid(plist, seeds, images, items, ref_images, result.reference_items, labels)
    if grid_path is not None:
        result.grid_path = Path(grid_path)
        result.grid_path.parent.mkdir(parents=True, exist_ok=True)
        result.grid.save(result.grid_path, format="PNG")
    return result


def make_grid(
    prompts, seeds, images, items, ref_images=None, ref_items=(), labels=("reference", "model"), label_width: int = 300
):
    """One row per prompt: label | reference images | model images; green frame = judged correct."""
    from PIL import Image, ImageDraw, ImageFont

    cell = max(img.shape[0] for row in images for img in row) + 6
    n = len(seeds)
    groups = ([(ref_images, list(ref_items), labels[0])] if ref_images is not None else []) + [(images, items, labels[1])]
    width = label_width + len(groups) * (n * cell + 10)
    header = 20
    grid = Image.new("RGB", (width, header + len(prompts) * cell), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for g, (_, _, name) in enumerate(groups):
        draw.text(
            (label_width + g * (n * cell + 10) + 4, 4),
            f"{name} (seeds {', '.join(map(str, seeds))})",
            fill=(230, 230, 230),
            font=font,
        )
    for r, (text, _) in enumerate(prompts):
        y = header + r * cell
        words, lines, line = text.split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > 40:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        draw.multiline_text((6, y + 8), "\n".join(lines), fill=(230, 230, 230), font=font)
        for g, (imgs, its, _) in enumerate(groups):
            for k in range(n):
                x = label_width + g * (n * cell + 10) + k * cell
                ok = its[r * n + k].correct
                draw.rectangle((x, y, x + cell - 3, y + cell - 3), fill=(40, 200, 60) if ok else (220, 40, 40))
                grid.paste(Image.fromarray(imgs[r][k]), (x + 2, y + 2))
    return grid


# --------------------------------------------------------------------------------------------------
# generators


def pipeline_generate_fn(pipe, steps: int = 20, guidance_scale: float = 7.5) -> GenerateFn:
    """A generate_fn over a built diffusers text-to-image pipeline (seeded with torch.Generator('cpu'))."""
    import torch

    def generate(prompt: str, seed: int) -> np.ndarray:
        out = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator("cpu").manual_seed(int(seed)),
            output_type="np",
        )
        return np.round(np.clip(out.images[0], 0, 1) * 255).astype(np.uint8)

    return generate


def reference_generate_fn(model_dir: str | Path, steps: int = 20, guidance_scale: float = 7.5) -> GenerateFn:
    """diffusers' StableDiffusionPipeline from a model folder, fp32 on CPU (md-export's reference)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipeline_generate_fn(pipe, steps, guidance_scale)


def loop_generate_fn(
    models: Mapping[str, Callable],
    pipeline: Mapping[str, Any],
    tokenizer,
    scheduler_config: Mapping[str, Any],
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> GenerateFn:
    """A generate_fn over md-export's denoising loop and a bundle's runtime callables
    (see :func:`md_export.pipeline.loop.generate`; steps and guidance default to the manifest's)."""
    from md_export.pipeline.loop import generate as loop_generate

    def generate(prompt: str, seed: int) -> np.ndarray:
        return loop_generate(
            models, pipeline, tokenizer, scheduler_config, prompt, steps=steps, guidance_scale=guidance_scale, seed=seed
        )

    return generate


# --------------------------------------------------------------------------------------------------
# which models speak this vocabulary


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None


def vocabulary_of(path: str | Path) -> str | None:
    """The training vocabulary a model folder or bundle declares, or None.

    A model folder: model_index.json's "_md_export_vocabulary". A bundle (a folder with
    manifest.json): the manifest's "vocabulary" (top level, or in "source" or "pipeline"); failing
    that, the model_index.json of the source folders the manifest names, when they still exist."""
    p = Path(path)
    if (p / "model_index.json").is_file():
        return _read_json(p / "model_index.json").get(VOCABULARY_FIELD)
    if (p / "manifest.json").is_file():
        m = _read_json(p / "manifest.json")
        for where in (m, m.get("source") or {}, m.get("pipeline") or {}):
            if isinstance(where, dict) and where.get("vocabulary"):
                return where["vocabulary"]
        components = ((m.get("source") or {}).get("components") or {}).values()
        for d in components:
            index = Path(d).parent / "model_index.json"
            if index.is_file():
                return _read_json(index).get(VOCABULARY_FIELD)
    return None


def require_vocabulary(path: str | Path, vocabulary: str = VOCABULARY) -> None:
    """Raise InputError unless `path` declares it was trained on `vocabulary`."""
    found = vocabulary_of(path)
    if found != vocabulary:
        said = (
            f"declares vocabulary '{found}'"
            if found
            else f"declares no training vocabulary ({VOCABULARY_FIELD} in model_index.json)"
        )
        raise InputError(
            f"{path}: {said}; the shapes evaluation judges only models trained on '{vocabulary}' (the bundled default model)"
        )


def main(argv=None) -> int:
    """python -m md_export.shapes.evaluate MODEL_DIR [--seeds 0 1] [--steps 20] [--grid grid.png] [--json out.json]"""
    import argparse

    ap = argparse.ArgumentParser(description="Prompt accuracy of a shapes-v1 model folder through diffusers (fp32, CPU).")
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--prompts", type=int, default=24, help="how many of the evaluation prompts")
    ap.add_argument("--grid", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    require_vocabulary(args.model_dir)
    fn = reference_generate_fn(args.model_dir, args.steps, args.guidance_scale)
    result = evaluate(fn, evaluation_prompts(args.prompts), args.seeds, grid_path=args.grid, labels=("", "diffusers fp32"))
    for item in result.items:
        if not item.correct:
            print(f"  wrong: '{item.prompt}' seed {item.seed}: {'; '.join(item.mismatches)}")
    print(
        f"prompt accuracy {result.accuracy:.3f} ({sum(i.correct for i in result.items)}/{result.n}), "
        f"{args.prompts} prompts x seeds {args.seeds}, {args.steps} steps, guidance {args.guidance_scale}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(result.to_json() | {"steps": args.steps, "guidance_scale": args.guidance_scale}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "EvalItem",
    "EvalResult",
    "evaluate",
    "loop_generate_fn",
    "make_grid",
    "pipeline_generate_fn",
    "reference_generate_fn",
    "require_vocabulary",
    "vocabulary_of",
]
