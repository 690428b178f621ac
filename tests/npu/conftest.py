"""Fixtures for the NPU tests: a tiny two-input, two-output model converted with litert_torch, and the QNN host
libraries (tests that compile or simulate skip, saying so, when they are absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _qnn_host_or_skip():
    from md_export.npu._errors import NpuSetupError
    from md_export.npu.qnn_host import find_qnn_host

    try:
        return find_qnn_host()
    except NpuSetupError as e:
        pytest.skip(f"QNN host libraries absent, NPU compile/simulate not tested: {e}")


@pytest.fixture(scope="session")
def qnn_host():
    return _qnn_host_or_skip()


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory) -> Path:
    """tiny.tflite, signature 'tiny': inputs x, y (1, 4, 8, 8) float32; outputs p = silu(conv(x)) + y and
    q = 0.5 * silu(conv(x)) - y, same shapes, so a swapped input or output binding shows in the numbers."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x, y):
            h = torch.nn.functional.silu(self.conv(x))
            return {"p": h + y, "q": 0.5 * h - y}

    kwargs = {"x": torch.randn(1, 4, 8, 8), "y": torch.randn(1, 4, 8, 8)}
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    litert_torch.signature("tiny", Tiny().eval(), sample_kwargs=kwargs).convert().export(str(path))
    return path


@pytest.fixture
def tiny_bundle(tiny_tflite, tmp_path) -> Path:
    """A minimal tflite bundle folder: manifest.json listing tiny.tflite as model 'tiny'."""
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "tiny.tflite").write_bytes(tiny_tflite.read_bytes())
    io = [{"name": n, "shape": [1, 4, 8, 8], "dtype": "float32", "layout": "NCHW"} for n in ("x", "y")]
    out = [{"name": n, "shape": [1, 4, 8, 8], "dtype": "float32", "layout": "NCHW"} for n in ("p", "q")]
    tokenizer = {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "bos_token_id": 0, "eos_token_id": 1,
                 "pad_token_id": 1}
    manifest = {  # the fields md-export's manifest schema requires (core.manifest)
        "schema_version": 1,
        "target": "tflite",
        "models": {"tiny": {"file": "tiny.tflite", "format": "tflite", "signature": "tiny", "inputs": io, "outputs": out,
                            "precision": "fp32", "compression": "none", "parameters": 164, "bytes": len(tiny_tflite.read_bytes())}},
        "pipeline": {"image_height": 64, "image_width": 64, "latent_channels": 4, "latent_height": 8, "latent_width": 8,
                     "vae_scaling_factor": 0.18215, "vae_shift_factor": 0.0, "decoder_applies_scaling": True,
                     "guidance": "none", "unet_batch": 1, "default_guidance_scale": 0.0, "default_steps": 4,
                     "scheduler": "euler", "text_max_length": 77, "text_hidden_size": 32, "tokenizer": tokenizer},
    }
    (b / "manifest.json").write_text(json.dumps(manifest))
    return b
