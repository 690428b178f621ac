"""`md-export coreml --layout apple`: bundles apple/ml-stable-diffusion's Swift package loads.

Every apple-layout bundle exported here is checked against the committed spec of the package's
expectations (md_export/bundle/apple_spec.json) and passes `md-export check`, which drives it as the
package does (float ids, fp16 inputs, transposed hidden states, the scaling before the decoder, a
batch-1 UNet called twice) against the contract's fp32 torch modules."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from md_export.bundle import apple
from md_export.cli.app import main

# name -> (checkpoint: None = the default model, or a family's tiny init; UNet batch; chunked; VAE encoder)
BUNDLES = {
    "default-b2": (None, 2, False, False),
    "default-b1-chunked": (None, 1, True, False),
    "mobilediffusion-b2-chunked": ("mobilediffusion", 2, True, True),
    "mobilediffusion-b1": ("mobilediffusion", 1, False, False),
}


@pytest.fixture(scope="session")
def apple_bundle(family_checkpoint, tmp_path_factory):
    """name -> an apple-layout bundle of BUNDLES, exported once per session."""
    from md_export.checkpoint.folder import Checkpoint
    from md_export.config.options import ExportOptions
    from md_export.export import export

    root = tmp_path_factory.mktemp("apple")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            family, batch, chunked, encoder = BUNDLES[name]
            ckpt = Checkpoint.open(family_checkpoint(family) if family else None)
            options = ExportOptions(targets=("coreml",), out=root / name, unet_batch=batch, chunk_unet=chunked,
                                    with_encoder=encoder, layout="apple", command="pytest")
            (result,) = export(ckpt, options)
            made[name] = result.bundle
        return made[name]

    return get


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- every bundle: the spec, then the check -------------------------------------------------------


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundle_meets_the_package_spec(apple_bundle, name):
    bundle = apple_bundle(name)
    _family, batch, chunked, encoder = BUNDLES[name]
    assert bundle.name == "coreml-apple"
    assert apple.validate(bundle) == []
    unet = ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage"] if chunked else ["Unet.mlpackage"]
    packages = sorted(p.name for p in bundle.glob("*.mlpackage"))
    assert packages == sorted(["TextEncoder.mlpackage", "VAEDecoder.mlpackage", *unet] + (["VAEEncoder.mlpackage"] if encoder else []))
    assert (bundle / "vocab.json").is_file() and (bundle / "merges.txt").is_file() and not (bundle / "tokenizer").exists()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["layout"] == "apple" and manifest["options"]["layout"] == "apple"
    pipe = manifest["pipeline"]
    assert pipe["decoder_applies_scaling"] is False and pipe["unet_batch"] == batch and pipe["guidance"] == "cfg-batch2"
    assert pipe["tokenizer"]["pad_token_id"] == pipe["tokenizer"]["eos_token_id"]
    assert json.loads((bundle / "scheduler.json").read_text())["_class_name"] == "DPMSolverMultistepScheduler"
    ins = {i["name"]: i for i in manifest["models"]["unet"]["inputs"]}
    D = pipe["text_hidden_size"]
    assert ins["encoder_hidden_states"]["shape"] == [batch, D, 1, 77] and ins["encoder_hidden_states"]["dtype"] == "float16"
    assert manifest["models"]["text_encoder"]["inputs"][0]["dtype"] == "float32"


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundle_passes_check_driven_as_the_package_drives_it(apple_bundle, name):
    from md_export.core.manifest import read_manifest
    from md_export.verify.check import check_bundle
    from md_export.verify.floors import DEFAULT_PSNR

    bundle = apple_bundle(name)
    report = check_bundle(bundle, samples=1, e2e_steps=2)
    checks = {c.model: c for c in report.checks}
    assert report.exit_code() == 0, {k: (c.status, c.reason, c.metrics.get("psnr")) for k, c in checks.items()}
    expected = {"text_encoder", "unet", "vae_decoder", "end_to_end"} | ({"vae_encoder"} if BUNDLES[name][3] else set())
    assert set(checks) == expected
    for model, c in checks.items():  # fp16 floors of verify/floors.py
        assert c.status == "pass" and c.metrics["psnr"] >= DEFAULT_PSNR["fp16"][model], (model, c.metrics)
    assert read_manifest(bundle)["layout"] == "apple"  # the check rewrites the manifest through the schema
    assert apple.validate(bundle) == []


def test_generate_runs_an_apple_bundle(apple_bundle, tmp_path, capsys):
    png = tmp_path / "fox.png"
    code, out, err = run(capsys, "generate", apple_bundle("mobilediffusion-b1"), "--prompt", "a red fox", "--steps", "2", "-o", png)
    assert code == 0, err
    assert png.stat().st_size > 0


# -- the spec catches what the package would not load ----------------------------------------------


@pytest.fixture
def bundle_copy(apple_bundle, tmp_path):
    dest = tmp_path / "coreml-apple"
    shutil.copytree(apple_bundle("mobilediffusion-b1"), dest)
    return dest


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_spec_catches_a_renamed_model(bundle_copy):
    (bundle_copy / "VAEDecoder.mlpackage").rename(bundle_copy / "vae_decoder.mlpackage")
    problems = apple.validate(bundle_copy)
    assert [p.rule for p in problems] == ["decoder-file"] and "Decoder" in problems[0]


def test_spec_catches_missing_tokenizer_files(bundle_copy):
    (bundle_copy / "merges.txt").unlink()
    assert [p.rule for p in apple.validate(bundle_copy)] == ["merges-file"]


def test_spec_catches_shapes_the_package_would_not_feed(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["pipeline"].update(unet_batch=2))  # the package would feed batch 2
    problems = apple.validate(bundle_copy)
    rules = {p.rule for p in problems}
    assert {"unet-sample", "unet-timestep", "unet-hidden-states", "unet-output-one"} <= rules, problems


def test_spec_catches_a_decoder_that_scales(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["pipeline"].update(decoder_applies_scaling=True))
    assert [p.rule for p in apple.validate(bundle_copy)] == ["scaling"]


def test_spec_catches_a_third_chunk(apple_bundle, tmp_path):
    bundle = tmp_path / "coreml-apple"
    shutil.copytree(apple_bundle("mobilediffusion-b2-chunked"), bundle)
    shutil.copytree(bundle / "UnetChunk2.mlpackage", bundle / "UnetChunk3.mlpackage")
    assert [p.rule for p in apple.validate(bundle)] == ["unet-chunks-exactly-two"]


def test_spec_catches_scheduler_and_padding_the_package_lacks(bundle_copy):
    sched = json.loads((bundle_copy / "scheduler.json").read_text())
    (bundle_copy / "scheduler.json").write_text(json.dumps(dict(sched, prediction_type="v_prediction")))
    _edit_manifest(bundle_copy, lambda m: m["pipeline"]["tokenizer"].update(pad_token_id=0))
    problems = apple.validate(bundle_copy)
    assert sorted(p.rule for p in problems) == ["epsilon", "pad-token"] and all(p.kind == "pipeline" for p in problems)


def test_two_chunks_over_the_limit_is_a_conversion_error(apple_bundle, tmp_path):
    from md_export.compress.chunk import split
    from md_export.core.errors import ConversionError

    unet = tmp_path / "unet.mlpackage"
    shutil.copytree(apple_bundle("default-b2") / "Unet.mlpackage", unet)
    with pytest.raises(ConversionError, match="at most 2 UNet chunks.*--chunk-limit-mb 1"):
        split(unet, tmp_path, limit=1_000_000, min_chunks=2, max_chunks=2)


def test_every_rule_names_a_swift_line():
    spec = apple.spec()
    rules = [*spec["resources"], *spec["pipeline"]]
    for model in spec["models"].values():
        for key, value in model.items():
            rules += value if isinstance(value, list) else [value]
    assert len(rules) > 30
    for r in rules:
        path, _, line = r["source"].rpartition(":")
        assert path.endswith((".swift", ".py")) and line.isdigit() and r["quote"], r


@pytest.mark.skipif(not os.environ.get("APPLE_SD_SOURCES"), reason="set APPLE_SD_SOURCES to a checkout of apple/ml-stable-diffusion")
def test_every_quote_is_on_its_line_in_the_package_sources():
    root = Path(os.environ["APPLE_SD_SOURCES"])
    spec = apple.spec()
    rules = [*spec["resources"], *spec["pipeline"]]
    for model in spec["models"].values():
        for value in model.values():
            rules += value if isinstance(value, list) else [value]
    for r in rules:
        path, _, line = r["source"].rpartition(":")
        text = (root / path).read_text(encoding="utf-8").splitlines()[int(line) - 1]
        assert r["quote"] in text, (r["id"] if "id" in r else r["source"], text)


# -- refusals, flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("family, reason", [("lcm", "timestep_cond"), ("sd-turbo", "trailing")])
def test_families_the_package_cannot_run_are_refused(family_checkpoint, tmp_path, capsys, family, reason):
    code, _, err = run(capsys, "coreml", family_checkpoint(family), "--layout", "apple", "-o", tmp_path / "out")
    line = one_line(err)
    assert code == 2 and family in line and reason in line and "--force-layout" in line
    assert not (tmp_path / "out").exists()


def test_v_prediction_is_refused_and_force_layout_accepts_it(family_checkpoint, tmp_path, capsys):
    from md_export.bundle.layout import AppleLayout
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import make_plan
    from md_export.config.options import ExportOptions

    ckpt_dir = tmp_path / "sd15v"
    shutil.copytree(family_checkpoint("sd15"), ckpt_dir)
    cfg = ckpt_dir / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), prediction_type="v_prediction")))
    code, _, err = run(capsys, "coreml", ckpt_dir, "--layout", "apple", "-o", tmp_path / "out")
    assert code == 2 and "v_prediction prediction" in one_line(err) and "epsilon" in err
    ckpt = Checkpoint.open(ckpt_dir)
    options = ExportOptions(targets=("coreml",), out=tmp_path / "out", layout="apple", force_layout=True)
    caveats = AppleLayout().check(options, ckpt, make_plan(ckpt))
    assert any("v_prediction" in c for c in caveats)


def test_sd21_padding_is_a_caveat_not_a_refusal(family_checkpoint, tmp_path):
    from md_export.bundle.layout import AppleLayout
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import make_plan
    from md_export.config.options import ExportOptions

    ckpt = Checkpoint.open(family_checkpoint("sd21"))
    caveats = AppleLayout().check(ExportOptions(targets=("coreml",), layout="apple"), ckpt, make_plan(ckpt))
    assert len(caveats) == 1 and "pads with <|endoftext|>" in caveats[0]


@pytest.mark.skipif(sys.platform == "darwin", reason="--compile runs on macOS")
def test_compile_is_refused_off_macos_with_the_command_to_run(tmp_path, capsys):
    code, _, err = run(capsys, "coreml", "--layout", "apple", "--compile", "-o", tmp_path / "out")
    line = one_line(err)
    assert code == 2 and "macOS" in line and "xcrun coremlcompiler compile" in line and "coreml-apple" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["tflite", "--layout", "apple"], "Core ML layout"),
    (["coreml", "--layout", "android"], "--layout android"),
    (["coreml", "--force-layout"], "only with --layout apple"),
    (["coreml", "--compile"], "only with --layout apple"),
])
def test_layout_flags_bad_input(tmp_path, capsys, argv, fragment):
    code, _, err = run(capsys, *argv, "-o", tmp_path / "out")
    assert code == 2 and fragment in one_line(err)


def test_compile_runs_coremlcompiler_on_every_package(tmp_path, monkeypatch):
    from md_export.core.errors import ConversionError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "xcrun"
    # xcrun coremlcompiler compile PKG OUTDIR -> OUTDIR/<name>.mlmodelc; a package named Bad fails
    fake.write_text('#!/bin/sh\ncase "$3" in *Bad*) echo "bad model" >&2; exit 1;; esac\n'
                    'n=$(basename "$3" .mlpackage); mkdir -p "$4/$n.mlmodelc"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "coreml-apple"
    for name in ("TextEncoder", "Unet", "VAEDecoder"):
        (folder / f"{name}.mlpackage").mkdir(parents=True)
    assert apple.compile_packages(folder) == ["TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc"]
    assert all((folder / f"{n}.mlmodelc").is_dir() for n in ("TextEncoder", "Unet", "VAEDecoder"))
    (folder / "Bad.mlpackage").mkdir()
    with pytest.raises(ConversionError, match="Bad.mlpackage failed.*bad model"):
        apple.compile_packages(folder)


# -- the wrappers and adapters agree with the contract in fp32 -------------------------------------


@pytest.fixture(scope="module")
def default_plans():
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.apple import apple_plan
    from md_export.components.plan import attach_modules, make_plan

    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt, with_encoder=True)
    attach_modules(plan, ckpt)
    return plan, apple_plan(plan, {}, plan.pipeline_json(ckpt)), plan.pipeline_json(ckpt)


@pytest.mark.parametrize("name", ["text_encoder", "unet", "vae_decoder", "vae_encoder"])
def test_apple_wrapper_through_adapters_equals_the_contract(default_plans, name):
    from md_export.components.apple import from_apple, to_apple

    plan, aplan, pipe = default_plans
    contract, comp = plan.components[name], aplan.components[name]
    feeds = {s.name: t.numpy() for s, t in zip(contract.inputs, contract.example_inputs(seed=3))}
    with torch.no_grad():
        ref = contract.module(*(torch.from_numpy(feeds[s.name]) for s in contract.inputs)).numpy()
        apple_feeds = to_apple(name, feeds, pipe, io_dtype=np.float32)
        assert [k for k in apple_feeds] == [s.name for s in comp.inputs]
        for s in comp.inputs:
            assert list(apple_feeds[s.name].shape) == list(s.shape)
        out = comp.module(*(torch.from_numpy(np.ascontiguousarray(apple_feeds[s.name])) for s in comp.inputs)).numpy()
    assert list(out.shape) == list(comp.outputs[0].shape)
    got = from_apple(name, {comp.outputs[0].name: out}, pipe)[contract.outputs[0].name]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_batch1_unet_is_called_once_per_half(default_plans):
    from md_export.runtime.apple import adapt

    calls = []

    def unet(feeds):  # a batch-1 "model": records what it is fed
        calls.append({k: v.copy() for k, v in feeds.items()})
        return {"noise_pred": feeds["sample"].astype(np.float32) * feeds["encoder_hidden_states"].astype(np.float32).mean()}

    entry = {"inputs": [{"name": "sample", "shape": [1, 4, 2, 2], "dtype": "float16"}]}
    run = adapt("unet", unet, entry, {})
    sample = np.random.default_rng(0).standard_normal((2, 4, 2, 2)).astype(np.float32)
    ehs = np.stack([np.zeros((77, 8)), np.ones((77, 8))]).astype(np.float32)
    out = run({"sample": sample, "timestep": np.array([5.0, 5.0], np.float32), "encoder_hidden_states": ehs})["noise_pred"]
    assert len(calls) == 2 and [c["encoder_hidden_states"].shape for c in calls] == [(1, 8, 1, 77)] * 2
    assert all(c["sample"].dtype == np.float16 for c in calls)
    np.testing.assert_allclose(out[0], 0.0)
    np.testing.assert_allclose(out[1], sample[1].astype(np.float16).astype(np.float32))


def test_export_options_default_layout_is_unchanged():
    from md_export.bundle.layout import get_layout
    from md_export.config.options import ExportOptions

    assert ExportOptions().layout == "md-export" and get_layout(None).folder("coreml") == "coreml"
    assert get_layout("apple").folder("coreml") == "coreml-apple"
    assert replace(ExportOptions(), layout="apple").layout == "apple"


def test_the_apple_folder_is_checked_before_any_work(tmp_path):
    """check_options looks at OUT/coreml-apple, the folder this layout writes, not OUT/coreml."""
    from md_export.checkpoint.folder import Checkpoint
    from md_export.config.options import ExportOptions
    from md_export.core.errors import InputError
    from md_export.export import export

    (tmp_path / "coreml-apple").write_text("not a folder")
    with pytest.raises(InputError, match="coreml-apple exists and is not a folder"):
        export(Checkpoint.open(None), ExportOptions(out=tmp_path, targets=("coreml",), layout="apple", command="pytest"))
