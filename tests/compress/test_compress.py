"""Compression levels on the tiny default model's VAE decoder (the smallest component): each level
runs on a saved artifact, the result runs in its own runtime against the fp32 torch reference,
and its size is checked against the ideal."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from md_export.export import lower_at
from md_export.lower.base import LoweredModel, LowerOptions
from md_export.runtime.open import open_file
from md_export.capture.torch_export import capture
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.compress.levels import LEVELS, parse_level
from md_export.compress.apply import compress
from md_export.core.errors import InputError, UnknownNameError
from md_export.core.metrics import compare
from md_export.verify.floors import compression_family, end_to_end_floor, floor_for

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
        out[target] = lower_at(target, comp, ep, d, LowerOptions(precision))
    return out


def fresh(lowered, target, tmp_path) -> LoweredModel:
    src = lowered[target]
    dst = tmp_path / src.path.name
    (shutil.copytree if src.path.is_dir() else shutil.copyfile)(src.path, dst)
    return LoweredModel(src.component, dst, src.precision, signature=src.signature)


def parity(target, lm: LoweredModel, comp, samples=2) -> float:
    runner = open_file(target, lm.path, {"signature": lm.signature} if lm.signature else {})
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
    from md_export.config.options import quantize_per_target as _quantize_per_target

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
    from md_export.compress.apply import size_report

    lm = fresh(lowered, "onnx", tmp_path)
    params = sum(p.numel() for p in plan.components[COMPONENT].module.parameters())
    rep = size_report("onnx", lm.path, params, 8.0, lm.path.stat().st_size, 32.0)
    assert rep.kept_parameters > 0.9 * params and rep.kept_excess_bytes > 2.5 * params  # fp32 counted as kept
    # and an uncompressed file claimed as int8 with no kept tensors is over budget
    rep.kept_excess_bytes = 0
    assert rep.bytes > rep.budget_bytes


# -- sensitivity -----------------------------------------------------------------------------------


def test_sensitivity_and_mixed_bit_allocation(plan, tmp_path):
    from md_export.compress import sensitivity as S

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
    from md_export.core.io import path_bytes
    from md_export.compress.chunk import check_chain, split

    whole = lowered["coreml"].path
    limit = int(path_bytes(whole) * 0.6)
    chunks = split(whole, tmp_path / "chunks", limit=limit, name="Chunk")
    assert len(chunks) >= 2 and all(path_bytes(c) <= limit for c in chunks)
    comp = plan.components[COMPONENT]
    feeds = [{s.name: a.numpy() for s, a in zip(comp.inputs, comp.example_inputs(seed=0))}]
    assert check_chain(whole, chunks, feeds, comp.outputs[0].name) > 80


# -- onnx w8a8: shared initializers ------------------------------------------------------------------


def _conv_pair_sharing_a_bias(path):
    """x -> Conv(W1, B) -> Reshape -> "B0" -> Conv(W2, B) -> y: the bias B is read by both convs
    and an activation is named B0, the name onnxruntime gives its own copy of B."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([1, 4, 8, 8], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "W1", "B"], ["t"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["B0"]),
             helper.make_node("Conv", ["B0", "W2", "B"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "shared_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_w8a8_copies_shared_initializers(tmp_path):
    """A bias shared by two convs, with an activation already named like onnxruntime's copy of it,
    quantizes (it raised "Quantization parameter shared mode is not supported for weight") into
    a graph where every tensor has one source, and computes what the float graph computes."""
    import onnx
    import onnxruntime as ort

    from md_export.compress.onnx import w8a8

    path = tmp_path / "g.onnx"
    _conv_pair_sharing_a_bias(path)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)} for _ in range(4)]
    test_x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(str(path)).run(None, {"x": test_x})[0]
    assert w8a8(path, feeds) == 1
    model = onnx.load(str(path))
    produced = [o for n in model.graph.node for o in n.output]
    sources = produced + [i.name for i in model.graph.initializer]
    assert len(sources) == len(set(sources)), "a tensor name with two sources"
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    out = ort.InferenceSession(str(path)).run(None, {"x": test_x})[0]
    assert compare(reference, out)["psnr"] >= floor_for("unet", "fp32", {}, "w8a8")


