"""What a checkpoint holds and what would be exported; what a bundle holds. Reads configs,
safetensors headers and manifests only: nothing is loaded or run."""

from __future__ import annotations

import math
from pathlib import Path

from .bundle import find_bundles, read_manifest
from .checkpoint import Checkpoint, _weights_file
from .components import make_plan


def count_safetensors_parameters(path: Path) -> int | None:
    """Parameters from a safetensors header (or an index of shards) without reading tensors."""
    from safetensors import safe_open

    if path.name.endswith(".index.json"):
        from .checkpoint import read_json

        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        counts = [count_safetensors_parameters(path.parent / s) for s in shards]
        return None if None in counts else sum(counts)
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def inspect_checkpoint(ckpt: Checkpoint, **plan_options) -> dict:
    plan = make_plan(ckpt, **plan_options)
    folders = {"unet": ckpt.unet_dir, "text_encoder": ckpt.text_encoder_dir, "vae": ckpt.vae_dir}
    configs = {"unet": ckpt.unet_config, "text_encoder": ckpt.text_encoder_config, "vae": ckpt.vae_config}
    components = {}
    for name, folder in folders.items():
        weights = _weights_file(folder, ckpt.allow_pickle)
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
        "components": components,
        "exports": {
            name: {"inputs": [s.to_json() for s in c.inputs], "outputs": [s.to_json() for s in c.outputs]}
            for name, c in plan.components.items()
        },
        "pipeline": plan.pipeline_json(ckpt),
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
