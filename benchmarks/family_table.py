"""Per-family table at full size: parameters per component, FLOPs of one UNet step, and the Core ML
and TFLite sizes at each recipe's compression (issue #6, "Measured in the note").

    python benchmarks/family_table.py                          # parameters, FLOPs, computed sizes
    python benchmarks/family_table.py --bundles /tmp/fam       # + measured sizes from exported bundles
    python benchmarks/family_table.py --bundles /tmp/fam --json family_table.json

Parameters and FLOPs need no weights: every family is built on the meta device and one UNet
forward runs under torch.utils.flop_counter.FlopCounterMode, which counts matmul, convolution and
attention (a multiply-add is 2 FLOPs) and nothing else (norms, activations, softmax, elementwise
ops are left out; they are a few percent). The step is at the family's default resolution and the
UNet batch its guidance uses (2 for classifier-free guidance batched, 1 otherwise).

Sizes: a bundle found under --bundles whose manifest names the family, the target and the same
per-component compression as the recipe, with full-size parameter counts, is MEASURED (manifest
"bytes"). Everything else is COMPUTED: parameters x bits / 8, times the file-to-ideal ratio measured
on full-size exports of the same target and level (from the bundles found, else the built-in ratios
below, which come from earlier full-size runs recorded in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
SIZE_TARGETS = ("coreml", "tflite")
LEVEL_BITS = {"int8": 8.0, "palettize-8": 8.0, "palettize-6": 6.0, "palettize-4": 4.0, "int4-block32": 4.0, "fp16": 16.0}

# bytes / (parameters x bits / 8) measured on full-size exports (benchmarks/README.md, SD 1.5 UNet,
# 859.5M random weights): Core ML fp16 1.72 GB, TFLite fp32 3.44 GB, int8 861.0 MB and 865.9 MB.
# The uncompressed ratios are rounded to the three digits the README gives.
KNOWN_RATIOS = {
    ("coreml", "none"): 1.72e9 / (859.52e6 * 2),
    ("tflite", "none"): 3.44e9 / (859.52e6 * 4),
    ("coreml", "int8"): 861.0e6 / 859.5e6,
    ("tflite", "int8"): 865.9e6 / 859.5e6,
}

# Full-size components measured earlier (benchmarks/README.md, int8_full_unet.py): (family, target,
# level, component) -> bytes, as rounded there.
KNOWN_MEASURED = {
    ("sd15", "coreml", "none", "unet"): 1.72e9,
    ("sd15", "tflite", "none", "unet"): 3.44e9,
}


# -- parameters and FLOPs ------------------------------------------------------------------------------


def build_on_meta(family: str, size: str = "full"):
    """(text encoder, UNet, VAE decoder) as the exporter wraps them, with no storage behind them."""
    from md_export.components.plan import VAEDecoderWrapper
    from md_export.checkpoint.init import build_components

    with torch.device("meta"):
        unet, text, vae = build_components(family, size)
    return text, unet, VAEDecoderWrapper(vae)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_step_inputs(fam, unet_cfg: dict, text_cfg: dict, vae_cfg: dict) -> tuple[dict, dict]:
    """Meta inputs for one UNet call at the family's default resolution, and what they were."""
    down = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    side = fam.resolution // down
    batch = fam.unet_batch()
    kw = dict(
        sample=torch.empty(batch, unet_cfg.get("in_channels", 4), side, side, device="meta"),
        timestep=torch.empty(batch, device="meta"),
        encoder_hidden_states=torch.empty(batch, 77, text_cfg["hidden_size"], device="meta"),
    )
    if unet_cfg.get("time_cond_proj_dim"):
        kw["timestep_cond"] = torch.empty(batch, unet_cfg["time_cond_proj_dim"], device="meta")
    return kw, {"resolution": fam.resolution, "latent": [side, side], "batch": batch}


