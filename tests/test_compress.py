"""Compression levels on the tiny default model's VAE decoder (the smallest component): each level
runs on a saved artifact, the result runs in its own runtime against the fp32 torch reference,
and its size is checked against the ideal."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from md_export.backends.base import LoweredModel, LowerOptions, get_backend
from md_export.capture import capture
from md_export.checkpoint import Checkpoint
from md_export.components import attach_modules, make_plan
from md_export.compress import LEVELS, compress, parse_level
from md_export.errors import InputError, UnknownNameError
from md_export.parity.metrics import compare
from md_export.parity.thresholds import compression_family, end_to_end_floor, floor_for

COMPONENT = "vae_decoder"


@pytest.fixture(scope="module")
def plan():
    ckpt = Checkpoint.open(None)
    p = make_plan(ckpt)
    attach_modules(p, ckpt, only=(COMPONENT,))
    return p


@pytest.fixture(scope="module")
def lowered(plan, tmp_path_factory):
    """The VAE decoder lowered once per target (fp32 for TFLite/ONNX, fp16 for Core ML)."""
    comp = plan.components[COMPONENT]
    ep = capture(comp)
    out = {}
    for target, precision in (("onnx", "fp32"), ("tflite", "fp32"), ("coreml", "fp16")):
        d = tmp_path_factory.mktemp(f"lowered_{target}")
        out[target] = get_backend(target).lower(comp, ep, d, LowerOptions(precision))
    return out


def fresh(lowered, target, tmp_path) -> LoweredModel:
    src = lowered[target]
    dst = tmp_path / src.path.name
    (shutil.copytree if src.path.is_dir() else shutil.copyfile)(src.path, dst)
    return LoweredModel(src.component, dst, src.precision, signature=src.signature)


def parity(target, lm: LoweredModel, comp, samples=2) -> float:
    runner = get_backend(target).load(lm.path, {"signature": lm.signature} if lm.signature else {})
    worst = math.inf
    for i in range(samples):
        args = comp.example_inputs(seed=i)
        with torch.no_grad():
            ref = comp.module(*args).numpy()
        out = runner({s.name: a.numpy() for s, a in zip(comp.inputs, args)})[comp.outputs[0].name]
        worst = min(worst, compare(ref, np.asarray(out, dtype=np.float32))["psnr"])
    return worst


def run_level(target, level, lowered, plan, tmp_path, context=None):
    comp = plan.components[COMPONENT]
    lm = compress(target, fresh(lowered, target, tmp_path), comp, level, context if context is not None else {})
    return lm, parity(target, lm, comp)


# -- levels: names -----------------------------------------------------------------------------


def test_parse_levels():
    assert parse_level("coreml", "palettize-6").bits == 6
    assert parse_level("coreml", "palettize-4-g16").group_size == 16
    assert parse_level("coreml", "mixed-bit:4.5").bits == 4.5
    assert parse_level("tflite", "int4-block32").block == 32
    mixed = parse_level("tflite", "mixed:fc=int8,conv=fp16")
    assert mixed.rules == (("fc", "int8"), ("conv", "fp16"))
    for target, bad in (("onnx", "palettize-4"), ("coreml", "int4-block32"), ("tflite", "fp8")):
        with pytest.raises(UnknownNameError):
            parse_level(target, bad)
    with pytest.raises(InputError):
        parse_level("coreml", "palettize-5")
    assert "mixed-bit:3.25" in LEVELS["coreml"] and "palettize-4" not in LEVELS["tflite"]


def test_floors_follow_compression():
    assert compression_family("palettize-4-g16") == "palettize-4"
    assert floor_for("unet", "fp16", {}, "palettize-4") < floor_for("unet", "fp16", {}, "int8") <= floor_for("unet", "fp16", {})
    assert floor_for("unet", "fp16", {"unet": 12.0}, "int8") == 12.0
    models = {"unet": {"compression": "palettize-2"}, "vae_decoder": {"compression": "none"}}
    assert end_to_end_floor(models, "fp16", {}) == floor_for("end_to_end", "fp16", {}, "palettize-2")


def test_cli_quantize_and_keep():
    from md_export.cli.app import _quantize_per_target

    q = _quantize_per_target(("coreml",), ["palettize-6"], ["vae_decoder=fp16"])
    assert q == {"coreml": "palettize-6", "coreml:vae_decoder": "fp16"}
    q = _quantize_per_target(("tflite",), ["mixed:fc=int8,conv=fp16", "unet=int8"], [])
    assert q == {"tflite": "mixed:fc=int8,conv=fp16", "tflite:unet": "int8"}
    with pytest.raises(InputError):
        _quantize_per_target(("coreml",), [], ["vae_decoder"])
    with pytest.raises(InputError):
        _quantize_per_target(("coreml",), ["decoder=int8"], [])


# -- algorithms ----------------------------------------------------------------------------------


def test_kmeans_1d_exact_and_improves_with_bits():
    from md_export.compress.coreml import kmeans_1d

    few = np.array([0.5, -1.0, 0.5, 2.0, -1.0], dtype=np.float16)
    lut, idx = kmeans_1d(few, 4)
    assert np.array_equal(lut[idx].astype(np.float16), few)
    w = np.random.default_rng(0).standard_normal(20000).astype(np.float16)
    errs = []
    for bits in (2, 4, 6):
        lut, idx = kmeans_1d(w, 1 << bits)
        assert idx.max() < (1 << bits)
        errs.append(float(np.mean((lut[idx] - w.astype(np.float64)) ** 2)))
    assert errs[0] > errs[1] > errs[2] and errs[1] < 0.02


def test_symmetric_int8_per_channel():
    from md_export.compress.tflite import symmetric_int8

    w = np.random.default_rng(1).standard_normal((8, 3, 3, 5)).astype(np.float32) * np.arange(1, 9)[:, None, None, None]
    q, scale = symmetric_int8(w, 0)
    assert q.dtype == np.int8 and scale.shape == (8,) and np.abs(q).max() == 127
    back = q.astype(np.float32) * scale[:, None, None, None]
    assert np.all(np.abs(back - w) <= scale[:, None, None, None] / 2 + 1e-6)


# -- per target ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target,level", [("onnx", "fp16"), ("onnx", "int8"), ("tflite", "fp16"), ("tflite", "int8"),
                                          ("coreml", "int8"), ("coreml", "palettize-6")])
def test_level_parity_and_size(target, level, lowered, plan, tmp_path):
    lm, psnr = run_level(target, level, lowered, plan, tmp_path)
    assert lm.compression == level
    floor = floor_for(COMPONENT, lm.precision, {}, level)
    assert psnr >= floor, f"{target} {level}: {psnr:.1f} dB < {floor}"
    size = lm.size
    assert size["ideal_bytes"] == int(size["parameters"] * size["bits"] / 8)
    if lowered[target].path.is_file():
        assert size["bytes"] < lowered[target].path.stat().st_size
    if target == "tflite":
        # TFLite adds a named tensor and a DEQUANTIZE op per weight; on a 160k-parameter model those
        # names alone are a few % of the weights (on SD-size models they are noise)
        assert size["bytes"] <= 1.08 * size["budget_bytes"], size
    else:
        assert size["within_budget"], size


def test_coreml_palettize_stores_luts_and_shrinks(lowered, plan, tmp_path):
    from md_export.compress.coreml import inventory
    from md_export.milrun import MilEvaluator  # noqa: F401  (parity above ran the same evaluator)

    lm, psnr = run_level("coreml", "palettize-4", lowered, plan, tmp_path)
    assert psnr >= floor_for(COMPONENT, "fp16", {}, "palettize-4")
    inv = inventory(lm.path)
    pal = [n for name, n, bits, _ in inv if bits == 4]
    assert sum(pal) > 0.9 * lm.size["parameters"]  # conv weights are 4-bit indices
    assert lm.size["bytes"] < 0.6 * sum(p.stat().st_size for p in lowered["coreml"].path.rglob("*") if p.is_file())


def test_tflite_large_tensor_path(monkeypatch, lowered, plan, tmp_path):
    """Tensors over AEQ's limit are left out of its recipe and quantized by md-export: lower the
    limit so the decoder's convs take that path, then check they are int8, named, and accurate."""
    from md_export.compress import tflite as T

    monkeypatch.setattr(T, "AEQ_LIMIT_BYTES", 4096)
    lm, psnr = run_level("tflite", "int8", lowered, plan, tmp_path)
    assert any("over 32 MiB" in n for n in lm.notes)
    model = T.read(lm.path)
    left = [w for w in T.weight_ops(model) if w.nbytes > 4096]
    assert not left  # no float weight over the limit remains
    assert psnr >= floor_for(COMPONENT, "fp32", {}, "int8")
    assert lm.size["bytes"] <= 1.08 * lm.size["budget_bytes"], lm.size  # no float copy left behind


