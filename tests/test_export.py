"""Every format exports, loads in its own runtime, names/shapes/dtypes equal the manifest,
and outputs match PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from md_export.export import lower_at
from md_export.runtime.open import open_file
from md_export.core.io import path_sha256
from md_export.core.manifest import read_manifest
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan

TARGETS = ("coreml", "tflite", "onnx")
MODELS = ("text_encoder", "unet", "vae_decoder")


@pytest.fixture(scope="module")
def reference():
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt)
    return plan


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_layout(default_export, target):
    bundle = default_export[target].bundle
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] == 1 and manifest["target"] == target
    assert set(manifest["models"]) == set(MODELS)
    for f in ("tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler.json", "manifest.json"):
        assert (bundle / f).is_file(), f
    for name, entry in manifest["models"].items():
        path = bundle / entry["file"]
        assert entry["sha256"] == path_sha256(path)
        assert entry["bytes"] > 0 and entry["parameters"] > 0
    pipe = manifest["pipeline"]
    assert (pipe["latent_height"], pipe["image_height"], pipe["guidance"]) == (16, 128, "cfg-batch2")
    assert not any(p.name.startswith(".") for p in bundle.parent.iterdir()), "temporary folders left behind"


def _runtime_io(target, path):
    """(name, shape, dtype) of inputs and outputs as the runtime itself reports them."""
    if target == "onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        t = {"tensor(float)": "float32", "tensor(int32)": "int32"}
        return ([(i.name, list(i.shape), t[i.type]) for i in s.get_inputs()],
                [(o.name, list(o.shape), t[o.type]) for o in s.get_outputs()])
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        (sig,) = it.get_signature_list()
        r = it.get_signature_runner(sig)
        io = lambda d: sorted((k, list(v["shape"]), np.dtype(v["dtype"]).name) for k, v in d.items())
        return io(r.get_input_details()), io(r.get_output_details())
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    dt = {ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32: "float32", ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32: "int32",
          ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16: "float16"}
    io = lambda feats: [(f.name, list(f.type.multiArrayType.shape), dt[f.type.multiArrayType.dataType]) for f in feats]
    return io(spec.description.input), io(spec.description.output)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", MODELS)
def test_runtime_io_matches_manifest(default_export, target, model):
    bundle = default_export[target].bundle
    entry = read_manifest(bundle)["models"][model]
    ins, outs = _runtime_io(target, bundle / entry["file"])
    want_in = [(s["name"], s["shape"], s["dtype"]) for s in entry["inputs"]]
    want_out = [(s["name"], s["shape"], s["dtype"]) for s in entry["outputs"]]
    assert sorted(ins) == sorted(want_in)
    assert sorted(outs) == sorted(want_out)


@pytest.mark.parametrize("target", ["tflite", "onnx", "coreml"])
@pytest.mark.parametrize("model", MODELS)
def test_outputs_match_pytorch(default_export, reference, target, model):
    bundle = default_export[target].bundle
    entry = read_manifest(bundle)["models"][model]
    run = open_file(target, bundle / entry["file"], entry)
    comp = reference.components[model]
    args = comp.example_inputs(seed=3)
    with torch.no_grad():
        ref = comp.module(*args).numpy()
    out = run({s.name: a.numpy() for s, a in zip(comp.inputs, args)})[comp.outputs[0].name]
    assert out.shape == ref.shape
    if target == "coreml":  # fp16 compute: judged by PSNR, as md-export check does
        from md_export.core.metrics import psnr

        assert psnr(ref, out) >= 40.0
    else:
        assert np.abs(out - ref).max() <= 1e-4


def test_manifest_is_strict_json(default_export):
    text = (default_export["onnx"].bundle / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.parametrize("fp32_ops, expected", [((), np.float16), (("softmax",), np.float32)])
def test_coreml_keeps_requested_ops_in_fp32(reference, tmp_path, fp32_ops, expected):
    """The softmax-fp32 rewrite's hint reaches coremltools: softmax computes in fp32 inside fp16."""
    from md_export.lower.base import LowerOptions
    from md_export.capture.torch_export import capture
    from md_export.milrun import MilEvaluator

    comp = reference.components["text_encoder"]
    lowered = lower_at("coreml", comp, capture(comp), tmp_path, LowerOptions("fp16", extra={"fp32_ops": fp32_ops}))
    ev = MilEvaluator(lowered.path)
    softmax = [s for s in ev._steps if s.op_type == "softmax"]
    assert softmax and all(np.dtype(d) == expected for s in softmax for d in s.dtypes)
