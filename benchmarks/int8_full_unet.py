"""int8 weights for a full-size SD-1.5-class UNet (random weights, built from the SD 1.5 config,
nothing downloaded), in TFLite and Core ML, with wall time and peak memory per stage.

Each stage runs in its own process so its peak RSS (resource.getrusage RUSAGE_SELF ru_maxrss)
is its own; the Python-heap peak of the quantize stages is also measured with tracemalloc.

    python benchmarks/int8_full_unet.py all --work /tmp/sd15_bench          # every stage in turn
    python benchmarks/int8_full_unet.py convert-tflite --work /tmp/sd15_bench # one stage
    python benchmarks/int8_full_unet.py report --work /tmp/sd15_bench        # the table

Stages: convert-tflite (fp32 .tflite), convert-coreml (fp16 .mlpackage), quantize-tflite,
quantize-coreml (int8 per-channel symmetric weights via md_export.compress), chunk-coreml (the fp16
package split under 1 GB as `--chunk-unet` does, the chain checked against the whole in milrun), report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
STAGES = ("convert-tflite", "convert-coreml", "quantize-tflite", "quantize-coreml", "chunk-coreml")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _component(batch: int = 2, latent: int = 64, with_module: bool = True):
    import torch
    from diffusers import UNet2DConditionModel

    from md_export.components.plan import ComponentPlan, UNetWrapper
    from md_export.core.spec import TensorSpec

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval() if with_module else None
    comp = ComponentPlan(
        "unet",
        [TensorSpec("sample", (batch, 4, latent, latent), "float32", "NCHW"),
         TensorSpec("timestep", (batch,), "float32", "B"),
         TensorSpec("encoder_hidden_states", (batch, 77, 768), "float32", "BSD")],
        [TensorSpec("noise_pred", (batch, 4, latent, latent), "float32", "NCHW")],
        module=UNetWrapper(unet).eval() if with_module else None,
    )
    return comp


def _record(work: Path, stage: str, data: dict) -> None:
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[stage] = data
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({stage: data}))


def _size(path: Path) -> int:
    from md_export.core.io import path_bytes

    return path_bytes(path)


def stage_convert(work: Path, target: str) -> dict:
    from md_export.export import lower_at
    from md_export.lower.base import LowerOptions
    from md_export.capture.torch_export import capture
    from md_export.components.plan import count_parameters

    t0 = time.perf_counter()
    comp = _component()
    params = count_parameters(comp.module)
    out = work / f"fp_{target}"
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    if target == "coreml":
        ep = capture(comp)
        lowered = lower_at(target, comp, ep, out, LowerOptions("fp16", "iOS17"))
    else:
        lowered = lower_at(target, comp, None, out, LowerOptions("fp32"))
    t2 = time.perf_counter()
    return {"parameters": params, "path": str(lowered.path), "bytes": _size(lowered.path),
            "build_seconds": round(t1 - t0, 1), "convert_seconds": round(t2 - t1, 1), "peak_rss_bytes": _peak_rss_bytes()}


def stage_quantize(work: Path, target: str) -> dict:
    from md_export.lower.base import LoweredModel
    from md_export.compress.apply import compress

    src = json.loads((work / "results.json").read_text())[f"convert-{target}"]
    src_path = Path(src["path"])
    out = work / f"int8_{target}"
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    dest = out / src_path.name
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    (shutil.copytree if src_path.is_dir() else shutil.copyfile)(src_path, dest)
    lowered = LoweredModel("unet", dest, "fp16" if target == "coreml" else "fp32", signature="unet" if target == "tflite" else None)
    comp = _component()  # the quantizers only read names and parameter counts from it
    tracemalloc.start()
    t0 = time.perf_counter()
    result = compress(target, lowered, comp, "int8", {})
    seconds = time.perf_counter() - t0
    _cur, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    data = {"path": str(result.path), "bytes": _size(result.path), "fp_bytes": src["bytes"], "compression": result.compression,
            "quantize_seconds": round(seconds, 1), "python_heap_peak_bytes": heap_peak, "peak_rss_bytes": _peak_rss_bytes(),
            "notes": result.notes, "parameters": src["parameters"], "ideal_int8_bytes": src["parameters"]}
    data["ratio_vs_fp"] = round(data["bytes"] / src["bytes"], 4)
    return data


def stage_chunk(work: Path, target: str) -> dict:
    """What `md-export coreml --chunk-unet` does to the UNet, on the full-size fp16 package."""
    import shutil

    from md_export.compress.chunk import CHUNK_LIMIT_BYTES, chunk_in_bundle

    src = json.loads((work / "results.json").read_text())[f"convert-{target}"]
    out = work / f"chunk_{target}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    whole = out / Path(src["path"]).name
    shutil.copytree(src["path"], whole)
    t0 = time.perf_counter()
    fields = chunk_in_bundle(whole, _component(with_module=False), CHUNK_LIMIT_BYTES, min_chunks=1)
    return {"chunk_seconds": round(time.perf_counter() - t0, 1), "bytes": sum(c["bytes"] for c in fields["chunks"]),
            "fp_bytes": src["bytes"], "chunks": [{"file": c["file"], "bytes": c["bytes"], "inputs": len(c["inputs"]),
            "outputs": len(c["outputs"])} for c in fields["chunks"]], "chunk_check": fields["chunk_check"],
            "peak_rss_bytes": _peak_rss_bytes()}


def report(work: Path) -> str:
    r = json.loads((work / "results.json").read_text())
    gib = 1024**3
    lines = ["| stage | seconds | peak RSS GiB | size | notes |", "|---|---|---|---|---|"]
    for stage in STAGES:
        d = r.get(stage)
        if not d:
            lines.append(f"| {stage} | not run | | | |")
            continue
        if "error" in d:
            lines.append(f"| {stage} | failed | {d.get('peak_rss_bytes', 0) / gib:.1f} | | {d['error'][:120]} |")
            continue
        secs = d.get("convert_seconds", d.get("quantize_seconds", d.get("chunk_seconds")))
        size = f"{d['bytes'] / 1e6:.0f} MB"
        if "ratio_vs_fp" in d:
            size += f" ({d['ratio_vs_fp']:.3f} of fp, ideal int8 {d['ideal_int8_bytes'] / 1e6:.0f} MB)"
        notes = "; ".join(d.get("notes", []))[:200]
        if "chunks" in d:
            check = d["chunk_check"]
            notes = ", ".join(f"{c['file']} {c['bytes'] / 1e6:.0f} MB" for c in d["chunks"]) + (
                "; chain identical to the whole (milrun)" if check["identical"] else f"; chain vs whole {check['psnr_vs_whole']} dB")
        if "python_heap_peak_bytes" in d:
            notes = f"py-heap peak {d['python_heap_peak_bytes'] / gib:.2f} GiB; " + notes
        lines.append(f"| {stage} | {secs} | {d['peak_rss_bytes'] / gib:.1f} | {size} | {notes} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES + ("all", "report"))
    p.add_argument("--work", type=Path, default=Path("/tmp/sd15_int8_bench"))
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.stage == "report":
        print(report(a.work))
        return 0
    if a.stage == "all":
        rc = 0
        for stage in STAGES:
            rc |= subprocess.call([sys.executable, __file__, stage, "--work", str(a.work)])
        print(report(a.work))
        return rc
    os.environ.setdefault("TQDM_DISABLE", "1")
    kind, target = a.stage.split("-")
    try:
        stage = {"convert": stage_convert, "quantize": stage_quantize, "chunk": stage_chunk}[kind]
        data = stage(a.work, target)
    except Exception as e:  # record the failure with its memory, so a partial run still reports
        _record(a.work, a.stage, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "peak_rss_bytes": _peak_rss_bytes()})
        raise
    _record(a.work, a.stage, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
