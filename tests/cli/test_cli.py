"""The command line: bad input gets one line, exit code 2 and no output folder; inspect and env."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from md_export.checkpoint.files import default_model_dir
from md_export.cli.app import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    dest = tmp_path / "ckpt"
    shutil.copytree(default_model_dir(), dest)
    return dest


def assert_one_line_error(err: str, *fragments: str):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("md-export: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def assert_no_output(out: Path):
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_missing_checkpoint_folder(capsys, tmp_path):
    code, _, err = run(capsys, "onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "nope"), "no such file or folder")
    assert_no_output(tmp_path / "out")


def test_file_of_the_wrong_kind(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    code, _, err = run(capsys, "onnx", str(f), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(f), "unknown checkpoint file type", ".safetensors")
    assert_no_output(tmp_path / "out")


def test_pickle_file_refused_without_flag(capsys, tmp_path):
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"x")
    code, _, err = run(capsys, "onnx", str(f), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(f), "--allow-pickle")


def test_folder_without_model_index(capsys, tmp_path):
    code, _, err = run(capsys, "tflite", str(tmp_path), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "model_index.json", "--unet")


def test_missing_component(capsys, ckpt_copy, tmp_path):
    shutil.rmtree(ckpt_copy / "vae")
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(ckpt_copy / "vae"), "vae")
    assert_no_output(tmp_path / "out")


def test_missing_weights(capsys, ckpt_copy, tmp_path):
    (ckpt_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(ckpt_copy / "unet"), "no weights file")


def test_unreadable_config(capsys, ckpt_copy, tmp_path):
    (ckpt_copy / "unet" / "config.json").write_text("{ not json")
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(ckpt_copy / "unet" / "config.json"), "not valid JSON")


def test_wrong_config_kind(capsys, ckpt_copy, tmp_path):
    shutil.copyfile(ckpt_copy / "vae" / "config.json", ckpt_copy / "unet" / "config.json")
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "unet", "not a UNet2DConditionModel config")


def test_missing_tokenizer_file(capsys, ckpt_copy, tmp_path):
    (ckpt_copy / "tokenizer" / "merges.txt").unlink()
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "merges.txt")


def test_pickle_weights_refused_without_flag(capsys, ckpt_copy, tmp_path):
    te = ckpt_copy / "text_encoder"
    (te / "model.safetensors").rename(te / "pytorch_model.bin")
    code, _, err = run(capsys, "onnx", str(ckpt_copy), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "pytorch_model.bin", "--allow-pickle")


def test_size_the_unet_cannot_take(capsys, tmp_path):
    code, _, err = run(capsys, "onnx", "--height", "100", "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "--height 100", "multiples of 16", "try 96 or 112")
    assert_no_output(tmp_path / "out")


def test_unknown_target(capsys, tmp_path):
    code, _, err = run(capsys, "export", "--targets", "coreml,tensorrt", "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "tensorrt")


def test_existing_bundle_needs_force(capsys, tmp_path):
    existing = tmp_path / "out" / "onnx"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "onnx", "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "already exists", "--force")
    assert (existing / "keep.txt").read_text() == "mine"


def test_conversion_failure_names_component_and_leaves_nothing(capsys, tmp_path, monkeypatch):
    import torch

    def boom(*a, **k):
        raise RuntimeError("no symbolic function for aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", boom)
    code, _, err = run(capsys, "onnx", "-o", str(tmp_path / "out"), "--no-check", "-q")
    assert code == 3
    assert_one_line_error(err, "onnx", "'text_encoder'", "aten::frobnicate")
    assert_no_output(tmp_path / "out")


def test_debug_variable_shows_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MD_EXPORT_DEBUG", "1")
    code, _, err = run(capsys, "onnx", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert code == 2
    assert "Traceback" in err and "md-export: error:" in err


def test_inspect_checkpoint_json(capsys):
    code, out, _ = run(capsys, "inspect", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["layout"] == "default"
    assert set(data["exports"]) == {"text_encoder", "unet", "vae_decoder"}
    assert data["components"]["unet"]["parameters"] > 100_000
    unet_in = {s["name"]: s["shape"] for s in data["exports"]["unet"]["inputs"]}
    assert unet_in == {"sample": [2, 4, 16, 16], "timestep": [2], "encoder_hidden_states": [2, 77, 32]}


def test_inspect_bundles(capsys, default_export):
    out_dir = default_export["onnx"].bundle.parent
    code, out, _ = run(capsys, "inspect", str(out_dir), "--json")
    assert code == 0
    data = json.loads(out)
    assert sorted(b["target"] for b in data) == ["coreml", "onnx", "tflite"]
    for b in data:
        assert b["models"]["unet"]["inputs"][0]["name"] == "sample"
    code, out, _ = run(capsys, "inspect", str(default_export["tflite"].bundle))
    assert code == 0 and "unet.tflite" in out and "noise_pred" in out


def test_env_lists_versions_and_findings(capsys):
    code, out, _ = run(capsys, "env", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["versions"]["torch"].startswith("2.")
    assert all(f["level"] in ("note", "warn", "error") for f in data["findings"])


def test_env_flags_known_bad_combinations():
    from md_export.tools.environment import findings

    bad = findings({"torch": "2.15.0", "litert-torch": "0.10.0", "coremltools": "9.0", "numpy": "2.4.0",
                    "ai-edge-torch": "0.7.2", "ai-edge-litert": "2.3", "onnxruntime": "1.2", "onnxscript": "0.7"})
    levels = {f["level"] for f in bad}
    text = " ".join(f["message"] for f in bad)
    assert "error" in levels and "torch < 2.15" in text and "ai-edge-torch is deprecated" in text


@pytest.mark.parametrize("argv", [["export", "--bogus"], ["check"], ["generate"]])
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "Error:" in err and "internal error" not in err
