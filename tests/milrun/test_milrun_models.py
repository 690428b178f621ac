"""Tiny SD components converted to Core ML (torch.export path), saved, reloaded with milrun's
MilEvaluator and compared with PyTorch; compressed variants checked against coremltools' own
decompression. Each package is converted once per module."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from milrun_helpers import TextWrap, UNetWrap, VaeDecodeWrap, VaeEncodeWrap, convert, export, psnr, rel_max_err

from md_export.milrun import MilEvaluator, op_histogram

FP32_MAX_REL_ERR = 1e-4
FP16_MIN_PSNR = 50.0


@pytest.fixture(scope="module")
def components():
    from md_export.families.tiny import tiny_sd_components

    unet, text_encoder, vae, _ = tiny_sd_components(seed=0)
    g = torch.Generator().manual_seed(1)
    return {
        "unet": (
            UNetWrap(unet),
            (torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0]), torch.randn(1, 77, 32, generator=g)),
            ["sample", "timestep", "encoder_hidden_states"],
            ["noise_pred"],
        ),
        "text_encoder": (
            TextWrap(text_encoder),
            (torch.randint(0, 49408, (1, 77), generator=g, dtype=torch.int32),),
            ["input_ids"],
            ["last_hidden_state"],
        ),
        "vae_decoder": (VaeDecodeWrap(vae), (torch.randn(1, 4, 16, 16, generator=g),), ["z"], ["image"]),
        "vae_encoder": (VaeEncodeWrap(vae), (torch.rand(1, 3, 128, 128, generator=g) * 2 - 1,), ["image"], ["latent"]),
    }


# (component, compute precision, deployment target): every component in both precisions, and
# the three targets spread over them (iOS18 turns attention into scaled_dot_product_attention).
CASES = [
    ("unet", "fp32", "iOS17"),
    ("unet", "fp16", "iOS18"),
    ("text_encoder", "fp32", "iOS16"),
    ("text_encoder", "fp16", "iOS17"),
    ("vae_decoder", "fp32", "iOS16"),
    ("vae_decoder", "fp16", "iOS18"),
    ("vae_encoder", "fp32", "iOS18"),
    ("vae_encoder", "fp16", "iOS17"),
]


@pytest.fixture(scope="module")
def packages(components, tmp_path_factory):
    """Converted lazily, once per (component, precision, target)."""
    root = tmp_path_factory.mktemp("mlpackages")
    cache, exported = {}, {}

    def get(component, precision, target):
        key = (component, precision, target)
        if key not in cache:
            module, args, names, outs = components[component]
            if component not in exported:
                with torch.no_grad():
                    ref = module(*args).numpy()
                exported[component] = (export(module, args), ref)
            ep, ref = exported[component]
            path = convert(module, args, names, root, "_".join(key), precision=precision, target=target,
                           output_names=outs, ep=ep)
            cache[key] = (path, {n: a.numpy() for n, a in zip(names, args)}, ref)
        return cache[key]

    return get


@pytest.mark.parametrize("component,precision,target", CASES)
def test_component_parity(packages, component, precision, target):
    path, inputs, ref = packages(component, precision, target)
    ev = MilEvaluator(path)
    assert ev.input_names == list(inputs)
    t0 = time.perf_counter()
    out = ev.predict(inputs)
    elapsed = time.perf_counter() - t0
    assert list(out) == ev.output_names and len(out) == 1
    y = out[ev.output_names[0]]
    assert y.shape == ref.shape
    assert y.dtype == ev.output_dtypes[ev.output_names[0]]
    hist = op_histogram(path)
    assert sum(hist.values()) == len(ev.ops)
    if precision == "fp32":
        assert y.dtype == np.float32
        assert "cast" not in hist or component == "text_encoder"
        err = rel_max_err(ref, y)
        assert err <= FP32_MAX_REL_ERR, err
    else:
        # the evaluator ran fp16 activations: the result must not be bit-identical to fp32 math
        p = psnr(ref, y)
        assert FP16_MIN_PSNR <= p < 120, p
    if component == "unet" and target == "iOS18":
        assert hist["scaled_dot_product_attention"] == 8 and "softmax" not in hist
    if component == "text_encoder":
        assert ev.input_dtypes["input_ids"] == np.int32
    assert elapsed < 10.0, elapsed


def test_fp16_program_differs_from_fp32_program(packages):
    """Same UNet, fp16 vs fp32 compute: the fp16 evaluation carries fp16 rounding error, the fp32
    one does not (catches an evaluator that silently computes everything in fp32)."""
    p32, inputs, ref = packages("unet", "fp32", "iOS17")
    p16, _, _ = packages("unet", "fp16", "iOS18")
    y32 = MilEvaluator(p32).predict(inputs)["noise_pred"]
    y16 = MilEvaluator(p16).predict(inputs)["noise_pred"]
    assert psnr(ref, y32) > 100 > psnr(ref, y16)


# ---------------------------------------------------------------------------------------------
# compressed weights (coremltools.optimize.coreml), on the fp16 packages converted above: the
# VAE encoder (iOS17 target: iOS16-style constexpr ops) and the VAE decoder (iOS18 ops)


def _compress(kind, model):
    import coremltools.optimize.coreml as cto

    OC = cto.OptimizationConfig
    if kind == "int8_per_channel":
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0)
        return cto.linear_quantize_weights(model, OC(global_config=cfg))
    if kind == "int4_per_block":
        cfg = cto.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block", block_size=8, weight_threshold=0)
        return cto.linear_quantize_weights(model, OC(global_config=cfg))
    if kind.startswith("palettize"):
        nbits = int(kind.split("_")[1][:-3])
        kw = dict(granularity="per_grouped_channel", group_size=8) if kind.endswith("grouped") else dict(granularity="per_tensor")
        cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=0, **kw)
        return cto.palettize_weights(model, OC(global_config=cfg))
    if kind == "prune_50":
        cfg = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0)
        return cto.prune_weights(model, OC(global_config=cfg))
    if kind == "prune_palettize":
        pruned = _compress("prune_50", model)
        cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor", weight_threshold=0)
        return cto.palettize_weights(pruned, OC(global_config=cfg), joint_compression=True)
    if kind == "prune_int8":
        pruned = _compress("prune_50", model)
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0)
        return cto.linear_quantize_weights(pruned, OC(global_config=cfg), joint_compression=True)
    raise ValueError(kind)


# kind, target, the constexpr op expected, minimum PSNR vs the fp32 PyTorch model
COMPRESSION = [
    ("int8_per_channel", "iOS17", "constexpr_affine_dequantize", 40),
    ("palettize_4bit", "iOS17", "constexpr_lut_to_dense", 18),
    ("palettize_6bit", "iOS17", "constexpr_lut_to_dense", 28),
    ("palettize_8bit", "iOS17", "constexpr_lut_to_dense", 40),
    ("prune_50", "iOS17", "constexpr_sparse_to_dense", 3),
    ("int4_per_block", "iOS18", "constexpr_blockwise_shift_scale", 18),
    ("palettize_4bit_grouped", "iOS18", "constexpr_lut_to_dense", 18),
    ("prune_palettize", "iOS18", "constexpr_lut_to_sparse", 3),
    ("prune_int8", "iOS18", "constexpr_sparse_blockwise_shift_scale", 3),
]
COMPRESSION_BASE = {"iOS17": ("vae_encoder", "fp16", "iOS17"), "iOS18": ("vae_decoder", "fp16", "iOS18")}


@pytest.fixture(scope="module")
def compressed(packages, tmp_path_factory):
    import coremltools as ct

    root = tmp_path_factory.mktemp("compressed")
    base_out = {}

    def get(kind, target):
        base, inputs, ref = packages(*COMPRESSION_BASE[target])
        if target not in base_out:
            base_out[target] = next(iter(MilEvaluator(base).predict(inputs).values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _compress(kind, ct.models.MLModel(str(base), skip_model_load=True))
        path = root / f"{kind}_{target}.mlpackage"
        model.save(str(path))
        return path, base_out[target], inputs, ref

    return get


def _coremltools_decompressed(path):
    """{var name: dense weight} for every constexpr output that feeds a non-constexpr op,
    decompressed by coremltools' own op implementations."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(str(path))
    prog = milproto_load(spec, spec.specificationVersion, str(path / "Data" / "com.apple.CoreML" / "weights"))
    dense = {}
    for op in prog.functions["main"].operations:
        if not op.op_type.startswith("constexpr_"):
            continue
        out = op.outputs[-1]
        if any(not c.op_type.startswith("constexpr_") for c in out.child_ops):
            val = op.materialized_val_inference()
            dense[out.name] = val[-1] if isinstance(val, tuple) else val
    return dense


@pytest.mark.parametrize("kind,target,constexpr_op,min_psnr", COMPRESSION)
def test_compressed_weights(compressed, kind, target, constexpr_op, min_psnr):
    path, base_y, inputs, ref = compressed(kind, target)
    hist = op_histogram(path)
    assert hist[constexpr_op] > 0, dict(hist)
    ev = MilEvaluator(path)
    # our materialised weights == coremltools' decompression, bit for bit
    expected = _coremltools_decompressed(path)
    assert len(expected) >= hist[constexpr_op]
    for name, val in expected.items():
        ours = ev.constant(name)
        assert ours.dtype == val.dtype and ours.shape == val.shape, name
        assert np.array_equal(ours, val), name
    y = next(iter(ev.predict(inputs).values()))
    p = psnr(ref, y)
    assert p >= min_psnr, p
    # compression changed the numbers: the uncompressed package scores higher
    assert psnr(ref, base_y) > p
