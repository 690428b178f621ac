"""Single-file checkpoints in the original LDM key layout (`model.diffusion_model.*`,
`first_stage_model.*`, `cond_stage_model.*`), as A1111/ComfyUI and most model sites share them.

The file is converted once, offline, with diffusers' own single-file converters and configs
bundled with md-export (the family's config.json folders, never fetched), into a diffusers
pipeline folder in md-export's cache (`$MD_EXPORT_CACHE`, default `~/.cache/md-export`), keyed by
the file's sha256, family and size. Export and check then treat that folder like any other.

Text towers: CLIP ViT-L (`cond_stage_model.transformer.*`, SD 1.x) or OpenCLIP in open_clip's
layout (`cond_stage_model.model.*`, fused q/k/v `in_proj_weight`, SD 2.x), of which SD 2.x uses
the penultimate layer: the converted text encoder has one layer fewer than the file's tower.

`.safetensors` files load directly; pickles (`.ckpt`, `.pt`, `.pth`, `.bin`) only with
`--allow-pickle` (unpickling runs code).

`to_ldm_state_dict` goes the other way (diffusers modules -> one LDM-layout state dict), for
tests and for handing md-export checkpoints to tools that want a single file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from md_export.core.errors import InputError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."


def cache_root() -> Path:
    return Path(os.environ.get("MD_EXPORT_CACHE") or Path.home() / ".cache" / "md-export")


def is_single_file(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES


def load_state_dict(path: Path, allow_pickle: bool) -> dict:
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            from md_export.checkpoint.validate import unreadable_weights

            raise unreadable_weights(path, e) from None
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InputError(f"{path}: pickle checkpoints can run code when loaded; convert it to .safetensors or pass --allow-pickle")
        import torch

        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - pickles fail in many ways
            raise InputError(f"{path}: cannot be unpickled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        while isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise InputError(f"{path}: does not hold a state dict")
        return sd
    raise InputError(f"{path}: unknown checkpoint file type '{suffix}' (expected {', '.join(SAFE_SUFFIXES + PICKLE_SUFFIXES)})")


def open_single_file(cls, path: Path, *, family: str | None, allow_pickle: bool, lora=()):
    """A Checkpoint (kind "single-file") over the converted folder of a single-file checkpoint."""
    folder, family_name, _size = convert_to_folder(path, family, allow_pickle)
    ck = cls.open(folder, family=family_name, lora=lora)
    ck.kind, ck.source, ck.original = "single-file", Path(path), Path(path)
    return ck


# -- which family and size ------------------------------------------------------------------------


def _shape(sd: dict, key: str):
    t = sd.get(key)
    return tuple(t.shape) if t is not None else None


def guess_family(sd: dict) -> str:
    """sd15 for CLIP ViT-L text towers, sd21 for OpenCLIP ones; other families must be named."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        raise InputError("not an LDM single-file checkpoint (no 'model.diffusion_model.*' keys); give a diffusers folder instead")
    if any(k.startswith(OPENCLIP_PREFIX) for k in sd):
        return "sd21"
    return "sd15"


def _fitting_size(family, sd: dict) -> str:
    """The family size whose UNet width and cross-attention width match the file."""
    conv_in = _shape(sd, UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise InputError("single-file checkpoint has no UNet input convolution (model.diffusion_model.input_blocks.0.0.weight)")
    for size in ("full", "tiny"):
        cfg = family.unet_config(size)
        if cfg["block_out_channels"][0] == conv_in[0]:
            return size
    raise InputError(
        f"single-file checkpoint: UNet width {conv_in[0]} fits neither size of family '{family.name}' "
        f"({family.unet_config('full')['block_out_channels'][0]} or {family.unet_config('tiny')['block_out_channels'][0]})"
    )


# -- configs bundled per family ---------------------------------------------------------------------


def write_configs(family, size: str, folder: Path) -> None:
    """A diffusers pipeline folder's config files for a family (no weights): what diffusers'
    single-file loaders are pointed at with `config=`, and what `md-export init` fills."""
    from md_export.checkpoint.files import default_model_dir

    cfgs = family.configs(size)
    folder.mkdir(parents=True, exist_ok=True)
    unet_cls = cfgs["unet"].get("_class_name", "UNet2DConditionModel")
    lib = "md_export" if unet_cls != "UNet2DConditionModel" else "diffusers"
    sched = dict(cfgs["scheduler"])
    sched_cls = sched.pop("_class_name")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_md_export_family": family.name,
        "unet": [lib, unet_cls],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", sched_cls],
    }
    _write_json(folder / "model_index.json", index)
    unet_cfg = dict(cfgs["unet"])
    unet_cfg.setdefault("_class_name", "UNet2DConditionModel")
    _write_json(folder / "unet" / "config.json", unet_cfg)
    _write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **cfgs["vae"]})
    text = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **cfgs["text_encoder"]}
    _write_json(folder / "text_encoder" / "config.json", text)
    _write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": sched_cls, **sched})
    tok = folder / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    src = default_model_dir() / "tokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, tok / name)
    pad = family.tokenizer_pad_token()
    if pad != "<|endoftext|>":
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = tok / name
            if p.is_file():
                data = json.loads(p.read_text(encoding="utf-8"))
                data["pad_token"] = pad
                _write_json(p, data)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# -- LDM -> diffusers folder ------------------------------------------------------------------------------


