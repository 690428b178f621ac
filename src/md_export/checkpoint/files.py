"""Where a checkpoint's files are: the bundled default model, component folder names, and the
weights file inside a component folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from md_export.core.errors import InputError

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin", "pytorch_model.bin")
PICKLE_WEIGHTS = ("diffusion_pytorch_model.bin", "pytorch_model.bin")
COMPONENT_DIRS = ("unet", "text_encoder", "vae", "tokenizer", "scheduler")


def default_model_dir() -> Path:
    return Path(str(resources.files("md_export") / "default_model"))


def weights_file(folder: Path, allow_pickle: bool) -> Path:
    for name in WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            if name in PICKLE_WEIGHTS and not allow_pickle:
                raise InputError(
                    f"{p}: pickle weights can run code when loaded; convert them to .safetensors or pass --allow-pickle"
                )
            return p
    shards = sorted(folder.glob("*.safetensors.index.json"))
    if shards:
        return shards[0]
    raise InputError(f"{folder}: no weights file (expected one of {', '.join(WEIGHT_FILES[:2])})")

