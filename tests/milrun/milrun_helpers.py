"""Shared helpers for the milrun tests: tiny-model wrappers, conversion to a saved .mlpackage,
and error metrics. Conversions follow md-export's Core ML path (torch.export ->
run_decompositions -> coremltools ML program)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch


class UNetWrap(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states).sample


class TextWrap(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids).last_hidden_state


class VaeDecodeWrap(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z).sample


class VaeEncodeWrap(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image).latent_dist.mean


def export(module, args):
    """torch.export with the decompositions coremltools expects (done once per component)."""
    args = tuple(a.contiguous() for a in args)
    return torch.export.export(module.eval(), args).run_decompositions({})


def convert(module, args, input_names, out_dir, name, *, precision="fp32", target="iOS17", output_names=None, ep=None):
    """torch.export (or a given ExportedProgram) + coremltools -> saved <out_dir>/<name>.mlpackage."""
    import coremltools as ct

    from md_export.lower.coreml_torch_ops import register_missing_torch_ops

    register_missing_torch_ops()
    if ep is None:
        ep = export(module, args)
    kwargs = {}
    if output_names:
        kwargs["outputs"] = [ct.TensorType(name=n) for n in output_names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            inputs=[_tensor_type(ct, n, a) for n, a in zip(input_names, args)],
            skip_model_load=True,
            **kwargs,
        )
    path = Path(out_dir) / f"{name}.mlpackage"
    model.save(str(path))
    return path


def _tensor_type(ct, name, arg):
    # Integer inputs (token ids) must be declared int32: left undeclared, an fp16 program
    # takes them as fp16 and ids above 2048 are rounded before the embedding lookup.
    if not arg.is_floating_point():
        return ct.TensorType(name=name, shape=tuple(arg.shape), dtype=np.int32)
    return ct.TensorType(name=name, shape=tuple(arg.shape))


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    """20*log10(max|ref| / RMSE), in dB."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    rmse = np.sqrt(np.mean((ref - out) ** 2))
    if rmse == 0:
        return float("inf")
    return float(20 * np.log10(np.max(np.abs(ref)) / rmse))


def rel_max_err(ref: np.ndarray, out: np.ndarray) -> float:
    """max|ref - out| / max(max|ref|, 1)."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    return float(np.max(np.abs(ref - out)) / max(np.max(np.abs(ref)), 1.0))
