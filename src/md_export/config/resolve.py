"""Options from three places, in this order of precedence: the command line, then a recipe the
user names, then the checkpoint family's defaults. Also the checks made on the merged options
before any heavy work (every rewrite and level named is registered)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from md_export.compress.levels import LEVELS
from md_export.config.options import ExportOptions
from md_export.config.recipe import Recipe
from md_export.core.errors import InputError, UnknownNameError
from md_export.families.base import _topology
from md_export.families.registry import get_family
from md_export.rewrites.registry import REGISTRY, as_selection


def apply_recipe(recipe: Recipe, options: ExportOptions, given: set[str] = frozenset(), targets_fixed: bool = False) -> ExportOptions:
    """ExportOptions with the recipe's values wherever the command line gave none (`given` holds the
    names of options set on the command line; they always win)."""
    targets = options.targets if (targets_fixed or "targets" in given) else recipe.targets
    changes: dict[str, Any] = {"targets": tuple(targets), "recipe": str(recipe.path)}
    for name in ("height", "width", "unet_batch", "steps", "scheduler"):
        if name not in given and getattr(recipe, name) is not None:
            changes[name] = getattr(recipe, name)
    if "with_encoder" not in given and recipe.with_encoder is not None:
        changes["with_encoder"] = recipe.with_encoder
    precision = dict(options.precision)
    rewrites = dict(options.rewrites)  # RewriteSelections: values, so which names were defaults survives
    quantize = dict(options.quantize)
    thresholds = {k: dict(v) for k, v in options.thresholds.items()}
    for t in targets:
        tr = recipe.target.get(t)
        if tr is None:
            continue
        if "precision" not in given:  # --precision applies to every component of a target and wins
            if tr.precision:
                precision[t] = tr.precision
            for comp, c in tr.components.items():
                if c.precision:
                    precision[f"{t}:{comp}"] = c.precision
        if tr.rewrites is not None:
            if not ({"rewrite", "no_default_rewrites"} & given):
                rewrites[t] = as_selection(tr.rewrites)
            elif "rewrite" in given and "no_default_rewrites" not in given:
                rewrites[t] = as_selection(rewrites.get(t)).after(tr.rewrites)
        for k, v in tr.quantize().items():
            quantize.setdefault(k, v)
        if tr.parity:
            thresholds[t] = {**tr.parity, **thresholds.get(t, {})}
        if t == "coreml":
            if "minimum_deployment_target" not in given and tr.minimum_deployment_target:
                changes["minimum_deployment_target"] = tr.minimum_deployment_target
            if "compute_units" not in given and tr.compute_units:
                changes["compute_units"] = tr.compute_units
            if tr.chunk_over_mb is not None:  # split only when the UNet is larger (--chunk-unet always splits)
                changes["chunk_over_mb"] = tr.chunk_over_mb
    changes.update(precision=precision, rewrites=rewrites, quantize=quantize, thresholds=thresholds)
    return replace(options, **changes)


def check_family(recipe: Recipe, ckpt) -> None:
    """A recipe for one family must not be applied to a checkpoint of another topology."""
    fam = get_family(recipe.family)
    if ckpt.family_name and ckpt.family_name != recipe.family:
        raise InputError(f"{recipe.path}: recipe is for family '{recipe.family}', but --family is '{ckpt.family_name}'")
    if not fam.match(ckpt.unet_config, ckpt.text_encoder_config, ckpt.scheduler_config) and not _same_topology_as_any(fam, ckpt):
        found = ckpt.family
        raise InputError(
            f"{recipe.path}: recipe is for family '{recipe.family}', but {ckpt.describe()} is "
            f"{repr(found) if found else 'of no registered family'}; use that family's recipe"
        )


def _same_topology_as_any(fam, ckpt) -> bool:
    t = _topology(ckpt.unet_config)
    return t in (_topology(fam.unet_config("full")), _topology(fam.unet_config("tiny")))


def with_family_defaults(ckpt, options):
    """Fill what neither the command line nor a recipe set from the checkpoint's family: UNet batch
    (guidance), default steps and scheduler."""
    name = ckpt.family
    if not name:
        return options
    fam = get_family(name)
    changes = {}
    if options.unet_batch is None and not ckpt.unet_config.get("time_cond_proj_dim"):
        changes["unet_batch"] = fam.unet_batch()
    if options.steps is None:
        changes["steps"] = fam.default_steps
    if options.scheduler is None:
        changes["scheduler"] = fam.scheduler
    return replace(options, **changes) if changes else options


def validate_names(options) -> None:
    """Every rewrite and compression level an export asks for is registered (checked before any
    heavy work). The error names where the name came from."""
    where = f"recipe {options.recipe}: " if getattr(options, "recipe", None) else ""
    for t in options.targets:
        for n in as_selection(options.rewrites.get(t)).names:
            if n.split("=")[0] not in REGISTRY and n not in REGISTRY:
                e = UnknownNameError("rewrite", n, REGISTRY)
                raise InputError(f"{where}{t}: {e}") from None
    for key, level in options.quantize.items():
        t = key.split(":")[0]
        if t not in options.targets or level in ("", "none", None):
            continue
        known = LEVELS.get(t, {})
        if level not in known:
            e = UnknownNameError(f"{t} compression level", level, known)
            raise InputError(f"{where}{key}: {e}") from None
