"""What a checkpoint holds and what would be exported; what a bundle holds. Reads configs,
safetensors headers and manifests only: nothing is loaded or run."""

from __future__ import annotations

import math
from pathlib import Path

from md_export.checkpoint.files import weights_file
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import make_plan
from md_export.config.options import ExportOptions
from md_export.config.resolve import apply_recipe, check_family, with_family_defaults
from md_export.core.io import read_json
from md_export.core.manifest import find_bundles, read_manifest


def count_safetensors_parameters(path: Path) -> int | None:
    """Parameters from a safetensors header (or an index of shards) without reading tensors."""
    from safetensors import safe_open

    if path.name.endswith(".index.json"):
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        counts = [count_safetensors_parameters(path.parent / s) for s in shards]
        return None if None in counts else sum(counts)
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def export_options_for(ckpt: Checkpoint, recipe=None, **given) -> ExportOptions:
    """The options `md-export export` would use: what was given, then the recipe's values, then
    the family's defaults (UNet batch, steps, scheduler), in the same order as the export command."""
    given = {k: v for k, v in given.items() if v is not None}
    options = ExportOptions(**given)
    if recipe is not None:
        check_family(recipe, ckpt)
        options = apply_recipe(recipe, options, set(given))
    return with_family_defaults(ckpt, options)


def inspect_checkpoint(ckpt: Checkpoint, recipe=None, **given) -> dict:
    """`given`: height, width, unet_batch, steps, scheduler as on the export command line (None = not given)."""
    options = export_options_for(ckpt, recipe, **given)
    plan = make_plan(ckpt, height=options.height, width=options.width, unet_batch=options.unet_batch,
                     with_encoder=options.with_encoder)
    folders = {"unet": ckpt.unet_dir, "text_encoder": ckpt.text_encoder_dir, "vae": ckpt.vae_dir}
    configs = {"unet": ckpt.unet_config, "text_encoder": ckpt.text_encoder_config, "vae": ckpt.vae_config}
    components = {}
    for name, folder in folders.items():
        weights = weights_file(folder, ckpt.allow_pickle)
        cfg = configs[name]
        components[name] = {
            "folder": str(folder),
            "class": cfg.get("_class_name") or (cfg.get("architectures") or ["?"])[0],
            "weights": str(weights),
            "parameters": count_safetensors_parameters(weights),
        }
    return {
        "kind": "checkpoint",
        "source": ckpt.describe(),
        "layout": ckpt.kind,
        "family": ckpt.family,
        "recipe": str(recipe.path) if recipe is not None else None,
        "targets": list(options.targets),
        "components": components,
        "exports": {
            name: {"inputs": [s.to_json() for s in c.inputs], "outputs": [s.to_json() for s in c.outputs]}
            for name, c in plan.components.items()
        },
        "pipeline": plan.pipeline_json(ckpt, options.steps, options.scheduler),
    }


def inspect_bundles(path: Path) -> list[dict]:
    out = []
    for bundle in find_bundles(path):
        m = read_manifest(bundle)
        out.append({"kind": "bundle", "path": str(bundle), "target": m["target"], "models": m["models"],
                    "pipeline": m["pipeline"], "parity": m.get("parity", {}), "created": m.get("created")})
    return out


def is_bundle_path(path: Path) -> bool:
    try:
        find_bundles(path)
        return True
    except Exception:
        return False
