"""The bundle manifest (manifest.json) as a typed object: one writer (`write_manifest`), one reader
(`read_manifest`/`load_manifest`), validated on read with errors naming the field.

The schema is the dataclasses below; docs/bundle-format.md documents it and a test checks the two
agree. Unknown fields are kept out of the object (a newer md-export may add some) but a field the
schema knows must have its type: a string where a number belongs is a one-line error, not a crash
later in a check."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import InputError
from .io import read_json, write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def _omit_empty():
    """A field written only when it holds something (absent rather than null or empty)."""
    return {"omit_empty": True}


@dataclass
class TensorEntry:
    name: str
    shape: list[int]
    dtype: str
    layout: Optional[str] = field(default=None, metadata=_omit_empty())  # chunk cut tensors have none


@dataclass
class ChunkEntry:
    file: str
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    sha256: str
    bytes: int


@dataclass
class ModelEntry:
    format: str
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    precision: str
    compression: str
    parameters: int
    bytes: int
    ideal_bytes: Optional[int] = field(default=None, metadata=_omit_empty())  # absent in bundles of md-export before 2026-11
    file: Optional[str] = field(default=None, metadata=_omit_empty())  # absent when chunked
    signature: Optional[str] = field(default=None, metadata=_omit_empty())  # TFLite only
    sha256: Optional[str] = field(default=None, metadata=_omit_empty())  # absent when chunked
    size: Optional[dict[str, Any]] = field(default=None, metadata=_omit_empty())  # compression size report
    notes: list[str] = field(default_factory=list, metadata=_omit_empty())
    chunks: list[ChunkEntry] = field(default_factory=list, metadata=_omit_empty())
    chunk_check: Optional[dict[str, Any]] = field(default=None, metadata=_omit_empty())

    def files(self) -> list[str]:
        """The files of this model: its file, or its chunks' files in run order."""
        if self.chunks:
            return [c.file for c in self.chunks]
        return [self.file] if self.file else []


@dataclass
class TokenizerEntry:
    vocab: str
    merges: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


@dataclass
class Pipeline:
    image_height: int
    image_width: int
    latent_channels: int
    latent_height: int
    latent_width: int
    vae_scaling_factor: float
    vae_shift_factor: float
    decoder_applies_scaling: bool
    guidance: str
    unet_batch: int
    default_guidance_scale: float
    default_steps: int
    scheduler: str
    text_max_length: int
    text_hidden_size: int
    tokenizer: TokenizerEntry
    timestep_cond_dim: Optional[int] = None


@dataclass
class NpuEntry:
    model: str
    soc: str
    status: str  # compiled | partial | fallback
    ops_on_npu: int
    ops_total: int
    file: Optional[str] = None  # None: the model stays on the uncompiled fallback for this SoC
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    partitions: int = 0
    qnn_version: Optional[str] = None
    reason: Optional[str] = None
    seconds: float = 0.0


@dataclass
class Manifest:
    schema_version: int
    target: str
    models: dict[str, ModelEntry]
    pipeline: Pipeline
    layout: Optional[str] = field(default=None, metadata=_omit_empty())  # absent: md-export's own; "apple": Apple's Swift package
    created: str = ""
    md_export_version: str = ""
    versions: dict[str, Optional[str]] = field(default_factory=dict)
    command: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    rewrites: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=lambda: {"status": "not-run"})
    parity_floors: dict[str, float] = field(default_factory=dict)
    # TFLite with --npu: one entry per model and SoC (file relative to the bundle, sha256, ops on the NPU, ...)
    npu: list[NpuEntry] = field(default_factory=list, metadata=_omit_empty())

    def to_json(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict, where: str | Path = MANIFEST) -> "Manifest":
        return _build(cls, data, str(where), "")


# Field order of the written file: what a person reading it wants first.
_ORDER = ("schema_version", "target", "layout", "created", "md_export_version", "versions", "command", "options", "source",
          "pipeline", "rewrites", "models", "npu", "parity", "parity_floors")
_MODEL_ORDER = ("file", "format", "signature", "inputs", "outputs", "precision", "compression", "parameters", "sha256",
                "bytes", "ideal_bytes", "size", "notes", "chunks", "chunk_check")
_PIPELINE_ORDER = ("image_height", "image_width", "latent_channels", "latent_height", "latent_width", "vae_scaling_factor",
                   "vae_shift_factor", "decoder_applies_scaling", "guidance", "unet_batch", "default_guidance_scale",
                   "default_steps", "scheduler", "timestep_cond_dim", "text_max_length", "text_hidden_size", "tokenizer")
_ORDERS = {Manifest: _ORDER, ModelEntry: _MODEL_ORDER, Pipeline: _PIPELINE_ORDER}


def _to_json(obj):
    if dataclasses.is_dataclass(obj):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        names = _ORDERS.get(type(obj), tuple(fields))
        out = {}
        for name in names:
            value = getattr(obj, name)
            if fields[name].metadata.get("omit_empty") and (value is None or value == [] or value == {}):
                continue
            out[name] = _to_json(value)
        return out
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def build(cls, data: dict, where: str = MANIFEST):
    """One schema object (Pipeline, ModelEntry, ...) from its JSON form, validated."""
    return _build(cls, data, where, "")


