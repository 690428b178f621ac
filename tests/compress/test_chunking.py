"""--chunk-unet: the Core ML UNet split into pieces under a size limit, listed as chunks in the
manifest, chained by every runner (check, generate, lint) and checked against the whole."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from md_export.cli.app import main


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """`md-export coreml --chunk-unet` on the default model, once (two chunks: it is far under 1 GB)."""
    out = tmp_path_factory.mktemp("chunked")
    code = main(["coreml", "-o", str(out), "--chunk-unet", "--no-check", "-q"])
    assert code == 0
    return out / "coreml"


def test_manifest_lists_chunks_instead_of_one_file(chunked):
    from md_export.core.io import path_bytes, path_sha256
    from md_export.core.manifest import read_manifest

    manifest = read_manifest(chunked)
    unet = manifest["models"]["unet"]
    assert "file" not in unet and "sha256" not in unet
    assert [c["file"] for c in unet["chunks"]] == ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"]
    assert not (chunked / "unet.mlpackage").exists()
    for c in unet["chunks"]:
        assert c["sha256"] == path_sha256(chunked / c["file"]) and c["bytes"] == path_bytes(chunked / c["file"])
    assert unet["bytes"] == sum(c["bytes"] for c in unet["chunks"])
    # the chain starts from the model's inputs and ends in its output; the cut tensors join them
    first, last = unet["chunks"][0], unet["chunks"][-1]
    assert {i["name"] for i in first["inputs"]} == {i["name"] for i in unet["inputs"]}
    assert [o["name"] for o in last["outputs"]] == ["noise_pred"]
    assert {i["name"] for i in last["inputs"]} <= {o["name"] for o in first["outputs"]}
    assert unet["chunk_check"]["identical"] is True
    # the other models are whole
    assert manifest["models"]["text_encoder"]["file"] == "text_encoder.mlpackage"


def test_chunked_bundle_passes_check_through_the_chain(chunked, tmp_path, capsys):
    bundle = tmp_path / "coreml"
    shutil.copytree(chunked, bundle)
    report = tmp_path / "r.json"
    code = main(["check", str(bundle), "--samples", "1", "--e2e-steps", "2", "--json", str(report), "-q"])
    capsys.readouterr()
    checks = {c["model"]: c for c in json.loads(report.read_text())[0]["checks"]}
    assert code == 0, checks
    assert checks["unet"]["status"] == "pass" and checks["end_to_end"]["status"] == "pass"


def test_corrupted_chunk_fails_check(chunked, tmp_path, capsys):
    """Mutation guard: negate the UNet's last conv inside the last chunk -> the UNet check fails."""
    from test_parity import _negate_tensor_bytes

    from md_export.checkpoint.folder import Checkpoint

    bundle = tmp_path / "coreml"
    shutil.copytree(chunked, bundle)
    weight = Checkpoint.open(None).load_unet().conv_out.weight.detach().numpy()
    assert _negate_tensor_bytes(bundle / "UnetChunk2.mlpackage", weight) >= 1
    code = main(["check", str(bundle), "--no-e2e", "--samples", "1", "-q"])
    capsys.readouterr()
    checks = {c["model"]: c["status"] for c in json.loads((bundle / "parity.json").read_text())["checks"]}
    assert code == 1 and checks["unet"] == "fail" and checks["text_encoder"] == "pass"


