"""Checks on a checkpoint before any heavy work, each failure one line naming the file and the
field or tensor (exit 2):

- configs: the fields md-export and the model constructors read have their types (`sample_size`
  an integer, `block_out_channels` a list of positive integers, ...) and agree with each other;
- tokenizer: vocab.json and merges.txt parse and round-trip a few prompts, and every token id
  has a row in the text encoder's embedding;
- weights, as they are loaded (never a second time): every tensor the model expects is in the
  file with its shape, the file holds nothing the model does not use, floating-point tensors are
  floating point and finite.

diffusers and transformers load a file with missing tensors by initialising them at random (a
warning in a log), and one with a wrong shape by raising a multi-line RuntimeError; here both
report through their structured `output_loading_info` instead, so nothing depends on log text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from md_export.core.errors import ConversionError, InputError, MdExportError
from md_export.core.names import TEXT_LENGTH

SHOW = 3  # tensor names listed in a message

# -- configs ---------------------------------------------------------------------------------------

Check = tuple[str, Callable[[object], bool]]  # (what it must be, test)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POS_INT: Check = ("a positive integer", lambda v: _int(v) and v > 0)
NONNEG_INT: Check = ("a non-negative integer", lambda v: _int(v) and v >= 0)
INT: Check = ("an integer", _int)
NUMBER: Check = ("a finite number", _num)
POS_NUMBER: Check = ("a positive finite number", lambda v: _num(v) and v > 0)
BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
STR: Check = ("a string", lambda v: isinstance(v, str))
POS_INT_LIST: Check = ("a non-empty list of positive integers", lambda v: isinstance(v, list) and bool(v) and all(POS_INT[1](x) for x in v))
STR_LIST: Check = ("a non-empty list of strings", lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v))


def _or_null(c: Check) -> Check:
    return (f"{c[0]} or null", lambda v: v is None or c[1](v))


def _or_list(c: Check) -> Check:
    return (f"{c[0]}, or a list of them", lambda v: c[1](v) or (isinstance(v, list) and bool(v) and all(c[1](x) for x in v)))


SIZE: Check = ("a positive integer or a [height, width] pair",
               lambda v: POS_INT[1](v) or (isinstance(v, list) and len(v) == 2 and all(POS_INT[1](x) for x in v)))

UNET_REQUIRED = ("in_channels", "sample_size", "cross_attention_dim", "block_out_channels", "down_block_types")
UNET_FIELDS: dict[str, Check] = {
    "in_channels": POS_INT,
    "out_channels": POS_INT,
    "sample_size": SIZE,
    "cross_attention_dim": _or_list(POS_INT),
    "block_out_channels": POS_INT_LIST,
    "down_block_types": STR_LIST,
    "up_block_types": STR_LIST,
    "layers_per_block": _or_list(POS_INT),
    "attention_head_dim": _or_null(_or_list(POS_INT)),
    "num_attention_heads": _or_null(_or_list(POS_INT)),
    "transformer_layers_per_block": ("an integer or a list", lambda v: NONNEG_INT[1](v) or isinstance(v, list)),
    "norm_num_groups": _or_null(POS_INT),
    "norm_eps": POS_NUMBER,
    "time_cond_proj_dim": _or_null(POS_INT),
    "conv_in_kernel": POS_INT,
    "conv_out_kernel": POS_INT,
    "downsample_padding": NONNEG_INT,
    "freq_shift": INT,
    "mid_block_scale_factor": NUMBER,
    "dropout": ("a number from 0 to 1", lambda v: _num(v) and 0 <= v <= 1),
    "act_fn": STR,
    "mid_block_type": _or_null(STR),
    "flip_sin_to_cos": BOOL,
    "center_input_sample": BOOL,
    "upcast_attention": BOOL,
    "use_linear_projection": BOOL,
    "dual_cross_attention": BOOL,
    "only_cross_attention": _or_list(BOOL),
}

VAE_REQUIRED = ("latent_channels", "block_out_channels")
VAE_FIELDS: dict[str, Check] = {
    "in_channels": POS_INT,
    "out_channels": POS_INT,
    "latent_channels": POS_INT,
    "block_out_channels": POS_INT_LIST,
    "down_block_types": STR_LIST,
    "up_block_types": STR_LIST,
    "layers_per_block": POS_INT,
    "norm_num_groups": POS_INT,
    "sample_size": SIZE,
    "scaling_factor": POS_NUMBER,
    "shift_factor": _or_null(NUMBER),
    "act_fn": STR,
    "force_upcast": BOOL,
    "use_quant_conv": BOOL,
    "use_post_quant_conv": BOOL,
    "mid_block_add_attention": BOOL,
}

TEXT_REQUIRED = ("hidden_size", "vocab_size")
TEXT_FIELDS: dict[str, Check] = {
    "hidden_size": POS_INT,
    "vocab_size": POS_INT,
    "intermediate_size": POS_INT,
    "num_attention_heads": POS_INT,
    "num_hidden_layers": POS_INT,
    "max_position_embeddings": POS_INT,
    "layer_norm_eps": POS_NUMBER,
    "hidden_act": STR,
    "projection_dim": POS_INT,
    "bos_token_id": _or_null(NONNEG_INT),
    "eos_token_id": _or_null(NONNEG_INT),
    "pad_token_id": _or_null(NONNEG_INT),
}

SCHEDULER_FIELDS: dict[str, Check] = {
    "_class_name": STR,
    "num_train_timesteps": POS_INT,
    "beta_start": POS_NUMBER,
    "beta_end": POS_NUMBER,
    "beta_schedule": STR,
    "trained_betas": _or_null(("a list of numbers", lambda v: isinstance(v, list) and bool(v) and all(_num(x) for x in v))),
    "prediction_type": ("one of epsilon, v_prediction, sample", lambda v: v in ("epsilon", "v_prediction", "sample")),
    "timestep_spacing": STR,
    "steps_offset": NONNEG_INT,
    "clip_sample": BOOL,
    "clip_sample_range": POS_NUMBER,
    "set_alpha_to_one": BOOL,
    "rescale_betas_zero_snr": BOOL,
    "use_karras_sigmas": BOOL,
    "sigma_min": _or_null(POS_NUMBER),
    "sigma_max": _or_null(POS_NUMBER),
    "original_inference_steps": POS_INT,
}


def _fields(config: dict, path: Path, table: dict[str, Check], required=(), kind: str = "") -> None:
    for key in required:
        if key not in config:
            raise InputError(f"{path}: not {kind} config (no '{key}')")
    for key, (what, ok) in table.items():
        if key in config and not ok(config[key]):
            raise InputError(f"{path}: field '{key}' must be {what}, found {_show(config[key])}")


def _show(v) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _same_length(config: dict, path: Path, keys: tuple[str, ...]) -> None:
    present = [k for k in keys if isinstance(config.get(k), list)]
    lengths = {k: len(config[k]) for k in present}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise InputError(f"{path}: one entry per block is expected ({desc})")


def _groups_divide(config: dict, path: Path) -> None:
    groups = config.get("norm_num_groups")
    if not groups:
        return
    bad = [c for c in config["block_out_channels"] if c % groups]
    if bad:
        raise InputError(f"{path}: field 'norm_num_groups' {groups} does not divide block_out_channels {config['block_out_channels']} "
                         "(group norm needs channels divisible by groups)")


def check_unet_config(config: dict, path: Path) -> None:
    _fields(config, path, UNET_FIELDS, UNET_REQUIRED, "a UNet2DConditionModel")
    if config.get("_class_name") != "MobileDiffusionUNet":  # its own config class checks its own fields
        _same_length(config, path, ("block_out_channels", "down_block_types", "up_block_types"))
        _groups_divide(config, path)


def check_vae_config(config: dict, path: Path) -> None:
    _fields(config, path, VAE_FIELDS, VAE_REQUIRED, "an AutoencoderKL")
    _same_length(config, path, ("block_out_channels", "down_block_types", "up_block_types"))
    _groups_divide(config, path)


def check_text_encoder_config(config: dict, path: Path) -> None:
    _fields(config, path, TEXT_FIELDS, TEXT_REQUIRED, "a CLIP text encoder")
    heads = config.get("num_attention_heads")
    if heads and config["hidden_size"] % heads:
        raise InputError(f"{path}: field 'hidden_size' {config['hidden_size']} is not divisible by num_attention_heads {heads}")
    positions = config.get("max_position_embeddings")
    if positions is not None and positions < TEXT_LENGTH:
        raise InputError(f"{path}: field 'max_position_embeddings' is {positions}; the pipelines feed {TEXT_LENGTH} tokens")


def check_scheduler_config(config: dict, path: Path) -> None:
    _fields(config, path, SCHEDULER_FIELDS)
    betas = config.get("trained_betas")
    n = config.get("num_train_timesteps")
    if betas is not None and n is not None and len(betas) != n:
        raise InputError(f"{path}: field 'trained_betas' has {len(betas)} values for num_train_timesteps {n}")


def check_configs(ckpt) -> None:
    """Every config of a Checkpoint, and how they fit together (a UNet conditioned on what the
    text encoder produces, a latent the VAE decodes)."""
    check_unet_config(ckpt.unet_config, ckpt.unet_dir / "config.json")
    check_text_encoder_config(ckpt.text_encoder_config, ckpt.text_encoder_dir / "config.json")
    check_vae_config(ckpt.vae_config, ckpt.vae_dir / "config.json")
    if ckpt.scheduler_dir is not None:
        check_scheduler_config(ckpt.scheduler_config, ckpt.scheduler_dir / "scheduler_config.json")


def check_tokenizer(ckpt):
    """The tokenizer parses, round-trips a few prompts, and has no id past the text encoder's
    embedding table (an id there crashes the encoder at run time)."""
    from md_export.pipeline.tokenizer import validate_tokenizer_files

    tok = validate_tokenizer_files(ckpt.tokenizer_dir)
    rows = ckpt.text_encoder_config.get("vocab_size")
    if _int(rows):
        token, top = max(tok.vocab.items(), key=lambda kv: kv[1])
        if top >= rows:
            raise InputError(f"{ckpt.tokenizer_dir / 'vocab.json'}: token {token!r} has id {top}, but the text encoder has "
                             f"{rows} embeddings ({ckpt.text_encoder_dir / 'config.json'} vocab_size)")
    return tok


# -- weights ---------------------------------------------------------------------------------------


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _names(items, n: int = SHOW) -> str:
    items = sorted(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _file_dtypes(weights: Path) -> dict[str, str]:
    """name -> safetensors dtype of every tensor in a .safetensors file or the shards of an index
    (headers only); {} for other formats."""
    from safetensors import safe_open

    if weights.name.endswith(".safetensors.index.json"):
        from md_export.core.io import read_json

        files = sorted(set((read_json(weights).get("weight_map") or {}).values()))
        paths = [weights.parent / f for f in files if isinstance(f, str)]
    elif weights.suffix == ".safetensors":
        paths = [weights]
    else:
        return {}
    out = {}
    for p in paths:
        try:
            with safe_open(str(p), "pt") as f:
                for k in f.keys():
                    out[k] = f.get_slice(k).get_dtype()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise unreadable_weights(p, e) from None
    return out


def check_weights_file(weights: Path) -> dict[str, str]:
    """Read a weights file's header (not its data): a truncated or foreign file is refused by name
    here, before anything is loaded. Returns name -> dtype."""
    return _file_dtypes(weights)


def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf. One aminmax pass per tensor (NaN
    propagates to both, an Inf shows in one): no boolean copy, about 8x faster than isfinite().all()
    here, 2-3 s for a full SD 1.5 UNet on two busy cores."""
    import torch

    bad = []
    for k, t in state.items():
        if t.is_floating_point() and t.numel():
            lo, hi = torch.aminmax(t.detach())
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                bad.append(k)
    return bad


