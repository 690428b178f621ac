"""The README's picture: a few prompts (rows) drawn by the fp32 PyTorch reference and by each bundle
(columns), seed 0, each framed green when the shapes judge reads it as its prompt, red when not.

    python scripts/readme_grid.py out/ -o docs/images/default_model_grid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PROMPTS = [
    "a red circle on a blue background",
    "a yellow triangle on a black background",
    "a small white square on a green background",
    "a large blue circle on a yellow background",
    "a green triangle on a white background",
    "a black square on a red background",
]


def main(argv=None) -> int:
    from PIL import Image, ImageDraw, ImageFont

    from md_export.core.manifest import find_bundles, read_manifest
    from md_export.pipeline.loop import generate
    from md_export.pipeline.tokenizer import ClipTokenizer
    from md_export.runtime.bundle import open_bundle
    from md_export.shapes.evaluate import reference_generate_fn
    from md_export.shapes.judge import judge, to_hwc_uint8
    from md_export.checkpoint.files import default_model_dir
    from md_export.verify.check import tokenizer_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", type=Path, nargs="+", help="bundles, or folders of bundles (out/)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    columns = [("reference (PyTorch fp32)", reference_generate_fn(default_model_dir()))]
    for bundle in [b for p in args.bundles for b in find_bundles(p)]:
        manifest = read_manifest(bundle)
        models, pipe = open_bundle(bundle, manifest)
        tok = ClipTokenizer.from_folder(tokenizer_folder(bundle, manifest), pad_token_id=pipe["tokenizer"].get("pad_token_id"))
        sched = json.loads((bundle / "scheduler.json").read_text())
        level = sorted({m.get("compression") if m.get("compression") not in (None, "none") else m.get("precision")
                        for m in manifest["models"].values()})

        def fn(prompt, seed, models=models, pipe=pipe, tok=tok, sched=sched):
            return generate(models, pipe, tok, sched, prompt, seed=seed)

        columns.append((f"{manifest['target']} ({'+'.join(map(str, level))})", fn))
    cell, label_w, head = 134, 250, 22
    grid = Image.new("RGB", (label_w + cell * len(columns), head + cell * len(PROMPTS)), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, (name, _) in enumerate(columns):
        draw.text((label_w + c * cell + 4, 5), name, fill=(230, 230, 230), font=font)
    for r, prompt in enumerate(PROMPTS):
        y = head + r * cell
        draw.multiline_text((6, y + 50), prompt.replace(" on a ", "\non a "), fill=(230, 230, 230), font=font)
        for c, (_, fn) in enumerate(columns):
            img = to_hwc_uint8(np.asarray(fn(prompt, args.seed)))
            x = label_w + c * cell
            draw.rectangle((x, y, x + cell - 3, y + cell - 3), fill=(40, 200, 60) if judge(prompt, img) else (220, 40, 40))
            grid.paste(Image.fromarray(img), (x + 2, y + 2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(PROMPTS)} prompts x {len(columns)} columns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
