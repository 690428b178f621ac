"""LoRA weights fused into the UNet and text encoder before export: W += scale * up @ down * alpha / rank.

Key layouts read (safetensors only):
- kohya / sd-scripts: `lora_unet_<module_path_with_underscores>.lora_down.weight`, `.lora_up.weight`,
  optional `.alpha`; text encoder `lora_te_...` (also `lora_te1_`);
- diffusers / peft: `unet.<module.path>.lora_A.weight` / `.lora_B.weight` (and `text_encoder.`),
  and the older `<module.path>.lora.down.weight` / `.lora.up.weight`, `..._lora.down.weight`.

Fusion is done here, not through peft (not a dependency): the same arithmetic peft's merge does,
for Linear and Conv2d layers. Every LoRA module must find its layer; a file that matches nothing
is an error naming the file.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from md_export.core.errors import InputError
from md_export.core.io import file_sha256, portable_path

COMPONENT_PREFIXES = {
    "unet": ("lora_unet_", "unet."),
    "text_encoder": ("lora_te_", "lora_te1_", "text_encoder."),
}
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
)


def _split(key: str):
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None, None


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors LoRA file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def parse_lora(path: str | Path) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{component: {module name as written: {"down", "up", "alpha"?}}}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--lora {path}: no such file")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"--lora {path}: LoRA weights are read from .safetensors only")
    sd = _read(str(path), path.stat().st_mtime)
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {c: {} for c in COMPONENT_PREFIXES}
    for key, t in sd.items():
        name, part = _split(key)
        if name is None:
            continue
        for comp, prefixes in COMPONENT_PREFIXES.items():
            hit = next((p for p in prefixes if name.startswith(p)), None)
            if hit:
                name = name[len(hit):]
                break
        else:
            continue
        if not hit.startswith("lora_"):
            name = name.replace(".processor.", ".")
        out[comp].setdefault(name, {})[part] = t
    if not any(out.values()):
        raise InputError(f"--lora {path}: no LoRA weights found (expected kohya lora_unet_*/lora_te_* or diffusers unet.*.lora_A/B keys)")
    for comp, mods in out.items():
        for name, parts in mods.items():
            if "down" not in parts or "up" not in parts:
                raise InputError(f"--lora {path}: module {name} has no {'up' if 'down' in parts else 'down'} weight")
    return out


def _targets(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv2d layers by dotted name and by kohya's underscored name."""
    table = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            table[name] = m
            table[name.replace(".", "_")] = m
    return table


def _old_diffusers_name(name: str) -> str:
    # `...attn1.to_q` stays; `...attn1.processor.to_q_lora` became `...attn1.to_q` above; to_out -> to_out.0
    return re.sub(r"\.to_out$", ".to_out.0", name)


def fuse_lora_into(model: nn.Module, modules: dict[str, dict[str, torch.Tensor]], scale: float, source: str) -> int:
    """Fuse one file's modules for one component into `model`; returns how many layers changed."""
    table = _targets(model)
    # CLIP text layers are named with or without "text_model." (transformers 5 dropped the wrapper)
    for k, v in list(table.items()):
        if k.startswith("text_model.") or k.startswith("text_model_"):
            table.setdefault(k[len("text_model."):], v)
        elif not k.startswith("text_model") and any(k.startswith(p) for p in ("embeddings", "encoder", "final_layer_norm")):
            table.setdefault(("text_model." if "." in k else "text_model_") + k, v)
    changed = 0
    for name, parts in modules.items():
        layer = table.get(name) or table.get(_old_diffusers_name(name))
        if layer is None:
            raise InputError(f"--lora {source}: no layer '{name}' in the {type(model).__name__} (LoRA for another architecture?)")
        down, up = parts["down"].float(), parts["up"].float()
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        w = layer.weight
        if isinstance(layer, nn.Conv2d):
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape[0], -1, *down.shape[2:])
            if delta.shape[2:] != w.shape[2:]:
                delta = torch.nn.functional.pad(delta, _center_pad(delta.shape[2:], w.shape[2:]))
        else:
            delta = up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)
        if delta.shape != w.shape:
            raise InputError(f"--lora {source}: {name} has shape {tuple(delta.shape)}, the layer {tuple(w.shape)}")
        with torch.no_grad():
            w.add_(delta.to(w.dtype) * (scale * alpha / rank))
        changed += 1
    return changed


def _center_pad(small, big):
    ph, pw = big[0] - small[0], big[1] - small[1]
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def fuse_loras(model: nn.Module, component: str, loras) -> nn.Module:
    """Apply every (path, scale) in order to a loaded component."""
    for path, scale in loras or ():
        modules = parse_lora(path)[component]
        if modules:
            fuse_lora_into(model, modules, float(scale), str(path))
    return model


def lora_source_json(loras, bundle: Path) -> list[dict]:
    """What the manifest records of each LoRA: its file relative to the bundle (no absolute path;
    None when it shares no folder with it), name, sha256, scale and the modules it changes."""
    out = []
    for path, scale in loras or ():
        parsed = parse_lora(path)
        out.append({"file": portable_path(Path(path), bundle), "name": Path(path).name, "sha256": file_sha256(Path(path)),
                    "scale": float(scale), "modules": {c: len(m) for c, m in parsed.items() if m}})
    return out
