"""Size and parity of every compression level on one UNet: lowered once per target, each level
applied to a copy, the result run in its own runtime (onnxruntime, TFLite interpreter, milrun)
against the fp32 torch UNet on seeded inputs.

    python benchmarks/levels_table.py --unet sd15-tiny -o /tmp/levels_sd15tiny.json
    python benchmarks/levels_table.py --unet default --targets onnx,tflite

`sd15-tiny` is the SD 1.5 UNet topology (4 blocks, 2 layers each, cross-attention in the first
three, 8 heads) at narrow widths, random weights, built from config.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LEVELS = {
    "coreml": ["fp16", "int8", "palettize-8", "palettize-6", "palettize-4", "palettize-2", "mixed-bit:4.5", "w8a8"],
    "tflite": ["fp16", "int8", "int4-block32", "mixed:fc=int8,conv=fp16", "w8a8"],
    "onnx": ["fp16", "int8", "w8a8"],
}
SD15_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
)


def unet_component(which: str):
    from md_export.components.plan import ComponentPlan, UNetWrapper
    from md_export.core.spec import TensorSpec

    if which == "default":
        from md_export.checkpoint.folder import Checkpoint
        from md_export.components.plan import attach_modules, make_plan

        ckpt = Checkpoint.open(None)
        plan = make_plan(ckpt)
        attach_modules(plan, ckpt, only=("unet",))
        return plan.components["unet"]
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_TINY).eval()
    return ComponentPlan(
        "unet",
        [TensorSpec("sample", (2, 4, 16, 16), "float32", "NCHW"), TensorSpec("timestep", (2,), "float32", "B"),
         TensorSpec("encoder_hidden_states", (2, 77, 32), "float32", "BSD")],
        [TensorSpec("noise_pred", (2, 4, 16, 16), "float32", "NCHW")],
        module=UNetWrapper(unet).eval(),
    )


def psnr_of(target, lm, comp, samples=2) -> float:
    from md_export.core.metrics import compare
    from md_export.runtime.open import open_file

    run = open_file(target, lm.path, {"signature": lm.signature} if lm.signature else {})
    worst = math.inf
    for i in range(samples):
        args = comp.example_inputs(seed=i)
        with torch.no_grad():
            ref = comp.module(*args).numpy()
        out = run({s.name: a.numpy() for s, a in zip(comp.inputs, args)})[comp.outputs[0].name]
        worst = min(worst, compare(ref, np.asarray(out, np.float32))["psnr"])
    return worst


def main(argv=None) -> int:
    from md_export.export import lower_at
    from md_export.lower.base import LoweredModel, LowerOptions
    from md_export.core.io import path_bytes
    from md_export.capture.torch_export import capture
    from md_export.compress.apply import compress

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", choices=("default", "sd15-tiny"), default="sd15-tiny")
    ap.add_argument("--targets", default="onnx,tflite,coreml")
    ap.add_argument("--levels", default="", help="comma-separated subset")
    ap.add_argument("-o", "--out", type=Path, default=Path("levels_table.json"))
    a = ap.parse_args(argv)
    comp = unet_component(a.unet)
    params = sum(p.numel() for p in comp.module.parameters())
    ep = capture(comp)
    rows = json.loads(a.out.read_text()) if a.out.is_file() else []
    work = Path(tempfile.mkdtemp(prefix="levels_"))
    for target in a.targets.split(","):
        base_dir = work / f"{target}_base"
        base_dir.mkdir()
        base = lower_at(target, comp, ep, base_dir, LowerOptions("fp16" if target == "coreml" else "fp32"))
        rows.append({"unet": a.unet, "target": target, "level": "none", "precision": base.precision, "bytes": path_bytes(base.path),
                     "ideal_bytes": params * (2 if target == "coreml" else 4), "psnr": psnr_of(target, base, comp)})
        print(json.dumps(rows[-1]), flush=True)
        wanted = [x for x in a.levels.split(",") if x] or LEVELS[target]
        for level in wanted:
            if level not in LEVELS[target] and a.levels == "":
                continue
            d = work / f"{target}_{len(rows)}"
            d.mkdir()
            dst = d / base.path.name
            (shutil.copytree if base.path.is_dir() else shutil.copyfile)(base.path, dst)
            lm = LoweredModel("unet", dst, base.precision, signature=base.signature)
            t0 = time.perf_counter()
            try:
                lm = compress(target, lm, comp, level, {})
                row = {"unet": a.unet, "target": target, "level": level, "precision": lm.precision, "seconds": round(time.perf_counter() - t0, 1),
                       **{k: lm.size.get(k) for k in ("bytes", "ideal_bytes", "ratio_to_ideal", "bits", "within_budget", "budget_bytes",
                                                      "overhead_bytes", "side_bytes", "kept_excess_bytes")},
                       "psnr": psnr_of(target, lm, comp), "notes": lm.notes}
            except Exception as e:  # one level failing must not hide the others
                row = {"unet": a.unet, "target": target, "level": level, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            a.out.write_text(json.dumps(rows, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    a.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
