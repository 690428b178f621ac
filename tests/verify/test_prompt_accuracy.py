"""`md-export eval`: prompt accuracy of a bundle against the fp32 reference, judged by the rule-based
shapes judge, with floors that can fail and a refusal of models not trained on the vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from md_export.checkpoint.files import default_model_dir
from md_export.cli.app import main
from md_export.core.io import file_sha256
from md_export.verify import prompt_accuracy
from md_export.verify.prompt_accuracy import AccuracyReport, bundle_level

TARGETS = ("coreml", "tflite", "onnx")


@pytest.fixture(scope="module")
def evaluated(default_export, tmp_path_factory):
    """The three default bundles (copied: eval writes into a bundle) evaluated in one call, the
    reference generated once for all three."""
    root = tmp_path_factory.mktemp("eval")
    for target in TARGETS:
        shutil.copytree(default_export[target].bundle, root / target)
    calls = []
    real = prompt_accuracy.run_reference

    def counting(*args, **kwargs):
        calls.append((args[2], args[4]))
        return real(*args, **kwargs)

    prompt_accuracy.run_reference = counting
    try:
        code = main(["eval", str(root), "-q", "--json", str(root / "eval.json")])
    finally:
        prompt_accuracy.run_reference = real
    return root, code, json.loads((root / "eval.json").read_text()), calls


def test_the_default_bundles_pass_their_floors(evaluated):
    root, code, reports, calls = evaluated
    assert code == 0, [(r["target"], r["bundle"], r["reference"]["accuracy"]) for r in reports]
    assert sorted(r["target"] for r in reports) == sorted(TARGETS)
    for r in reports:
        assert r["prompts"] == 24 and r["seeds"] == [0, 1] and r["bundle"]["pairs"] == 48
        assert r["reference"]["accuracy"] >= 0.90, r["wrong"]["reference"]
        assert r["level"] in ("fp32", "fp16") and r["bundle"]["max_drop"] == 0.02
        assert r["bundle"]["accuracy"] >= r["reference"]["accuracy"] - 0.02 - 1e-9, (r["target"], r["wrong"]["bundle"])
        assert r["bundle"]["status"] == "pass" and r["reference"]["status"] == "pass"
    assert len(calls) == 48 and len(set(calls)) == 48  # one reference run shared by the three bundles


def test_eval_writes_its_grid_and_parity_entry_into_the_bundle(evaluated, default_export):
    from PIL import Image

    root = evaluated[0]
    for target in TARGETS:
        grid = Image.open(root / target / "prompt_accuracy.png")
        assert grid.height >= 24 * 128 and grid.width > 2 * 2 * 128  # 24 prompt rows, reference | bundle, 2 seeds each
        entry = json.loads((root / target / "parity.json").read_text())["prompt_accuracy"]
        assert entry["target"] == target and entry["grid"] == "prompt_accuracy.png"
    manifest = json.loads((default_export["tflite"].bundle / "manifest.json").read_text())
    assert manifest["source"]["vocabulary"] == "shapes-v1"


def test_a_model_not_trained_on_the_vocabulary_is_refused_by_name(bundle_copy, tmp_path, capsys):
    bundle = bundle_copy("tflite")
    ckpt = tmp_path / "same_weights_no_marker"
    shutil.copytree(default_model_dir(), ckpt)
    index = json.loads((ckpt / "model_index.json").read_text())
    index.pop("_md_export_vocabulary")
    (ckpt / "model_index.json").write_text(json.dumps(index))
    code = main(["eval", str(bundle), "--checkpoint", str(ckpt), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "declares no training vocabulary" in err and "shapes-v1" in err
    assert not (bundle / "prompt_accuracy.png").exists()


def test_a_bundle_that_draws_the_wrong_thing_fails_and_a_planted_symlink_is_not_followed(bundle_copy, tmp_path, monkeypatch, capsys):
    bundle = bundle_copy("onnx")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (bundle / "parity.json").unlink(missing_ok=True)
    (bundle / "parity.json").symlink_to(outside)
    before = file_sha256(outside)

    def grey(*args, **kwargs):  # the bundle's loop returns a flat grey image: nothing drawn
        return np.zeros((1, 3, 128, 128), dtype=np.float32)

    monkeypatch.setattr(prompt_accuracy, "generate", grey)
    code = main(["eval", str(bundle), "--prompts", "3", "--seeds", "1", "-q", "--json", str(tmp_path / "r.json")])
    (report,) = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and report["bundle"]["accuracy"] == 0.0 and report["bundle"]["status"] == "fail"
    assert file_sha256(outside) == before and not (bundle / "parity.json").is_symlink()
    assert json.loads((bundle / "parity.json").read_text())["prompt_accuracy"]["bundle"]["correct"] == 0


def test_compressed_levels_are_measured_not_gated_unless_asked():
    fp16 = {"models": {"unet": {"precision": "fp16"}, "vae_decoder": {"precision": "fp32"}}}
    int8 = {"models": {"unet": {"precision": "fp16", "compression": "int8"}, "text_encoder": {"compression": "fp16"}}}
    assert bundle_level({"models": {"unet": {}}}) == "fp32" and bundle_level({"models": {"unet": {"compression": "none"}}}) == "fp32"
    assert bundle_level(fp16) == "fp16" and bundle_level(int8) == "int8"
    report = AccuracyReport(Path("b"), "tflite", "int8", 1, [0], 20, 7.5, accuracy=0.5, reference_accuracy=1.0, max_drop=None)
    assert report.status == "measured" and report.exit_code() == 0
    report.max_drop = 0.1
    assert report.status == "fail" and report.exit_code() == 1
    report.accuracy, report.reference_accuracy = 1.0, 0.85
    assert report.status == "pass" and report.reference_status == "fail" and report.exit_code() == 1


@pytest.mark.parametrize("args, word", [(["--prompts", "0"], "--prompts"), (["--seeds", "0"], "--seeds"),
                                        (["--max-drop", "150"], "--max-drop")])
def test_bad_options_are_one_line_errors(default_export, args, word, capsys):
    code = main(["eval", str(default_export["onnx"].bundle), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and word in err and len(err.splitlines()) == 1