@pytest.mark.slow
def test_onnx_w8a8_tiny_sd15_unet(tmp_path):
    """The SD-1.5-topology UNet (tiny widths) through ONNX w8a8, at its parity floor."""
    from md_export.checkpoint.init import init_checkpoint

    ckpt = Checkpoint.open(init_checkpoint("sd15", tmp_path / "sd15", size="tiny", seed=0))
    sd15 = make_plan(ckpt)
    attach_modules(sd15, ckpt, only=("unet",))
    comp = sd15.components["unet"]
    lm = lower_at("onnx", comp, capture(comp), tmp_path, LowerOptions("fp32"))
    lm = compress("onnx", lm, comp, "w8a8", {})  # calibrated on seeded example inputs 0..3
    assert any("copies of float initializers" in n for n in lm.notes)
    runner = open_file("onnx", lm.path, {})
    worst = math.inf
    for seed in (10, 11):
        args = comp.example_inputs(seed=seed)
        with torch.no_grad():
            ref = comp.module(*args).numpy()
        out = runner({s.name: a.numpy() for s, a in zip(comp.inputs, args)})[comp.outputs[0].name]
        worst = min(worst, compare(ref, np.asarray(out, dtype=np.float32))["psnr"])
    assert worst >= floor_for("unet", "fp32", {}, "w8a8"), worst


# -- quiet: third-party output -----------------------------------------------------------------------


def test_third_party_output_muted_holds_back_and_replays_on_failure(capfd):
    import os
    import sys

    from md_export.core.progress import third_party_output_muted

    with third_party_output_muted():
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"native fd 1\n")
        os.write(2, b"native fd 2\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError):
        with third_party_output_muted():
            os.write(2, b"native context\n")
            raise RuntimeError("failed")
    assert "native context" in capfd.readouterr().err


def test_tflite_quantizer_prints_nothing(lowered, plan, tmp_path, capfd):
    """ai-edge-quantizer draws tqdm bars for models over 100 ops (the decoder has more)."""
    capfd.readouterr()
    lm = compress("tflite", fresh(lowered, "tflite", tmp_path), plan.components[COMPONENT], "int8", {})
    assert lm.compression == "int8"
    assert capfd.readouterr() == ("", "")


@pytest.mark.slow
def test_tflite_int8_quiet_cli_is_silent(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "TF_CPP_MIN_LOG_LEVEL", "MD_EXPORT_DEBUG")}
    entry = "from md_export.cli.app import entry; entry()"  # what the md-export script runs
    run = subprocess.run([sys.executable, "-c", entry, "tflite", "--quantize", "int8", "-q", "--no-check",
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "tflite" / "unet.tflite").is_file()
    assert (run.stdout, run.stderr) == ("", "")


def test_onnx_w8a8_over_2gb_is_refused_with_a_reason(tmp_path):
    """A model the exporter had to write with external data (> 2 GB) is refused by name, before
    any calibration work, rather than failing inside protobuf."""
    from md_export.lower.base import LoweredModel
    from md_export.compress.apply import compress
    from md_export.components.plan import ComponentPlan
    from md_export.core.errors import ConversionError

    lowered = LoweredModel("unet", tmp_path / "unet.onnx", "fp32", notes=["external data"])
    with pytest.raises(ConversionError, match="w8a8 of 'unet'.*2 GB"):
        compress("onnx", lowered, ComponentPlan("unet", [], []), "w8a8", {})


def test_coreml_w8a8_text_encoder(default_export, tmp_path):
    """Core ML W8A8 on the text encoder, whose program holds integer ops (token-id wrapping before
    the embedding gather) that have no activation range: they are left alone, the rest quantized."""
    import shutil

    from md_export.lower.base import LoweredModel
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import attach_modules, make_plan
    from md_export.compress.apply import compress
    from md_export.config.options import ExportOptions
    from md_export.milrun import MilEvaluator
    from md_export.core.metrics import compare
    from md_export.verify.floors import floor_for

    path = tmp_path / "text_encoder.mlpackage"
    shutil.copytree(default_export["coreml"].bundle / "text_encoder.mlpackage", path)
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt)
    comp = plan.components["text_encoder"]
    out = compress("coreml", LoweredModel("text_encoder", path, "fp16"), comp, "w8a8",
                   {"plan": plan, "checkpoint": ckpt, "options": ExportOptions()})
    assert out.compression == "w8a8"
    ids = comp.example_inputs(3)[0]
    ref = comp.module(ids).detach().numpy()
    got = MilEvaluator(out.path).predict({"input_ids": ids.numpy()})["last_hidden_state"]
    assert compare(ref, got)["psnr"] >= floor_for("text_encoder", "fp16", {}, "w8a8")
