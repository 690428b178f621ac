"""Find and load a checkpoint's components from local files (never from the network).

Two layouts are accepted:
- a diffusers pipeline folder: model_index.json, unet/, text_encoder/, vae/, tokenizer/, scheduler/;
- component folders given one by one (--unet, --text-encoder, --vae, --tokenizer, --scheduler).
With neither, the bundled tiny default model is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from md_export.checkpoint.files import COMPONENT_DIRS, default_model_dir, weights_file
from md_export.core.errors import InputError
from md_export.core.io import file_sha256, read_json
from md_export.shapes import VOCABULARY_FIELD


LARGE_PIPELINE_BYTES = 200_000_000  # weights from which md-export saves memory at some cost in time (Checkpoint.is_large)


@dataclass
class Checkpoint:
    """Where each component lives. Loading is lazy: `inspect` reads configs only."""

    kind: str  # "diffusers-folder" | "component-folders" | "default"
    source: Path | None
    unet_dir: Path
    text_encoder_dir: Path
    vae_dir: Path
    tokenizer_dir: Path
    scheduler_dir: Path | None
    allow_pickle: bool = False
    _configs: dict = field(default_factory=dict, repr=False)
    _dtypes: dict = field(default_factory=dict, repr=False)  # weights folder -> {tensor: safetensors dtype}
    _digests: dict = field(default_factory=dict, repr=False, compare=False)  # weights file -> (size, mtime_ns, sha256)
    family_name: str | None = None  # --family, or recorded by `md-export init`; else detected from configs
    lora: tuple = ()  # ((path, scale), ...) fused into the UNet and text encoder after loading
    original: Path | None = None  # the single file a "single-file" checkpoint was converted from

    # -- discovery ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        unet: str | Path | None = None,
        text_encoder: str | Path | None = None,
        vae: str | Path | None = None,
        tokenizer: str | Path | None = None,
        scheduler: str | Path | None = None,
        allow_pickle: bool = False,
        family: str | None = None,
        lora=(),
    ) -> "Checkpoint":
        if path is not None and Path(path).is_file():
            from md_export.checkpoint.single_file import open_single_file

            return open_single_file(cls, Path(path), family=family, allow_pickle=allow_pickle, lora=lora)
        overrides = {"unet": unet, "text_encoder": text_encoder, "vae": vae, "tokenizer": tokenizer, "scheduler": scheduler}
        if path is None and not any(overrides.values()):
            root, kind = default_model_dir(), "default"
        elif path is None:
            root, kind = None, "component-folders"
        else:
            root, kind = Path(path), "diffusers-folder"
            if not root.exists():
                raise InputError(f"{root}: no such file or folder")
            if root.is_file():
                raise InputError(
                    f"{root}: is a file; expected a diffusers pipeline folder (model_index.json, unet/, text_encoder/, vae/, tokenizer/, scheduler/)"
                )
            if not (root / "model_index.json").is_file() and not any(overrides.values()):
                raise InputError(
                    f"{root}: not a diffusers pipeline folder (no model_index.json); "
                    "give one, or the components with --unet/--text-encoder/--vae/--tokenizer"
                )
        dirs: dict[str, Path | None] = {}
        for name in COMPONENT_DIRS:
            given = overrides[name]
            if given is not None:
                dirs[name] = Path(given)
            elif root is not None:
                dirs[name] = root / name
            else:
                dirs[name] = None
        for name in ("unet", "text_encoder", "vae", "tokenizer"):
            d = dirs[name]
            flag = "--" + name.replace("_", "-")
            if d is None:
                raise InputError(f"missing component '{name}': pass {flag} DIR or a diffusers pipeline folder")
            if not d.is_dir():
                raise InputError(f"{d}: missing {name} folder (give it with {flag} DIR)")
        if dirs["scheduler"] is not None and not dirs["scheduler"].is_dir():
            if overrides["scheduler"] is not None or kind != "component-folders":
                raise InputError(f"{dirs['scheduler']}: missing scheduler folder (expected scheduler_config.json inside)")
            dirs["scheduler"] = None
        ck = cls(kind, root, dirs["unet"], dirs["text_encoder"], dirs["vae"], dirs["tokenizer"], dirs["scheduler"], allow_pickle,
                 family_name=family, lora=tuple(lora or ()))
        ck.validate()
        return ck

    def validate(self) -> None:
        """Check every config, the tokenizer and each weights file's header, without loading
        weights (checkpoint.validate): errors name the file and the field."""
        from md_export.checkpoint.validate import check_configs, check_tokenizer, check_weights_file

        _ = self.unet_config, self.text_encoder_config, self.vae_config  # reading parses each: errors name the file
        for d in (self.unet_dir, self.text_encoder_dir, self.vae_dir):
            self._dtypes[d] = check_weights_file(weights_file(d, self.allow_pickle))
        _ = self.scheduler_config  # read and parsed now, before any heavy work
        check_configs(self)
        check_tokenizer(self)

    # -- configs -------------------------------------------------------------------------------
    def _config(self, key: str, path: Path) -> dict:
        if key not in self._configs:
            self._configs[key] = read_json(path)
        return self._configs[key]

    @property
    def unet_config(self) -> dict:
        return self._config("unet", self.unet_dir / "config.json")

    @property
    def text_encoder_config(self) -> dict:
        return self._config("text_encoder", self.text_encoder_dir / "config.json")

    @property
    def vae_config(self) -> dict:
        return self._config("vae", self.vae_dir / "config.json")

    @property
    def scheduler_config(self) -> dict:
        if self.scheduler_dir is None:
            from md_export.families.tiny import SD_SCHEDULER_CONFIG

            return {"_class_name": "EulerDiscreteScheduler", **SD_SCHEDULER_CONFIG}
        return self._config("scheduler", self.scheduler_dir / "scheduler_config.json")

    def weights_sha256(self) -> dict[str, str]:
        """sha256 of each weights file, computed once per file while its size and mtime stay the
        same (an export writes one manifest per target; at full size one pass reads 4.4 GB)."""
        out = {}
        for name, d in (("unet", self.unet_dir), ("text_encoder", self.text_encoder_dir), ("vae", self.vae_dir)):
            path = weights_file(d, self.allow_pickle)
            st = path.stat()
            known = self._digests.get(path)
            if known is None or known[:2] != (st.st_size, st.st_mtime_ns):
                known = (st.st_size, st.st_mtime_ns, file_sha256(path))
                self._digests[path] = known
            out[name] = known[2]
        return out

    def weights_bytes(self) -> int:
        """Bytes of the UNet, text encoder and VAE weight files (the size an export has to hold)."""
        return sum(weights_file(d, self.allow_pickle).stat().st_size for d in (self.unet_dir, self.text_encoder_dir, self.vae_dir))

    def is_large(self) -> bool:
        """Whether to trade time for memory: export streams converters' constants, a check holds
        one reference component at a time (the tiny test models keep theirs loaded)."""
        return self.weights_bytes() >= LARGE_PIPELINE_BYTES

    def component_dirs(self) -> dict[str, Path]:
        dirs = {"unet": self.unet_dir, "text_encoder": self.text_encoder_dir, "vae": self.vae_dir, "tokenizer": self.tokenizer_dir}
        if self.scheduler_dir is not None:
            dirs["scheduler"] = self.scheduler_dir
        return dirs

    def training_vocabulary(self) -> str | None:
        """The caption vocabulary the pipeline declares it was trained on ("_md_export_vocabulary" in
        model_index.json; the bundled default model says "shapes-v1"), or None. Component folders
        count only when the UNet's and the text encoder's pipeline folders both declare the same one."""
        found = set()
        for d in (self.unet_dir, self.text_encoder_dir):
            index = Path(d).parent / "model_index.json"
            try:
                found.add(read_json(index).get(VOCABULARY_FIELD) if index.is_file() else None)
            except (OSError, ValueError, AttributeError):
                found.add(None)
        return found.pop() if len(found) == 1 else None

    @property
    def family(self) -> str | None:
        from md_export.checkpoint.family import checkpoint_family

        return checkpoint_family(self)

    def describe(self) -> str:
        return str(self.source) if self.source is not None else "component folders"

    # -- loading -------------------------------------------------------------------------------
    def _load(self, what: str, loader, folder: Path):
        """Load one component through its library and check what was loaded (checkpoint.validate):
        missing, unused or mis-shaped tensors and NaN/Inf are refused by name, never random-initialised."""
        from md_export.checkpoint.validate import check_loaded, check_weights_file

        weights = weights_file(folder, self.allow_pickle)
        lean = _load_lean(loader, folder, weights)
        if lean is not None:
            if folder not in self._dtypes:
                self._dtypes[folder] = check_weights_file(weights)
            check_loaded(lean, None, weights, what, self._dtypes[folder])
            return lean.float().eval()
        try:
            kwargs = {"low_cpu_mem_usage": False} if "diffusers" in loader.__module__ else {}
            loaded = loader(folder, local_files_only=True, use_safetensors=not self.allow_pickle or None,
                            output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        except InputError:
            raise
        except Exception as e:  # diffusers/transformers raise many types; name the folder and the cause
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{folder}: cannot load the {what} ({msg})") from e
        model, info = loaded if isinstance(loaded, tuple) else (loaded, None)  # md-export's own UNets check themselves
        if folder not in self._dtypes:
            self._dtypes[folder] = check_weights_file(weights)
        check_loaded(model, info, weights, what, self._dtypes[folder])
        return model.float().eval()

    def _fuse(self, model, component: str):
        from md_export.checkpoint.lora import fuse_loras
        from md_export.checkpoint.validate import check_finite

        if not self.lora:
            return model
        model = fuse_loras(model, component, self.lora)
        check_finite(model, "--lora " + ", ".join(str(f) for f, _ in self.lora), component.replace("_", " "))
        return model

    def load_unet(self):
        from md_export.families.registry import unet_class

        model = self._load("UNet", unet_class(self.unet_config).from_pretrained, self.unet_dir)
        return self._fuse(model, "unet")

    def load_text_encoder(self):
        from transformers import CLIPTextModel

        model = self._load("text encoder", CLIPTextModel.from_pretrained, self.text_encoder_dir)
        return self._fuse(model, "text_encoder")

    def load_vae(self):
        from diffusers import AutoencoderKL

        return self._load("VAE", AutoencoderKL.from_pretrained, self.vae_dir)


def _load_lean(loader, folder: Path, weights: Path):
    """A diffusers model built on the meta device and given the file's tensors (assign, no copy):
    one fp32 copy of the weights in memory instead of a random init plus the loaded state (half the
    peak of the full-size UNet's load, and no time spent on the random init). Only when the file
    matches the config exactly and is safetensors; anything else (renamed keys of old checkpoints,
    missing or extra tensors, buffers outside the file) returns None and goes through the library's
    own loader, which converts what it knows and reports the rest."""
    cls = getattr(loader, "__self__", None)
    if weights.suffix != ".safetensors" or cls is None or not cls.__module__.startswith("diffusers."):
        return None
    import torch
    from safetensors import safe_open

    try:
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(folder, local_files_only=True))
        expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
        state = {}
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if set(keys) != set(expected):
                return None
            for k in keys:
                t = f.get_tensor(k)
                if tuple(t.shape) != expected[k]:
                    return None
                state[k] = t.float() if t.is_floating_point() else t
        model.load_state_dict(state, strict=True, assign=True)
    except Exception:  # noqa: BLE001 - the library's loader gives the error a user can act on
        return None
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        return None
    model.register_to_config(_name_or_path=folder)  # as the library's loader records it
    return model