def convert_to_folder(path: Path, family_name: str | None, allow_pickle: bool, dest: Path | None = None) -> tuple[Path, str, str]:
    """Convert a single-file checkpoint into a diffusers folder; returns (folder, family, size).
    Reuses an earlier conversion of the same file (by sha256) from the cache."""
    from md_export.core.io import file_sha256
    from md_export.families.registry import get_family

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(f"{path}: pickle checkpoints can run code when loaded; convert it to .safetensors or pass --allow-pickle")
    digest = file_sha256(path)
    state = None
    if family_name is None:
        state = load_state_dict(path, allow_pickle)
        family_name = guess_family(state)
    family = get_family(family_name)
    if family.unet_config("full").get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise InputError(f"family '{family_name}' has no LDM single-file layout; give a diffusers folder")
    lpb = family.unet_config("full").get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise InputError(f"family '{family_name}': per-block layer counts differ, which diffusers' LDM converter cannot map; give a diffusers folder")
    if dest is None:
        dest = cache_root() / "single-file" / f"{digest[:20]}-{family_name}"
    if (dest / ".complete").is_file():
        size = (dest / ".complete").read_text(encoding="utf-8").strip() or "full"
        return dest, family_name, size
    if state is None:
        state = load_state_dict(path, allow_pickle)
    size = _fitting_size(family, state)
    _check_text_tower(state, family, size, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        write_configs(family, size, tmp)
        _convert_components(state, tmp, path, family_name)
        (tmp / ".complete").write_text(size + "\n", encoding="utf-8")
        _write_json(tmp / "source.json", {"file": str(path.resolve()), "sha256": digest, "family": family_name, "size": size})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, family_name, size


def _openclip_layers(state: dict) -> int:
    """How many resblocks the file's open_clip text tower holds (0: not open_clip)."""
    head = OPENCLIP_PREFIX + "transformer.resblocks."
    idx = {int(k[len(head):].split(".", 1)[0]) for k in state if k.startswith(head)}
    return max(idx) + 1 if idx else 0


def _check_text_tower(state: dict, family, size: str, source: Path) -> None:
    """An open_clip text tower only for OpenCLIP families, with as many layers as SD 2.x uses.

    Files hold the whole tower, but SD 2.x conditions on the penultimate layer (hidden states
    -2, then ln_final), so the diffusers text encoder has one layer fewer than the file (23 of
    24 at full size); like diffusers, the conversion keeps the first layers and drops the last.
    A file already cut to that depth loads as is. Any other depth is not this family's tower,
    and dropping or lacking layers would give wrong outputs without an error."""
    from md_export.families.registry import all_families

    n_file = _openclip_layers(state)
    if not n_file:
        return
    if not family.text_encoder.startswith("OpenCLIP"):
        users = ", ".join(n for n, f in all_families().items() if f.text_encoder.startswith("OpenCLIP"))
        raise InputError(f"{source}: the text encoder is OpenCLIP (cond_stage_model.model.*), but family '{family.name}' "
                         f"uses {family.text_encoder}; pass --family with one of: {users}")
    n_cfg = family.text_config(size)["num_hidden_layers"]
    if n_file not in (n_cfg, n_cfg + 1):
        raise InputError(f"{source}: the OpenCLIP text tower has {n_file} layers; family '{family.name}' ({size}) uses "
                         f"{n_cfg} (the penultimate of {n_cfg + 1}), so this is another text encoder; give a diffusers folder")


def _first_useful_line(e: Exception) -> str:
    """torch's load errors start with a bare 'Error(s) in loading state_dict for X:' line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.endswith(":")]
    return (useful or lines or [type(e).__name__])[0]


def _convert_components(state: dict, folder: Path, source: Path, family_name: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    def fail(what, e):
        return InputError(f"{source}: cannot convert the {what} from the LDM layout as family '{family_name}' "
                          f"({_first_useful_line(e)}); is --family right?")

    try:
        unet = UNet2DConditionModel.from_single_file(state, config=str(folder), subfolder="unet", local_files_only=True,
                                                     low_cpu_mem_usage=False)
    except Exception as e:  # noqa: BLE001
        raise fail("UNet", e) from e
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    del unet
    if not any(k.startswith(VAE_PREFIX) for k in state):
        raise InputError(f"{source}: no VAE weights (first_stage_model.*); this file holds only part of a pipeline")
    try:
        vae = AutoencoderKL.from_single_file(state, config=str(folder), subfolder="vae", local_files_only=True,
                                             low_cpu_mem_usage=False)
    except Exception as e:  # noqa: BLE001
        raise fail("VAE", e) from e
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    del vae
    cfg = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    with torch.device("cpu"):
        text = CLIPTextModel(CLIPTextConfig(**cfg))
    if any(k.startswith(OPENCLIP_PREFIX) for k in state):
        sd = convert_open_clip_checkpoint(text, state)
    else:
        sd = convert_ldm_clip_checkpoint(state)
    if not sd:
        raise InputError(f"{source}: no text encoder weights (cond_stage_model.*)")
    own = text.state_dict()
    if not any(k.startswith("text_model.") for k in own):  # transformers 5: no text_model wrapper
        sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in sd and not k.endswith("position_ids")]
    if missing:
        raise InputError(f"{source}: text encoder weights incomplete (missing {missing[0]} and {len(missing) - 1} more)")
    try:
        text.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches: another text tower than the family's
        raise fail("text encoder", e) from e
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)


# -- diffusers modules -> LDM state dict ---------------------------------------------------------------------


_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _unet_to_ldm(unet) -> dict:
    cfg = unet.config
    lpb = cfg.layers_per_block
    if not isinstance(lpb, int):
        raise InputError("UNet with per-block layer counts: no LDM single-file layout")
    out = {}
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    sd = unet.state_dict()

    def put_res(src: str, dst: str):
        for k, v in sd.items():
            if k.startswith(src + "."):
                rest = k[len(src) + 1:]
                for a, b in _RESNET_TO_LDM:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                out[dst + "." + rest] = v

    def put_same(src: str, dst: str):
        for k, v in sd.items():
            if k.startswith(src + "."):
                out[dst + k[len(src):]] = v

    for a, b in top.items():
        put_same(a, b)
    k = 1
    for i, blk in enumerate(unet.down_blocks):
        for j in range(len(blk.resnets)):
            put_res(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0")
            if getattr(blk, "attentions", None) is not None and len(blk.attentions) > j:
                put_same(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1")
            k += 1
        if blk.downsamplers is not None:
            put_same(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{k}.0.op")
            k += 1
    if unet.mid_block is not None:
        put_res("mid_block.resnets.0", "middle_block.0")
        put_same("mid_block.attentions.0", "middle_block.1")
        put_res("mid_block.resnets.1", "middle_block.2")
    k = 0
    for i, blk in enumerate(unet.up_blocks):
        n = len(blk.resnets)
        has_attn = getattr(blk, "attentions", None) is not None
        for j in range(n):
            put_res(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0")
            if has_attn:
                put_same(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1")
            if j == n - 1 and blk.upsamplers is not None:
                put_same(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{k}.{2 if has_attn else 1}.conv")
            k += 1
    return {UNET_PREFIX + k: v for k, v in out.items()}


def _vae_to_ldm(vae) -> dict:
    sd = vae.state_dict()
    out = {}
    n_up = len(vae.decoder.up_blocks)
    attn = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
    for k, v in sd.items():
        key = k
        if ".mid_block.attentions.0." in key:
            head, rest = key.split(".mid_block.attentions.0.")
            for a, b in attn:
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            key = f"{head}.mid.attn_1.{rest}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        elif ".mid_block.resnets." in key:
            head, rest = key.split(".mid_block.resnets.")
            idx, rest = rest.split(".", 1)
            key = f"{head}.mid.block_{int(idx) + 1}.{rest}"
        elif key.startswith("encoder.down_blocks."):
            rest = key[len("encoder.down_blocks."):]
            i, rest = rest.split(".", 1)
            rest = rest.replace("resnets.", "block.", 1).replace("downsamplers.0.", "downsample.", 1)
            key = f"encoder.down.{i}.{rest}"
        elif key.startswith("decoder.up_blocks."):
            rest = key[len("decoder.up_blocks."):]
            i, rest = rest.split(".", 1)
            rest = rest.replace("resnets.", "block.", 1).replace("upsamplers.0.", "upsample.", 1)
            key = f"decoder.up.{n_up - 1 - int(i)}.{rest}"
        key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[VAE_PREFIX + key] = v
    return out


def to_ldm_state_dict(unet, vae, text_encoder) -> dict:
    """One LDM-layout state dict (SD 1.x CLIP text tower) from diffusers/transformers modules."""
    sd = {}
    sd.update(_unet_to_ldm(unet))
    sd.update(_vae_to_ldm(vae))
    sd.update({CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in text_encoder.state_dict().items()})
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}