def check_loaded(model, info: dict | None, weights: Path, what: str, dtypes: dict[str, str] | None = None) -> None:
    """After loading `weights` into `model`: refuse missing, unused and mis-shaped tensors (from the
    loader's own report), integer data where the model has floating-point parameters, and NaN/Inf."""
    if info:
        mismatched = list(info.get("mismatched_keys") or ())
        if mismatched:
            name, found, expected = sorted(mismatched, key=lambda m: m[0])[0]
            more = f" ({len(mismatched)} tensors differ)" if len(mismatched) > 1 else ""
            raise InputError(f"{weights}: {what} tensor {name} has shape {tuple(found)} in the file, {tuple(expected)} in the model "
                             f"its config.json builds{more}; the weights and the config are from different models")
        missing = list(info.get("missing_keys") or ())
        if missing:
            raise InputError(f"{weights}: the {what} config needs {_count(len(missing), 'tensor')} the file lacks ({_names(missing)}); "
                             "the file is incomplete or from another model")
        unexpected = list(info.get("unexpected_keys") or ())
        if unexpected:
            raise InputError(f"{weights}: the file holds {_count(len(unexpected), 'tensor')} the {what} its config.json builds does not have "
                             f"({_names(unexpected)}); the weights and the config are from different models")
        errors = [e for e in info.get("error_msgs") or () if e]
        if errors:
            raise InputError(f"{weights}: cannot load the {what} ({str(errors[0]).strip().splitlines()[0]})")
    state = model.state_dict()
    if dtypes:
        floats = {k for k, t in state.items() if t.is_floating_point()}
        ints = sorted(k for k, d in dtypes.items() if not d.startswith(("F", "BF")) and (k in floats or any(f.endswith("." + k) for f in floats)))
        if ints:
            raise InputError(f"{weights}: {what} tensor {ints[0]} is stored as {dtypes[ints[0]]} where the model has floating-point weights "
                             f"({_count(len(ints), 'such tensor')}); the file is corrupt or quantised in a format md-export does not read")
    bad = non_finite(state)
    if bad:
        more = f" (so do {_count(len(bad) - 1, 'other tensor')})" if len(bad) > 1 else ""
        raise InputError(f"{weights}: {what} tensor {bad[0]} holds NaN or Inf{more}; the checkpoint is corrupt or overflowed when it was saved")


def check_finite(model, where: str, what: str) -> None:
    """NaN/Inf in a model's floating-point tensors (after fusing a LoRA, say), named."""
    bad = non_finite(model.state_dict())
    if bad:
        more = f" (so do {_count(len(bad) - 1, 'other tensor')})" if len(bad) > 1 else ""
        raise InputError(f"{where}: {what} tensor {bad[0]} holds NaN or Inf once the LoRA is fused{more}; check the LoRA file and --lora-scale")


def unreadable_weights(path, error: BaseException) -> MdExportError:
    """The error for a safetensors file that could not be opened. A refused memory map is memory
    (the machine's, or a limit such as ulimit -v or RLIMIT_DATA), not a bad file: exit 3, not 2."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, MemoryError) or "mmap" in text.lower() or "cannot allocate memory" in text.lower():
        return ConversionError(f"{path}: could not map the weights into memory ({text}); free memory or raise the "
                               "process's memory limit")
    return InputError(f"{path}: not a readable safetensors file ({text})")