def test_size_report_catches_float_left_behind(lowered, plan, tmp_path):
    """The size gate fails when a level leaves weights float without counting them as kept."""
    from md_export.compress import size_report

    lm = fresh(lowered, "onnx", tmp_path)
    params = sum(p.numel() for p in plan.components[COMPONENT].module.parameters())
    rep = size_report("onnx", lm.path, params, 8.0, lm.path.stat().st_size, 32.0)
    assert rep.kept_parameters > 0.9 * params and rep.kept_excess_bytes > 2.5 * params  # fp32 counted as kept
    # and an uncompressed file claimed as int8 with no kept tensors is over budget
    rep.kept_excess_bytes = 0
    assert rep.bytes > rep.budget_bytes


# -- sensitivity -----------------------------------------------------------------------------------


def test_sensitivity_and_mixed_bit_allocation(plan, tmp_path):
    from md_export import sensitivity as S

    comp = plan.components[COMPONENT]
    feeds = [{s.name: a.numpy() for s, a in zip(comp.inputs, comp.example_inputs(seed=0))}]
    scores = S.analyze(comp, feeds, "coreml", (8, 4, 2))
    assert scores and all(s.psnr[8] > s.psnr[2] for s in scores)
    data = S.recipe_json(COMPONENT, "coreml", scores, 4.5)
    assert data["mixed_bit"]["average_bits"] <= 4.5 + 1e-9
    assert set(data["mixed_bit"]["choice"].values()) <= {8, 4, 2}
    j, p = S.write(tmp_path / "sens", data)
    assert j.is_file() and p.stat().st_size > 1000
    from PIL import Image

    assert Image.open(p).size == (960, 480)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_w8a8_calibrated(target, lowered, plan, tmp_path):
    ckpt = Checkpoint.open(None)
    full = make_plan(ckpt)
    attach_modules(full, ckpt)
    lm, psnr = run_level(target, "w8a8", lowered, full, tmp_path, {"plan": full, "checkpoint": ckpt})
    assert psnr >= floor_for(COMPONENT, "fp32", {}, "w8a8")