def test_missing_chunk_is_a_one_line_error(chunked, tmp_path, capsys):
    bundle = tmp_path / "coreml"
    shutil.copytree(chunked, bundle)
    shutil.rmtree(bundle / "UnetChunk2.mlpackage")
    code = main(["check", str(bundle), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "UnetChunk2.mlpackage" in err and "unet" in err and len(err.splitlines()) == 1


def test_lint_and_inspect_read_chunked_bundles(chunked, capsys):
    from md_export.verify.lint import lint_bundle

    models = lint_bundle(chunked)["models"]
    assert {"unet (UnetChunk1.mlpackage)", "unet (UnetChunk2.mlpackage)", "text_encoder"} <= set(models)
    assert main(["inspect", str(chunked)]) == 0  # the table names the chunks in place of a file
    out = capsys.readouterr().out
    assert "UnetChunk1" in out and "UnetChunk2" in out


def test_chain_refuses_a_chunk_whose_input_nobody_makes():
    from md_export.runtime.chain import chain

    run = chain([lambda f: {"h": f["x"] + 1}, lambda f: {"y": f["h"] * f["z"]}], [["x"], ["h", "z"]])
    with pytest.raises(ValueError, match="z"):
        run({"x": np.ones(2)})
    assert run({"x": np.ones(2), "z": np.full(2, 3.0)})["y"].tolist() == [6.0, 6.0]


def test_chunk_options_are_refused_where_they_cannot_apply(tmp_path, capsys):
    assert main(["tflite", "-o", str(tmp_path / "o"), "--chunk-unet", "-q"]) == 2
    assert "--chunk-unet" in capsys.readouterr().err
    assert main(["coreml", "-o", str(tmp_path / "o"), "--chunk-unet", "--chunk-limit-mb", "0", "-q"]) == 2
    assert "--chunk-limit-mb" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_recipe_chunks_only_over_its_size(tmp_path):
    """chunk_over_mb (mobilediffusion-ios: 1000) splits a UNet package only when it is larger."""
    from md_export.config.options import ExportOptions
    from md_export.export import _wants_chunks

    package = tmp_path / "unet.mlpackage"
    package.mkdir()
    (package / "weight.bin").write_bytes(b"\0" * 2_000_000)
    assert not _wants_chunks(ExportOptions(), package)
    assert _wants_chunks(ExportOptions(chunk_over_mb=1), package)
    assert not _wants_chunks(ExportOptions(chunk_over_mb=3), package)
    assert _wants_chunks(ExportOptions(chunk_unet=True, chunk_over_mb=3), package)


def test_recipe_chunk_over_mb_reaches_export_options():
    from md_export.config.options import ExportOptions
    from md_export.config.recipe import load_recipe, shipped_recipes
    from md_export.config.resolve import apply_recipe

    recipe = load_recipe(shipped_recipes()["mobilediffusion-ios"])
    options = apply_recipe(recipe, ExportOptions(targets=("coreml",)))
    assert options.chunk_over_mb == 1000 and options.chunk_unet is False
    assert replace(options, chunk_over_mb=None).chunk_over_mb is None


def test_palettized_unet_chunks_chain_to_the_whole(default_export, tmp_path):
    """The issue's command, `--quantize palettize-6 --chunk-unet`: chunking runs after compression
    and keeps it (the pieces add up to the palettized package, not to the fp16 one)."""
    from md_export.lower.base import LoweredModel
    from md_export.core.io import path_bytes
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import attach_modules, make_plan
    from md_export.compress.apply import compress
    from md_export.compress.chunk import chunk_in_bundle

    bundle = tmp_path / "coreml"
    bundle.mkdir()
    shutil.copytree(default_export["coreml"].bundle / "unet.mlpackage", bundle / "unet.mlpackage")
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt)
    comp = plan.components["unet"]
    fp16_bytes = path_bytes(bundle / "unet.mlpackage")
    lowered = compress("coreml", LoweredModel("unet", bundle / "unet.mlpackage", "fp16"), comp, "palettize-6", {})
    palettized = path_bytes(lowered.path)
    assert palettized < 0.8 * fp16_bytes
    fields = chunk_in_bundle(lowered.path, comp, limit=10**9, min_chunks=2)
    assert len(fields["chunks"]) == 2 and fields["chunk_check"]["identical"]
    total = sum(c["bytes"] for c in fields["chunks"])
    assert total < 1.1 * palettized  # the cut adds only graph bytes; no weight went back to fp16