def flops(module: nn.Module, **inputs) -> dict[str, int]:
    """{"total", "attention"}: attention = the score and value products (batched matmuls and SDPA,
    which only attention produces in these models); the rest is convolutions and linear layers.
    Meta inputs matter: on real CPU tensors SDPA takes a flash-attention kernel that
    FlopCounterMode has no formula for, and the attention products are silently left out."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(**inputs)
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = sum(n for op, n in per_op.items() if "bmm" in op or "scaled_dot_product" in op)
    return {"total": counter.get_total_flops(), "attention": attention}


def family_numbers(name: str) -> dict:
    from md_export.families.registry import get_family

    fam = get_family(name)
    cfgs = fam.configs("full")
    text, unet, decoder = build_on_meta(name)
    params = {"text_encoder": count(text), "unet": count(unet), "vae_decoder": count(decoder)}
    params["total"] = sum(params.values())
    kw, step = unet_step_inputs(fam, cfgs["unet"], cfgs["text_encoder"], cfgs["vae"])
    kw["return_dict"] = False
    unet_flops = flops(unet, **kw)
    side = step["latent"][0]
    dec_flops = flops(decoder, latent=torch.empty(1, cfgs["vae"]["latent_channels"], side, side, device="meta"))
    te_flops = flops(text, input_ids=torch.zeros(1, 77, dtype=torch.long, device="meta"))
    return {
        "family": name,
        "params": params,
        "unet_step": {**step, "flops": unet_flops["total"], "attention_flops": unet_flops["attention"],
                      "flops_batch1": unet_flops["total"] // step["batch"]},
        "text_encoder_flops": te_flops["total"],
        "vae_decoder_flops": dec_flops["total"],
        "steps": fam.default_steps,
    }


# -- recipes: what each component is compressed to -----------------------------------------------------


@dataclass
class RecipeTarget:
    recipe: str
    family: str
    target: str
    precision: str
    levels: dict[str, str] = field(default_factory=dict)  # component -> level ("none" = uncompressed)

    def bits(self, component: str) -> float:
        level = self.levels[component]
        if level == "none":
            return 16.0 if self.precision == "fp16" else 32.0
        return LEVEL_BITS[level]


def recipe_targets(folder: Path = ROOT / "recipes") -> list[RecipeTarget]:
    out = []
    for path in sorted(folder.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for target in data.get("targets", []):
            if target not in SIZE_TARGETS:
                continue
            table = data.get(target, {})
            base = table.get("compression", "none")
            comps = table.get("components", {})
            levels = {c: comps.get(c, {}).get("compression", base) for c in COMPONENTS}
            precision = table.get("precision", "fp16" if target == "coreml" else "fp32")
            out.append(RecipeTarget(path.stem, data["family"], target, precision, levels))
    return out


# -- bundles: measured sizes ---------------------------------------------------------------------------


def read_bundles(folder: Path) -> list[dict]:
    """Every manifest.json under `folder`, reduced to what the table needs."""
    found = []
    for manifest in sorted(folder.rglob("manifest.json")):
        m = json.loads(manifest.read_text(encoding="utf-8"))
        models = m.get("models", {})
        if not models:
            continue
        found.append({
            "path": str(manifest.parent),
            "family": (m.get("source") or {}).get("family"),
            "target": m.get("target"),
            "models": {k: {"compression": v.get("compression", "none"), "precision": v.get("precision"),
                           "parameters": v.get("parameters"),
                           "bytes": v.get("bytes"), "ideal_bytes": v.get("ideal_bytes")} for k, v in models.items()},
        })
    return found


def measured_ratios(bundles: list[dict], full_params: dict[str, dict]) -> dict[tuple, dict[int, float]]:
    """(target, level, component) -> {parameters: bytes / ideal} from full-size bundles (tiny ones
    are dominated by graph overhead and would overstate the ratio)."""
    ratios: dict[tuple, dict[int, float]] = {}
    for b in bundles:
        fam = full_params.get(b["family"])
        if fam is None:
            continue
        for comp, mdl in b["models"].items():
            if mdl["parameters"] == fam.get(comp) and mdl["ideal_bytes"]:
                ratios.setdefault((b["target"], mdl["compression"], comp), {})[mdl["parameters"]] = mdl["bytes"] / mdl["ideal_bytes"]
    return ratios


def ratio_for(ratios: dict, target: str, level: str, comp: str, params: int) -> tuple[float, str]:
    """Same target, level and component first; then the README's full-size UNet ratios; then another
    component's (a small decoder carries relatively more graph overhead, so it comes last). Among
    several measured models, the one closest in parameter count."""
    if (target, level, comp) in ratios:
        by_size = ratios[(target, level, comp)]
        return by_size[min(by_size, key=lambda n: abs(n - params))], "measured ratio"
    if (target, level) in KNOWN_RATIOS:
        return KNOWN_RATIOS[(target, level)], "README ratio"
    same = [r for (t, lv, _), by_size in ratios.items() if t == target and lv == level for r in by_size.values()]
    if same:
        return max(same), "measured ratio (other component)"
    return 1.0, "ideal"


def size_cell(rt: RecipeTarget, params: dict, bundles: list[dict], ratios: dict) -> dict:
    """Per-component bytes for one recipe target: measured where a matching full-size bundle exists."""
    per = {}
    for b in bundles:
        if b["family"] != rt.family or b["target"] != rt.target:
            continue
        for comp in COMPONENTS:
            mdl = b["models"].get(comp)
            if (mdl and mdl["parameters"] == params[comp] and mdl["compression"] == rt.levels[comp]
                    and mdl["precision"] == rt.precision and mdl["bytes"]):
                per[comp] = {"bytes": mdl["bytes"], "how": "measured", "bundle": b["path"]}
    for comp in COMPONENTS:
        earlier = KNOWN_MEASURED.get((rt.family, rt.target, rt.levels[comp], comp))
        if comp not in per and earlier:
            per[comp] = {"bytes": int(earlier), "how": "measured", "bundle": "benchmarks/README.md (earlier run)"}
        if comp not in per:
            ratio, why = ratio_for(ratios, rt.target, rt.levels[comp], comp, params[comp])
            ideal = params[comp] * rt.bits(comp) / 8
            per[comp] = {"bytes": int(ideal * ratio), "how": "computed", "ratio": round(ratio, 4), "ratio_from": why}
    total = sum(v["bytes"] for v in per.values())
    hows = {v["how"] for v in per.values()}
    return {"recipe": rt.recipe, "target": rt.target, "levels": rt.levels, "precision": rt.precision,
            "components": per, "bytes": total, "how": hows.pop() if len(hows) == 1 else "mixed"}


# -- output ---------------------------------------------------------------------------------------------


def fmt_m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def fmt_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


SHORT = {"text_encoder": "TE", "unet": "UNet", "vae_decoder": "dec"}


def level_note(cell: dict) -> str:
    lv = cell["levels"]
    base = {"coreml": "fp16", "tflite": "fp32"}[cell["target"]]
    names = {c: (base if v == "none" else v) for c, v in lv.items()}
    if len(set(names.values())) == 1:
        return names["unet"]
    return ", ".join(f"{SHORT[c]} {v}" for c, v in names.items())


def size_text(cell: dict | None) -> str:
    if cell is None:
        return "—"
    how = cell["how"]
    if how == "mixed":
        how = " + ".join(SHORT[c] for c, v in cell["components"].items() if v["how"] == "measured") + " measured, rest computed"
    return f"{fmt_bytes(cell['bytes'])} ({level_note(cell)}; {how})"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family (recipe) | params TE / UNet / VAE dec / total | UNet GFLOPs per step (resolution, batch) | Core ML at recipe | TFLite at recipe |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["params"]
        s = r["unet_step"]
        lines.append(
            f"| {r['family']} ({r['recipe']}) | {fmt_m(p['text_encoder'])} / {fmt_m(p['unet'])} / {fmt_m(p['vae_decoder'])} / "
            f"{fmt_m(p['total'])} | {s['flops'] / 1e9:.0f} ({s['resolution']}px, latent {s['latent'][0]}, batch {s['batch']}; "
            f"attention products {s['attention_flops'] / 1e9:.0f}) | "
            f"{size_text(r['sizes'].get('coreml'))} | {size_text(r['sizes'].get('tflite'))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, help="folder searched for exported bundles (manifest.json)")
    ap.add_argument("--families", help="comma-separated subset (default: every registered family)")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    args = ap.parse_args(argv)

    from md_export.families.registry import all_families

    names = args.families.split(",") if args.families else list(all_families())
    numbers = {n: family_numbers(n) for n in names}
    full_params = {n: v["params"] for n, v in numbers.items()}
    bundles = read_bundles(args.bundles) if args.bundles else []
    ratios = measured_ratios(bundles, full_params)

    by_recipe: dict[tuple[str, str], dict] = {}
    for rt in recipe_targets():
        if rt.family in numbers:
            by_recipe.setdefault((rt.family, rt.recipe), {})[rt.target] = size_cell(rt, full_params[rt.family], bundles, ratios)
    rows = []
    for name in names:
        for (fam, recipe), sizes in by_recipe.items():
            if fam == name:
                rows.append({**numbers[name], "recipe": recipe, "sizes": sizes})
    print(markdown(rows))
    if ratios:
        print("\nfile/ideal ratios measured on full-size bundles: "
              + ", ".join(f"{t} {lv} {c} ({n / 1e6:.1f}M) {r:.4f}" for (t, lv, c), by in sorted(ratios.items())
                          for n, r in sorted(by.items())))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": {"/".join(k): {str(n): r for n, r in v.items()}
                                                                  for k, v in ratios.items()}}, indent=1) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