def test_onnx_fp16_overflow_guard_keeps_hot_blocks_fp32(monkeypatch, lowered, plan, tmp_path):
    """Layers whose outputs would overflow fp16 keep their blocks fp32: lower the guard's limit
    so some decoder layers count as hot, and check they stay fp32 and parity holds."""
    import onnx

    from md_export.compress import onnx as O

    monkeypatch.setattr(O, "FP16_SAFE", 3.0)
    lm, psnr = run_level("onnx", "fp16", lowered, plan, tmp_path)
    assert any("overflow guard" in n for n in lm.notes)
    model = onnx.load(str(lm.path))
    kept_fp32 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    assert kept_fp32  # weights of the guarded blocks stay fp32
    assert psnr >= floor_for(COMPONENT, "fp16", {}, "fp16")


@pytest.mark.slow
def test_coreml_chunks_chain_to_the_whole(lowered, plan, tmp_path):
    """Split the decoder under a small limit (as --chunk-unet splits a UNet under 1 GB) and check
    the chained chunks against the whole in milrun."""
    from md_export.bundle import path_bytes
    from md_export.compress.chunk import check_chain, split

    whole = lowered["coreml"].path
    limit = int(path_bytes(whole) * 0.6)
    chunks = split(whole, tmp_path / "chunks", limit=limit, name="Chunk")
    assert len(chunks) >= 2 and all(path_bytes(c) <= limit for c in chunks)
    comp = plan.components[COMPONENT]
    feeds = [{s.name: a.numpy() for s, a in zip(comp.inputs, comp.example_inputs(seed=0))}]
    assert check_chain(whole, chunks, feeds, comp.outputs[0].name) > 80
