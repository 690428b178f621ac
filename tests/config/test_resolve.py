"""Options from the command line over a recipe over the family's defaults (config.resolve)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from md_export.checkpoint.folder import Checkpoint
from md_export.cli.app import main
from md_export.config.options import ExportOptions, rewrites_per_target
from md_export.config.recipe import parse_recipe
from md_export.config.resolve import apply_recipe
from md_export.export import component_precision
from md_export.lower.base import get_lowerer
from md_export.rewrites.registry import DEFAULTS, apply_rewrites


def _recipe(tables: dict, family: str = "sd15"):
    return parse_recipe({"schema_version": 1, "family": family, **tables}, Path("r.toml"))


def test_recipe_with_rewrite_keeps_the_target_defaults_implicit():
    """`--recipe X --rewrite Y`: the target's defaults stay defaults after the recipe merges, so one
    that matches nothing in this model is recorded as skipped, not raised as an error."""
    recipe = _recipe({"tflite": {"compression": "int8"}})  # no rewrites key: the target's defaults
    requested = rewrites_per_target(("tflite",), ["gelu-tanh"], False, recipe)
    options = apply_recipe(recipe, ExportOptions(targets=("tflite",), rewrites=requested), {"rewrite"}, targets_fixed=True)
    selection = options.rewrites["tflite"]
    assert set(DEFAULTS["tflite"]) <= selection.implicit
    assert "gelu-tanh" in selection.names and "gelu-tanh" not in selection.implicit
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())  # no attention or GroupNorm for gpu-composites
    records = {r["name"]: r["changed"] for r in apply_rewrites({"unet": model}, selection, "tflite")}
    assert records["gpu-composites"] == {}
    assert records["gelu-tanh"] == {"unet": 1}


def test_recipe_rewrite_list_is_a_request():
    recipe = _recipe({"coreml": {"rewrites": ["linear-to-conv"]}})
    options = apply_recipe(recipe, ExportOptions(targets=("coreml",)), set(), targets_fixed=True)
    assert options.rewrites["coreml"].names == ("linear-to-conv",)
    assert options.rewrites["coreml"].implicit == frozenset()


def test_recipe_component_precision_reaches_the_export():
    recipe = _recipe({"coreml": {"precision": "fp16", "components": {"vae_decoder": {"precision": "fp32"}}}})
    options = apply_recipe(recipe, ExportOptions(targets=("coreml",)), set(), targets_fixed=True)
    lowerer = get_lowerer("coreml")
    assert component_precision(options, "coreml", "vae_decoder", lowerer) == "fp32"
    assert component_precision(options, "coreml", "unet", lowerer) == "fp16"
    # --precision on the command line applies to every component and wins over the recipe
    given = apply_recipe(recipe, ExportOptions(targets=("coreml",), precision={"coreml": "fp16"}), {"precision"}, targets_fixed=True)
    assert component_precision(given, "coreml", "vae_decoder", lowerer) == "fp16"


def test_recipe_component_precision_in_the_bundle(family_checkpoint, tmp_path, capsys):
    ckpt = family_checkpoint("sd15")
    assert Checkpoint.open(ckpt).family == "sd15"
    recipe = tmp_path / "r.toml"
    recipe.write_text('schema_version = 1\nfamily = "sd15"\ntargets = ["onnx"]\n\n[onnx]\nprecision = "fp16"\n\n'
                      '[onnx.components.vae_decoder]\nprecision = "fp32"\n')
    code = main(["onnx", str(ckpt), "-o", str(tmp_path / "out"), "--recipe", str(recipe), "--no-check", "-q"])
    capsys.readouterr()
    assert code == 0
    models = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())["models"]
    assert models["vae_decoder"]["precision"] == "fp32" and models["vae_decoder"]["compression"] == "none"
    assert models["unet"]["precision"] == "fp16" and models["text_encoder"]["precision"] == "fp16"
