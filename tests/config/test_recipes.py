"""Recipes: every shipped recipe loads; bad files fail with one line naming the file and key; the
command line overrides recipe values; names are checked against the registries at export time;
the recipe's parity floors reach the manifest and `md-export check`."""

from __future__ import annotations

from pathlib import Path

import dataclasses

import pytest

from md_export.core.errors import InputError
from md_export.config.options import ExportOptions
from md_export.families.registry import all_families, get_family
from md_export.config.recipe import Recipe, load_recipe, shipped_recipes
from md_export.config.resolve import apply_recipe, validate_names
from md_export.config.options import lora_pairs

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "src" / "md_export" / "recipes").glob("*.toml"))
GOOD = """\
schema_version = 1
family = "sd15"
height = 512
width = 512
targets = ["coreml", "onnx"]

[coreml]
precision = "fp16"
rewrites = ["attention=split-einsum"]
compression = "palettize-6"

[coreml.components.vae_decoder]
compression = "none"

[coreml.parity]
unet = 33.0
"""


def write(tmp_path, text, name="r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.schema_version == 1 and r.family in all_families()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.family = "x"  # frozen


def test_one_recipe_per_family_plus_mobile_ones():
    names = {p.stem for p in RECIPES}
    for fam in all_families():
        assert fam in names and load_recipe(REPO / "recipes" / f"{fam}.toml").family == fam
    ios, android = load_recipe(REPO / "recipes" / "mobilediffusion-ios.toml"), load_recipe(REPO / "recipes" / "mobilediffusion-android.toml")
    assert ios.targets == ("coreml",) and ios.target["coreml"].compression == "palettize-6" and ios.target["coreml"].chunk_over_mb == 1000
    assert android.targets == ("tflite",) and "gpu-composites" in android.target["tflite"].rewrites
    assert android.target["tflite"].compression == "int8"


def test_bare_name_means_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    assert set(shipped_recipes()) == {p.stem for p in RECIPES}
    r = load_recipe("mobilediffusion-ios")
    assert r.family == "mobilediffusion" and r.path.is_file() and r.path.parent.name == "recipes"
    with pytest.raises(InputError) as e:
        load_recipe("mobilediffusion-ipad")
    msg = str(e.value)
    assert "\n" not in msg and "mobilediffusion-ipad" in msg and all(p.stem in msg for p in RECIPES), msg


def test_checkout_path_still_works():
    """The issue's command line names recipes/<name>.toml from a checkout (a link into the package)."""
    assert load_recipe(REPO / "recipes" / "mobilediffusion-ios.toml").target["coreml"].compression == "palettize-6"


def test_wheel_ships_the_recipes(tmp_path):
    """A wheel built from this tree holds every recipe, and a bare name resolves from the installed
    package (a working directory without recipes/, the checkout not on the path)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "tree"  # build from a copy: setuptools writes build/ and egg-info into the tree
    shutil.copytree(REPO / "src" / "md_export", src / "src" / "md_export", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "whl").glob("md_export-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
        shipped = {Path(n).stem for n in z.namelist() if n.startswith("md_export/recipes/") and n.endswith(".toml")}
    assert shipped == {p.stem for p in RECIPES}
    code = ("import md_export, sys; from md_export.config.recipe import load_recipe; r = load_recipe('mobilediffusion-ios'); "
            "print(md_export.__file__); print(r.path); print(r.target['coreml'].compression)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    module, path, level = run.stdout.split()
    site = str(tmp_path / "site")
    assert module.startswith(site) and path.startswith(site) and level == "palettize-6"


@pytest.mark.parametrize("text,key,words", [
    (GOOD.replace('compression = "palettize-6"', 'compresion = "palettize-6"'), "coreml.compresion", "unknown key"),
    (GOOD.replace("height = 512", 'height = "512"'), "height", "integer"),
    (GOOD.replace("height = 512", "height = 500"), "height", "multiple of 64"),
    (GOOD.replace("schema_version = 1", "schema_version = 2"), "schema_version", "not supported"),
    (GOOD.replace("schema_version = 1\n", ""), "schema_version", "missing"),
    (GOOD.replace('family = "sd15"', 'family = "sd9"'), "family", "known: bk-sdm-base"),
    (GOOD.replace('["coreml", "onnx"]', '["coreml", "webgpu"]'), "targets", "'webgpu' is not one of"),
    (GOOD.replace('precision = "fp16"', 'precision = "int4"'), "coreml.precision", "not one of fp32, fp16"),
    (GOOD.replace("unet = 33.0", "unet = 'high'"), "coreml.parity.unet", "number"),
    (GOOD.replace("unet = 33.0", "unetx = 33.0"), "coreml.parity.unetx", "unknown parity floor"),
    (GOOD.replace("[coreml.components.vae_decoder]", "[coreml.components.vae]"), "coreml.components.vae", "unknown component"),
    (GOOD.replace('rewrites = ["attention=split-einsum"]', 'rewrites = "attention"'), "coreml.rewrites", "list of strings"),
    (GOOD + "\n[tflite]\nchunk_over_mb = 10\n", "tflite.chunk_over_mb", "unknown key"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, key, words):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and f"key '{key}'" in msg and words in msg, msg


def test_unreadable_recipes(tmp_path):
    with pytest.raises(InputError, match="no such file or shipped recipe; shipped: bk-sdm-base"):
        load_recipe(tmp_path / "none.toml")
    with pytest.raises(InputError, match="not valid TOML"):
        load_recipe(write(tmp_path, "family = \n"))


def test_rewrite_and_compression_names_are_not_checked_on_load(tmp_path):
    r = load_recipe(write(tmp_path, GOOD.replace("palettize-6", "no-such-level").replace("split-einsum", "nope")))
    assert r.target["coreml"].compression == "no-such-level"


def test_command_line_overrides_recipe(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    cli = ExportOptions(targets=("onnx",), height=256, width=256, precision={"onnx": "fp32"},
                        rewrites={"onnx": ["text-causal-mask"]})
    o = apply_recipe(r, cli, given={"height", "width"})
    assert (o.height, o.width) == (256, 256)  # given on the command line
    assert o.targets == ("coreml", "onnx")  # --targets not given: the recipe's
    assert o.precision["coreml"] == "fp16"
    assert list(o.rewrites["coreml"]) == ["attention=split-einsum"] and list(o.rewrites["onnx"]) == ["text-causal-mask"]
    assert o.quantize == {"coreml": "palettize-6", "coreml:vae_decoder": "none"}
    assert o.thresholds == {"coreml": {"unet": 33.0}} and o.recipe == str(r.path)
    o2 = apply_recipe(r, ExportOptions(targets=("onnx",), precision={"coreml": "fp32"}, quantize={"coreml": "none"}),
                      given={"targets", "precision"})
    assert o2.targets == ("onnx",) and o2.quantize == {"coreml": "none"} and o2.precision == {"coreml": "fp32"}
    o3 = apply_recipe(r, ExportOptions(targets=("coreml",), rewrites={"coreml": ["linear-to-conv"]}), given={"rewrite"},
                      targets_fixed=True)
    assert o3.targets == ("coreml",) and list(o3.rewrites["coreml"]) == ["attention=split-einsum", "linear-to-conv"]
    o4 = apply_recipe(r, ExportOptions(targets=("coreml",)), given=set())
    assert apply_recipe(r, o4, given=set()).height == 512


def test_names_checked_against_registries_at_export_time(tmp_path):
    from md_export.compress.levels import LEVELS

    r = load_recipe(write(tmp_path, GOOD.replace("palettize-6", "no-such-level")))
    o = apply_recipe(r, ExportOptions(), given=set())
    o.rewrites["coreml"] = []
    with pytest.raises(InputError) as e:
        validate_names(o)
    assert str(r.path) in str(e.value) and "no-such-level" in str(e.value) and "coreml" in str(e.value)
    o.rewrites["coreml"] = ["nope"]
    with pytest.raises(InputError, match="unknown rewrite 'nope'"):
        validate_names(o)
    o.rewrites["coreml"] = []
    o.quantize = {}
    validate_names(o)
    if "palettize-6" in LEVELS.get("coreml", {}):  # registered by now: the shipped iOS recipe validates
        validate_names(apply_recipe(load_recipe(REPO / "recipes" / "mobilediffusion-ios.toml"), ExportOptions(), given=set()))


def test_lora_pairs():
    assert lora_pairs(["a", "b"], [0.5]) == (("a", 0.5), ("b", 0.5))
    assert lora_pairs(["a", "b"], [0.5, 0.25]) == (("a", 0.5), ("b", 0.25))
    assert lora_pairs(["a"], []) == (("a", 1.0),)
    with pytest.raises(InputError):
        lora_pairs(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(InputError):
        lora_pairs([], [1.0])


# -- through the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def bk_tiny(family_checkpoint):
    return family_checkpoint("bk-sdm-tiny")


def test_cli_unregistered_level_fails_before_work(bk_tiny, tmp_path, capsys):
    from md_export.cli.app import main

    p = write(tmp_path, (REPO / "recipes" / "bk-sdm-tiny.toml").read_text().replace('[onnx]\n', '[onnx]\ncompression = "zz-level"\n'))
    code = main(["export", str(bk_tiny), "--recipe", str(p), "--targets", "onnx", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "zz-level" in err and str(p) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "onnx").exists()


def test_cli_recipe_of_another_family(bk_tiny, tmp_path, capsys):
    from md_export.cli.app import main

    code = main(["export", str(bk_tiny), "--recipe", "mobilediffusion", "-o", str(tmp_path), "-q"])  # a bare name
    err = capsys.readouterr().err
    assert code == 2 and "recipe is for family 'mobilediffusion'" in err and "'bk-sdm-tiny'" in err


def test_cli_recipe_export_records_floors_and_check_uses_them(bk_tiny, tmp_path, capsys):
    import json

    from md_export.cli.app import main
    from md_export.verify.check import check_bundle

    p = write(tmp_path, (REPO / "recipes" / "bk-sdm-tiny.toml").read_text().replace("[onnx.parity]\nall = 80.0", "[onnx.parity]\nall = 77.0\nunet = 66.0"))
    out = tmp_path / "out"
    code = main(["export", str(bk_tiny), "--recipe", str(p), "--targets", "onnx", "--height", "128", "--width", "128",
                 "--steps", "3", "-o", str(out), "--no-check", "-q"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "onnx" / "manifest.json").read_text())
    assert m["parity_floors"] == {"all": 77.0, "unet": 66.0, "end_to_end": 40.0}
    assert m["source"]["family"] == "bk-sdm-tiny" and (out / "onnx" / m["source"]["recipe"]).resolve() == p.resolve()
    assert m["pipeline"]["image_height"] == 128 and m["pipeline"]["default_steps"] == 3  # command line beat the recipe
    assert m["pipeline"]["scheduler"] == "euler" and not (out / "coreml").exists()
    # the recorded floors cannot lower md-export's (fp32: 80 dB); naming the recipe applies its floors
    report = check_bundle(out / "onnx", end_to_end=False, samples=1)
    assert {c.model: c.threshold_psnr for c in report.checks} == {"text_encoder": 80.0, "unet": 80.0, "vae_decoder": 80.0}
    recipe_floors = {"all": 77.0, "unet": 66.0}
    named = check_bundle(out / "onnx", end_to_end=False, samples=1, recipe_floors={"onnx": recipe_floors})
    assert {c.model: c.threshold_psnr for c in named.checks} == {"text_encoder": 77.0, "unet": 66.0, "vae_decoder": 77.0}
    assert named.summary()["status"] == "pass"
    lowered = check_bundle(out / "onnx", end_to_end=False, samples=1, thresholds={"all": 60.0})  # raised back by the bundle's
    assert {c.model: c.threshold_psnr for c in lowered.checks} == {"text_encoder": 77.0, "unet": 66.0, "vae_decoder": 77.0}
    over = check_bundle(out / "onnx", end_to_end=False, samples=1, thresholds={"all": 500.0})
    assert over.summary()["status"] == "fail" and {c.threshold_psnr for c in over.checks} == {500.0}


# -- every recipe exports through each of its targets and passes `md-export check` -------------------------

# Cells (recipe, target) in the fast suite; every other cell carries the slow mark (`-m slow`).
# Export time is bound by the op count, which the tiny configs keep (same topology as full size),
# not by the width: export + check of one cell took 22-44 s of CPU for ONNX, 34-65 s for Core ML
# and 70-106 s for TFLite (issue 6; 35 cells in all, about half an hour), so the fast suite runs the
# two shipping recipes and every family's ONNX export (about 4 minutes). bk-sdm-tiny's ONNX export
# runs in test_cli_recipe_export_records_floors_and_check_uses_them, and small-sd / tiny-sd export
# exactly what bk-sdm-small / bk-sdm-tiny do (test_segmind_recipes_are_bk_sdm).
FAST_CELLS = {("mobilediffusion-ios", "coreml"), ("mobilediffusion-android", "tflite")} | {
    (f, "onnx") for f in ("bk-sdm-base", "bk-sdm-small", "lcm", "mobilediffusion", "sd-turbo", "sd15", "sd21", "snapfusion")}
CELLS = [(p.stem, t) for p in RECIPES for t in load_recipe(p).targets]


def _cell(name, target):
    return pytest.param(name, target, id=f"{name}-{target}", marks=() if (name, target) in FAST_CELLS else pytest.mark.slow)


def test_fast_cells_cover_every_recipe_and_target():
    assert FAST_CELLS <= set(CELLS)
    assert {t for _, t in FAST_CELLS} == {"coreml", "tflite", "onnx"}
    covered = {r for r, _ in FAST_CELLS} | {"bk-sdm-tiny", "small-sd", "tiny-sd"}  # see FAST_CELLS
    assert covered == {p.stem for p in RECIPES}


@pytest.mark.parametrize("segmind,bk", [("small-sd", "bk-sdm-small"), ("tiny-sd", "bk-sdm-tiny")])
def test_segmind_recipes_are_bk_sdm(segmind, bk):
    """segmind's recipes and tiny checkpoints are BK-SDM's under another name, so the fast suite
    exports the BK-SDM one only; this fails when they diverge."""
    a, b = get_family(segmind), get_family(bk)
    assert a.configs("tiny") == b.configs("tiny")
    ra, rb = load_recipe(segmind), load_recipe(bk)
    same = ("height", "width", "targets", "steps", "scheduler", "unet_batch", "with_encoder", "target")
    assert all(getattr(ra, k) == getattr(rb, k) for k in same)


@pytest.mark.parametrize("name,target", [_cell(*c) for c in CELLS])
def test_recipe_exports_and_checks(recipe_export, family_checkpoint, name, target):
    """The shipped recipe on its family's tiny checkpoint: the manifest records the recipe's
    compression, floors and pipeline facts (what `inspect` shows), and the bundle passes the check."""
    from md_export.checkpoint.folder import Checkpoint
    from md_export.tools.inspect import inspect_checkpoint
    from md_export.verify.check import check_bundle
    from md_export.config.recipe import ComponentRecipe

    recipe = load_recipe(name)
    tr = recipe.target[target]
    result = recipe_export(name, target)
    m = result.manifest
    assert m["source"]["family"] == recipe.family and m["source"]["recipe"].endswith(f"{name}.toml")
    assert m["parity_floors"] == dict(tr.parity)
    for comp, entry in m["models"].items():
        assert entry["compression"] == (tr.components.get(comp, ComponentRecipe()).compression or tr.compression or "none"), comp
    pipe = m["pipeline"]
    assert (pipe["default_steps"], pipe["scheduler"], pipe["unet_batch"]) == (recipe.steps, recipe.scheduler, recipe.unet_batch)
    ck = Checkpoint.open(family_checkpoint(recipe.family))
    assert inspect_checkpoint(ck, recipe, height=pipe["image_height"], width=pipe["image_width"])["pipeline"] == pipe
    if ck.unet_config.get("time_cond_proj_dim"):
        assert m["models"]["unet"]["inputs"][-1]["name"] == "timestep_cond" and pipe["guidance"] == "embedded"
    else:
        assert [i["name"] for i in m["models"]["unet"]["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    # checked as `md-export check --recipe NAME` does: the recipe's floors (recorded ones only raise)
    report = check_bundle(result.bundle, end_to_end=False, samples=1, recipe_floors={target: dict(tr.parity)})
    assert report.summary()["status"] == "pass", report.summary()
    for c in report.checks:
        if c.model in tr.parity or "all" in tr.parity:
            assert c.threshold_psnr == tr.parity.get(c.model, tr.parity.get("all")), c.model
