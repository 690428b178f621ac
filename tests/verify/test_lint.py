"""md-export lint: findings on tiny saved models, and the command's exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from md_export.export import lower_at
from md_export.lower.base import LowerOptions
from md_export.capture.torch_export import capture
from md_export.components.plan import ComponentPlan
from md_export.core.spec import TensorSpec
from md_export.verify.lint import lint_coreml, lint_onnx, lint_tflite, module_of


def _manifest(file: str = "unet.tflite") -> dict:
    """A manifest with the fields md-export's schema requires (core.manifest), naming one UNet file."""
    spec = [{"name": "sample", "shape": [2, 4, 4, 4], "dtype": "float32", "layout": "NCHW"}]
    tokenizer = {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "bos_token_id": 49406,
                 "eos_token_id": 49407, "pad_token_id": 49407}
    return {"schema_version": 1, "target": "tflite", "rewrites": [],
            "models": {"unet": {"file": file, "format": "tflite", "inputs": spec, "outputs": spec, "precision": "fp32",
                                "compression": "none", "parameters": 1, "bytes": 1}},
            "pipeline": {"image_height": 32, "image_width": 32, "latent_channels": 4, "latent_height": 4, "latent_width": 4,
                         "vae_scaling_factor": 0.18215, "vae_shift_factor": 0.0, "decoder_applies_scaling": True,
                         "guidance": "cfg-batch2", "unet_batch": 2, "default_guidance_scale": 7.5, "default_steps": 20,
                         "scheduler": "euler", "text_max_length": 77, "text_hidden_size": 32, "tokenizer": tokenizer}}



class Awkward(nn.Module):
    """A materialized broadcast (BROADCAST_TO on TFLite) and a rank-5 intermediate."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 2 * 2 * 1 * 4 * 4).reshape(2, 2, 1, 4, 4))
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, sample):
        h = self.conv(sample)  # (2, 4, 4, 4)
        five = h.reshape(2, 2, 2, 4, 4) * torch.sigmoid(h.reshape(2, 2, 2, 4, 4) + self.w)
        first = h[:, :1].expand(2, 4, 4, 4)
        return torch.cat([five.reshape(2, 4, 4, 4), first.contiguous() * h], dim=1)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, sample):
        return torch.relu(self.conv(sample))


def _lower(module, target, tmp_path, precision="fp32"):
    plan = ComponentPlan("unet", [TensorSpec("sample", (2, 4, 4, 4), "float32", "NCHW")],
                         [TensorSpec("out", (2, 8, 4, 4), "float32", "NCHW")], module.eval())
    d = tmp_path / f"{target}-{type(module).__name__}-{precision}"
    d.mkdir()
    return lower_at(target, plan, capture(plan), d, LowerOptions(precision=precision)).path


@pytest.fixture(scope="module")
def awkward_tflite(tmp_path_factory):
    return _lower(Awkward(), "tflite", tmp_path_factory.mktemp("lint"))


@pytest.fixture(scope="module")
def plain_tflite(tmp_path_factory):
    return _lower(Plain(), "tflite", tmp_path_factory.mktemp("lint"))


def test_tflite_rank5_and_broadcast_are_found(awkward_tflite):
    r = lint_tflite(awkward_tflite)
    kinds = {(f["kind"], f["op"]) for f in r["findings"]}
    assert any(k == "rank" for k, _ in kinds), r["findings"]
    assert r["ops"] == sum(r["histogram"].values()) and "CONV_2D" in r["histogram"]
    if "BROADCAST_TO" in r["histogram"]:
        assert ("op", "BROADCAST_TO") in kinds


def test_tflite_plain_conv_is_clean(plain_tflite):
    r = lint_tflite(plain_tflite)
    assert r["findings"] == [] and r["histogram"]["CONV_2D"] == 1


def test_coreml_fp32_compute_and_rank_are_found_fp16_plain_is_clean(tmp_path):
    r32 = lint_coreml(_lower(Plain(), "coreml", tmp_path, "fp32"))
    assert any(f["kind"] == "dtype" for f in r32["findings"])
    r16 = lint_coreml(_lower(Plain(), "coreml", tmp_path, "fp16"))
    assert r16["findings"] == [], r16["findings"]
    assert r16["histogram"]["conv"] == 1


def test_onnx_histogram(tmp_path):
    r = lint_onnx(_lower(Plain(), "onnx", tmp_path))
    assert r["histogram"].get("Conv") == 1 and r["findings"] == []


def test_module_of_reads_litert_tensor_names():
    name = ("md_export.backends.tflite._NamedIO/md_export.components.UNetWrapper_inner/diffusers.models.unets.unet_2d_condition."
            "UNet2DConditionModel_unet/diffusers.models.resnet.ResnetBlock2D_0/torch.nn.modules.normalization.GroupNorm_norm1;10")
    assert module_of(name) == "UNet2DConditionModel_unet/ResnetBlock2D_0/GroupNorm_norm1"
    assert module_of("linear_3") is None


def test_lint_command_strict_and_json(tmp_path, awkward_tflite, plain_tflite):
    import shutil

    from md_export.core.io import write_json
    from md_export.cli.app import main

    bundle = tmp_path / "tflite"
    bundle.mkdir()
    shutil.copy(awkward_tflite, bundle / "unet.tflite")
    write_json(bundle / "manifest.json", _manifest())
    assert main(["lint", str(bundle)]) == 0
    assert main(["lint", str(bundle), "--strict"]) == 1
    clean = tmp_path / "clean" / "tflite"
    clean.mkdir(parents=True)
    shutil.copy(plain_tflite, clean / "unet.tflite")
    write_json(clean / "manifest.json", _manifest())
    assert main(["lint", str(clean), "--strict"]) == 0


def test_lint_json_output(tmp_path, awkward_tflite, capsys):
    from md_export.core.io import write_json
    from md_export.cli.app import main

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "unet.tflite").write_bytes(awkward_tflite.read_bytes())
    write_json(bundle / "manifest.json", _manifest())
    capsys.readouterr()
    assert main(["lint", str(bundle), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["target"] == "tflite" and data[0]["models"]["unet"]["findings"]
