"""Per-layer sensitivity to weight compression, and mixed-bit recipes from it.

Each conv/linear layer of a component is compressed alone (its weight replaced by what the level
would store: k-means palette for Core ML palettization, symmetric per-channel integers for
TFLite), the component is run on recorded calibration inputs, and the PSNR of its output
against the fp32 output is recorded per bit width. A mixed-bit recipe then picks bits per layer
for an average bit width: greedily lower the layer whose next step down adds the least output
noise per bit saved.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from md_export.components.plan import ComponentPlan
from md_export.compress.calibration import calibration_feeds
from md_export.compress.coreml import WEIGHT_OP_TYPES, consts_feeding, kmeans_1d
from md_export.core.metrics import psnr

PALETTE_BITS = (8, 6, 4, 2)
TFLITE_BITS = (16, 8, 4)
MIN_PARAMS = 256  # smaller layers stay at the widest choice (not worth a palette)


def range_psnr(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR against the reference's range (max - min), so layers with offset outputs compare fairly."""
    return psnr(ref, out, peak=float(ref.max() - ref.min()) or 1.0)


def palettized(w: torch.Tensor, bits: int) -> torch.Tensor:
    v = w.detach().to(torch.float16).numpy()
    lut, idx = kmeans_1d(v, 1 << bits)
    return torch.from_numpy(lut.astype(np.float16)[idx].reshape(v.shape).astype(np.float32))


def int_quantized(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= 16:
        return w.detach().to(torch.float16).to(torch.float32)
    q = (1 << (bits - 1)) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / q
    return (torch.round(flat / scale[:, None]).clamp(-q, q) * scale[:, None]).reshape(w.shape)


@dataclass
class LayerScore:
    name: str
    params: int
    psnr: dict[int, float]


def layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)) and m.weight.numel() >= MIN_PARAMS]


def analyze(component: ComponentPlan, feeds: list[dict[str, np.ndarray]], target: str = "coreml",
            bits: tuple[int, ...] | None = None, only: Sequence[str] | None = None) -> list[LayerScore]:
    """Each layer (or each of `only`, by module name) compressed alone at every bit width, the
    component's worst PSNR over `feeds` against its uncompressed output. Layers are independent,
    so `only` splits the work into pieces that give the same scores (md_export.sweep.sensitivity)."""
    bits = bits or (PALETTE_BITS if target == "coreml" else TFLITE_BITS)
    fn = palettized if target == "coreml" else int_quantized
    module = component.module
    names = [s.name for s in component.inputs]

    def run() -> list[np.ndarray]:
        with torch.no_grad():
            return [module(*(torch.from_numpy(f[n]) for n in names)).numpy() for f in feeds]

    ref = run()
    out = []
    wanted = None if only is None else set(only)
    for name, layer in layers(module):
        if wanted is not None and name not in wanted:
            continue
        original = layer.weight.data.clone()
        scores = {}
        for b in bits:
            layer.weight.data = fn(original, b)
            scores[b] = min(range_psnr(r, o) for r, o in zip(ref, run()))
        layer.weight.data = original
        out.append(LayerScore(name, int(original.numel()), scores))
    return out


def allocate(scores: list[LayerScore], average_bits: float, bits: tuple[int, ...]) -> dict[str, int]:
    """Bits per layer with parameter-weighted average <= average_bits."""
    order = sorted(bits, reverse=True)
    choice = {s.name: 0 for s in scores}  # index into order
    total = sum(s.params for s in scores) or 1

    def noise(s: LayerScore, i: int) -> float:
        p = s.psnr[order[i]]
        return 0.0 if math.isinf(p) else 10 ** (-p / 10)

    def avg() -> float:
        return sum(order[choice[s.name]] * s.params for s in scores) / total

    while avg() > average_bits + 1e-9:
        best, best_cost = None, None
        for s in scores:
            i = choice[s.name]
            if i + 1 >= len(order):
                continue
            cost = (noise(s, i + 1) - noise(s, i)) / (s.params * (order[i] - order[i + 1]))
            if best_cost is None or cost < best_cost:
                best, best_cost = s, cost
        if best is None:
            break
        choice[best.name] += 1
    return {s.name: order[choice[s.name]] for s in scores}