def _fail(where: str, name: str, message: str):
    raise InputError(f"{where}: field '{name}': {message}")


def _build(cls, data, where: str, prefix: str):
    if not isinstance(data, dict):
        _fail(where, prefix.rstrip(".") or "(top level)", f"expected an object, found {_kind(data)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(where, name, "missing; the manifest is incomplete")
            continue
        values[f.name] = _value(hints[f.name], data[f.name], where, name)
    return cls(**values)


def _value(tp, value, where: str, name: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _value(args[0], value, where, name)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, f"{name}.")
    if origin is list:
        if not isinstance(value, list):
            _fail(where, name, f"expected a list, found {_kind(value)}")
        (item,) = typing.get_args(tp)
        return [_value(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, name, f"expected an object, found {_kind(value)}")
        _key, item = typing.get_args(tp)
        return {k: _value(item, v, where, f"{name}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, name, f"expected true or false, found {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, name, f"expected an integer, found {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(where, name, f"expected a finite number, found {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, name, f"expected a string, found {_kind(value)}")
        return value
    raise TypeError(f"manifest schema: no reader for {tp!r} ({name})")  # a bug in this module


def _kind(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# -- files on disk -----------------------------------------------------------------------------------


def model_files(entry: dict) -> list[str]:
    """The files of one manifest model entry (as JSON): its file, or its chunks' files in run order."""
    if entry.get("chunks"):
        return [c["file"] for c in entry["chunks"]]
    return [entry["file"]] if entry.get("file") else []


def inside_bundle(bundle: Path, rel: str, what: str) -> Path:
    """`bundle / rel` when it names something inside the bundle; a bundle is untrusted input, so an
    absolute path, a '..' or a symlink that leads out of it (anywhere below a model folder too) is
    refused, exit 2."""
    manifest = Path(bundle) / MANIFEST
    parts = Path(rel).parts if isinstance(rel, str) else ()
    if not parts or Path(rel).is_absolute() or ".." in parts or "\\" in rel or ":" in parts[0]:
        raise InputError(f"{manifest}: {what} {rel!r} is not a path inside the bundle (absolute paths and '..' are refused)")
    root = Path(bundle).resolve()
    path = Path(bundle) / rel
    _confined(path, root, what)
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                _confined(Path(folder) / name, root, what)
    return path


def _confined(path: Path, root: Path, what: str) -> None:
    real = path.resolve()
    if real != root and root not in real.parents:
        raise InputError(f"{path}: {what} leads outside the bundle (to {real}); md-export does not follow it")


def load_manifest(bundle: Path) -> Manifest:
    """The bundle's manifest as a typed object, validated; one-line errors name the file and field.
    Every file it names must be inside the bundle (inside_bundle)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InputError(f"{bundle}: not a folder; expected an md-export bundle (a folder with manifest.json)")
    path = bundle / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: missing; {bundle} is not an md-export bundle (export one with `md-export export`)")
    inside_bundle(bundle, MANIFEST, "the manifest")
    data = read_json(path)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {version!r} is not supported (this md-export reads {SCHEMA_VERSION})")
    manifest = Manifest.from_json(data, path)
    for name, entry in manifest.models.items():
        files = entry.files()
        if not files:
            raise InputError(f"{path}: model '{name}' names no file (neither 'file' nor 'chunks')")
        for file in files:
            if not inside_bundle(bundle, file, f"model file for '{name}'").exists():
                raise InputError(f"{bundle / file}: model file for '{name}' named in the manifest is missing")
    for entry in manifest.npu:
        if entry.file is not None and not inside_bundle(bundle, entry.file, f"NPU model for '{entry.model}' on {entry.soc}").exists():
            raise InputError(f"{bundle / entry.file}: NPU model for '{entry.model}' on {entry.soc} named in the manifest is missing")
    tokenizer = manifest.pipeline.tokenizer
    for rel in (tokenizer.vocab, tokenizer.merges, "tokenizer", "scheduler.json"):
        if rel in (tokenizer.vocab, tokenizer.merges) or (bundle / rel).exists() or (bundle / rel).is_symlink():
            inside_bundle(bundle, rel, "bundle file")
    return manifest


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, validated as load_manifest does, as the JSON object readers index."""
    return load_manifest(bundle).to_json()


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    """Write manifest.json whole or not at all: a temporary file renamed over it."""
    write_json(Path(bundle) / MANIFEST, manifest.to_json())  # write_json: temp file renamed into place


def find_bundles(path: Path) -> list[Path]:
    """A bundle, or every bundle directly under a folder (out/ -> out/coreml, out/tflite, ...)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
        if found:
            return found
    raise InputError(f"{path}: no md-export bundle here (no manifest.json in it or in its sub-folders)")
