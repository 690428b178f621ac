"""Writing a bundle: the files every bundle carries beside its models (tokenizer/, scheduler.json).
The staging folder is core.io.atomic_folder; the manifest is written by core.manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from md_export.core.io import write_json

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer_dir: Path, bundle: Path) -> None:
    dest = bundle / "tokenizer"
    dest.mkdir()
    for name in TOKENIZER_FILES:
        src = tokenizer_dir / name
        if src.is_file():
            shutil.copyfile(src, dest / name)


def write_scheduler(bundle: Path, config: dict) -> None:
    write_json(bundle / "scheduler.json", config)