def recipe_json(component: str, target: str, scores: list[LayerScore], average_bits: float | None = None) -> dict:
    bits = sorted({b for s in scores for b in s.psnr}, reverse=True)
    data = {
        "component": component, "target": target, "bits": bits,
        "method": "each layer compressed alone; PSNR (dB) of the component output vs fp32, worst over calibration inputs",
        "layers": [{"name": s.name, "params": s.params, "psnr": {str(b): _finite(v) for b, v in s.psnr.items()}} for s in scores],
    }
    if average_bits is not None:
        choice = allocate(scores, average_bits, tuple(bits))
        total = sum(s.params for s in scores) or 1
        data["mixed_bit"] = {"target_average_bits": average_bits,
                             "average_bits": sum(choice[s.name] * s.params for s in scores) / total, "choice": choice}
    return data


def _finite(v: float):
    return "inf" if math.isinf(v) else round(v, 3)


def plot(data: dict, path: Path) -> None:
    """PSNR per layer, one line per bit width, drawn with Pillow."""
    from PIL import Image, ImageDraw

    W, H, L, R, T, B = 960, 480, 60, 20, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    layers_ = data["layers"]
    vals = [float(v) for lay in layers_ for v in lay["psnr"].values() if v != "inf"]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    lo, hi = math.floor(lo / 10) * 10, math.ceil(hi / 10) * 10 + (10 if hi == lo else 0)
    n = max(len(layers_), 2)

    def xy(i, v):
        return L + (W - L - R) * i / (n - 1), T + (H - T - B) * (1 - (v - lo) / (hi - lo))

    d.rectangle([L, T, W - R, H - B], outline="black")
    for k in range(int(lo), int(hi) + 1, 10):
        _, y = xy(0, k)
        d.line([L, y, W - R, y], fill=(225, 225, 225))
        d.text((5, y - 6), f"{k} dB", fill="black")
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for ci, b in enumerate(data["bits"]):
        pts = []
        for i, lay in enumerate(layers_):
            v = lay["psnr"].get(str(b))
            pts.append(xy(i, hi if v == "inf" else float(v)))
        if len(pts) > 1:
            d.line(pts, fill=colors[ci % len(colors)], width=2)
        d.text((L + 10 + 90 * ci, 8), f"{b}-bit", fill=colors[ci % len(colors)])
    d.text((L, H - B + 10), f"{data['component']} layers (0..{len(layers_) - 1}), each compressed alone ({data['target']})", fill="black")
    img.save(path)


def write(out_dir: Path, data: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / f"{data['component']}.json"
    p = out_dir / f"{data['component']}.png"
    j.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    plot(data, p)
    return j, p


# -- Core ML mixed-bit level ----------------------------------------------------------------------


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", s)


def const_names_for(path: Path, module_names: list[str]) -> dict[str, str]:
    """torch module path -> name of the Core ML const holding its weight."""
    consts = [c for c, _op, _n in consts_feeding(path, WEIGHT_OP_TYPES)]
    out = {}
    for m in module_names:
        key = _norm(m + ".weight")
        hits = [c for c in consts if _norm(c).endswith(key + "_to_fp16") or _norm(c).endswith(key)
                or (key in _norm(c) and _norm(c).split(key)[1] in ("", "_to_fp16", "_to_fp32"))]
        if hits:
            out[m] = min(hits, key=len)
    return out


def mixed_bit_recipe(component: ComponentPlan, lowered, average_bits: float, context: dict) -> dict:
    feeds = calibration_feeds(component, context, limit=4)
    scores = analyze(component, feeds, "coreml", PALETTE_BITS)
    data = recipe_json(component.name, "coreml", scores, average_bits)
    mapping = const_names_for(lowered.path, [s.name for s in scores])
    missing = [s.name for s in scores if s.name not in mapping]
    per_const = {mapping[n]: b for n, b in data["mixed_bit"]["choice"].items() if n in mapping}
    # report the average over what is actually palettized
    total = sum(s.params for s in scores if s.name in mapping) or 1
    achieved = sum(data["mixed_bit"]["choice"][s.name] * s.params for s in scores if s.name in mapping) / total
    if missing:
        lowered.notes.append(f"mixed-bit: {len(missing)} layers not found in the program, palettized at 8 bits: {', '.join(missing[:5])}")
    recipe_dir = context.get("sensitivity_dir")
    if recipe_dir:
        write(Path(recipe_dir), data)
    return {"per_const_bits": per_const, "average_bits": achieved, "recipe": data}
