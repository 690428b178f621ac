"""The torch-backed milrun kernels compute what the numpy reference kernels compute: each op on
shapes that take the torch path (and on ones that fall back), the whole default-model UNet and
VAE decoder through both tables, and the switch that selects them."""

from __future__ import annotations

import numpy as np
import pytest

from md_export.core.errors import InputError
from md_export.milrun import KERNELS, MilEvaluator
from md_export.milrun.evaluator import KERNELS_ENV, kernel_table
from md_export.milrun.kernels import OpArgs
from md_export.milrun.torch_kernels import FAST

RNG = np.random.default_rng(1)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def both(op_type, out=np.float32, **inputs):
    """(torch result, numpy result) of one op on the same inputs, each cast to the declared output
    dtype as the evaluator does (the torch kernels return it already)."""
    def call(table):
        args = OpArgs(op_type, f"{op_type}_test", dict(inputs), [np.dtype(out)], [None])
        return np.asarray(table[op_type](args))

    fast, ref = call(FAST), call(KERNELS)
    return fast, ref.astype(fast.dtype)


def close(fast, ref, tol=2e-5):
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    if fast.dtype == np.float16:  # both rounded from fp32 results that differ in the last fp32 bits
        tol = max(tol, 1e-3)
    scale = max(float(np.max(np.abs(ref))), 1.0)
    err = float(np.max(np.abs(fast.astype(np.float64) - ref))) / scale
    assert err <= tol, err


@pytest.mark.parametrize(
    "shape,w_shape,kw",
    [
        ((2, 8, 17, 13), (16, 8, 3, 3), dict(pad_type="custom", pad=[1, 1, 1, 1])),
        ((1, 8, 16, 16), (8, 8, 3, 3), dict(pad_type="custom", pad=[0, 2, 1, 0], strides=[2, 2])),  # asymmetric
        ((1, 6, 12, 12), (6, 3, 3, 3), dict(pad_type="same", groups=2, dilations=[2, 2])),
        ((1, 8, 12, 12), (8, 1, 3, 3), dict(pad_type="valid", groups=8)),  # depthwise
        ((1, 4, 10, 10), (4, 4, 3, 3), dict(pad_type="custom", pad=[-1, 0, 0, -1])),  # negative pads crop
        ((2, 4, 33), (5, 4, 5), dict(pad_type="same_lower", strides=[3])),  # 1-d
        ((1, 2, 6, 6, 6), (3, 2, 3, 3, 3), dict(pad_type="same")),  # 3-d
    ],
)
def test_conv_matches_numpy(shape, w_shape, kw):
    fast, ref = both("conv", x=rand(*shape), weight=rand(*w_shape), bias=rand(w_shape[0]), **kw)
    close(fast, ref)


@pytest.mark.parametrize("strides,pad_type,groups", [([2, 2], "valid", 1), ([2, 2], "same", 2), ([3, 1], "custom", 1)])
def test_conv_transpose_matches_numpy(strides, pad_type, groups):
    fast, ref = both("conv_transpose", x=rand(1, 4, 7, 6), weight=rand(4, 3, 3, 3), bias=rand(3 * groups),
                     strides=strides, pad_type=pad_type, pad=[1, 0, 0, 1], groups=groups)
    close(fast, ref)


@pytest.mark.parametrize("tx,ty", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_numpy(tx, ty):
    x = rand(2, 3, 40, 24) if not tx else rand(2, 3, 24, 40)
    y = rand(1, 3, 24, 56) if not ty else rand(1, 3, 56, 24)  # broadcast batch
    close(*both("matmul", x=x, y=y, transpose_x=tx, transpose_y=ty))


def test_linear_matches_numpy_with_and_without_bias():
    close(*both("linear", x=rand(2, 77, 64), weight=rand(96, 64), bias=rand(96)))
    close(*both("linear", x=rand(5, 64), weight=rand(96, 64)))


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_matches_numpy(mask):
    q, k, v = rand(2, 4, 30, 16), rand(2, 4, 21, 16), rand(2, 4, 21, 16)
    extra = {}
    if mask == "bool":
        m = RNG.random((30, 21)) > 0.3
        m[:, 0] = True  # every query attends to something
        extra["attn_mask"] = m
    elif mask == "float":
        extra["attn_mask"] = rand(30, 21)
    close(*both("scaled_dot_product_attention", query=q, key=k, value=v, **extra))


@pytest.mark.parametrize("op", ["silu", "sigmoid", "square", "sqrt", "exp", "tanh"])
def test_unary_matches_numpy_above_and_below_the_size_cut(op):
    for shape in [(2, 64, 32, 32), (3, 5)]:
        x = np.abs(rand(*shape)) if op == "sqrt" else rand(*shape, scale=4.0)
        close(*both(op, x=x))


@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
def test_gelu_matches_numpy(mode):
    close(*both("gelu", x=rand(2, 64, 1024, scale=3.0), mode=mode))


def test_softmax_matches_numpy_on_any_axis():
    x = rand(2, 8, 64, 96, scale=5.0)
    for axis in (-1, 1, 2):
        close(*both("softmax", x=x, axis=axis))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "real_div"])
def test_binary_broadcasts_like_numpy(op):
    x = rand(2, 320, 16, 16)
    for y in (rand(1, 320, 1, 1), rand(16), np.float32(3.0), rand(2, 320, 16, 16)):
        if op == "real_div":
            y = np.abs(y) + np.float32(0.5)
        close(*both(op, x=x, y=y))
    # mixed dtypes take numpy's promotion
    fast, ref = both(op, x=x, y=np.arange(16, dtype=np.int32) + 1)
    assert fast.dtype == ref.dtype
    close(fast, ref)


def test_layer_norm_matches_numpy_on_trailing_and_other_axes():
    x = rand(2, 77, 64)
    close(*both("layer_norm", x=x, axes=[-1], gamma=rand(64), beta=rand(64), epsilon=1e-5))
    close(*both("layer_norm", x=x, axes=[1, 2], epsilon=1e-6))
    close(*both("layer_norm", x=rand(2, 32, 16, 16), axes=[1], gamma=rand(32), epsilon=1e-5))  # fallback


def test_reduce_mean_matches_numpy():
    x = rand(2, 32, 40, 40)
    for kw in (dict(axes=[2, 3], keep_dims=True), dict(axes=[1], keep_dims=False), dict(), dict(axes=[-1, 1])):
        close(*both("reduce_mean", x=x, **kw))


def test_kernel_table_switch(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert kernel_table()["conv"] is FAST["conv"]
    assert kernel_table("numpy")["conv"] is KERNELS["conv"]
    monkeypatch.setenv(KERNELS_ENV, "numpy")
    assert kernel_table()["conv"] is KERNELS["conv"]
    monkeypatch.setenv(KERNELS_ENV, "cuda")
    with pytest.raises(InputError, match=KERNELS_ENV):
        kernel_table()


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_default_model_agrees_through_both_tables(default_export, component):
    """The whole saved fp16 program: the two tables round the same fp32 results to fp16, so a
    difference is at most a few fp16 ulps that the following ops carry on."""
    pkg = default_export["coreml"].bundle / f"{component}.mlpackage"
    fast, ref = MilEvaluator(pkg, kernels="torch"), MilEvaluator(pkg, kernels="numpy")
    feeds = {n: (rand(*s) if fast.input_dtypes[n].kind == "f" else np.zeros(s, fast.input_dtypes[n]))
             for n, s in fast.input_shapes.items()}
    if "timestep" in feeds:
        feeds["timestep"] = np.full(feeds["timestep"].shape, 500.0, np.float32)
    a, b = fast.predict(feeds), ref.predict(feeds)
    for name in fast.output_names:
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        psnr = 10 * np.log10(np.max(np.abs(y)) ** 2 / max(np.mean((x - y) ** 2), 1e-30))
        assert psnr > 50, (name, psnr)


@pytest.mark.parametrize("eq,shapes", [("bchq,bkhc->bkhq", [(2, 16, 1, 30), (2, 21, 1, 16)]),
                                       ("bkhq,bchk->bchq", [(2, 21, 1, 30), (2, 16, 1, 21)]),
                                       ("nchw,nchw->nhw", [(1, 8, 5, 5), (1, 8, 5, 5)])])
def test_einsum_matches_numpy(eq, shapes):
    close(*both("einsum", equation=eq, values=[rand(*s) for s in shapes]))


@pytest.mark.parametrize("op,inputs", [
    ("conv", lambda: dict(x=rand(1, 8, 12, 12), weight=rand(16, 8, 3, 3), pad_type="same")),
    ("linear", lambda: dict(x=rand(2, 77, 64), weight=rand(96, 64), bias=rand(96))),
    ("softmax", lambda: dict(x=rand(2, 8, 64, 96, scale=5.0), axis=-1)),
    ("mul", lambda: dict(x=rand(2, 8, 64, 96), y=rand(1, 8, 1, 96))),
    ("silu", lambda: dict(x=rand(2, 64, 32, 32))),
    ("einsum", lambda: dict(equation="bchq,bkhc->bkhq", values=[rand(2, 16, 1, 30), rand(2, 21, 1, 16)])),
])
def test_float16_programs_get_float16_results_rounded_like_numpy(op, inputs):
    """fp16 inputs (an fp16 program's activations and weights) widen exactly, and the fp16 result
    rounds like numpy's astype: equal but for values whose fp32 results straddle a rounding tie."""
    args = {k: (v.astype(np.float16) if isinstance(v, np.ndarray) else
                [x.astype(np.float16) for x in v] if isinstance(v, list) else v) for k, v in inputs().items()}
    fast, ref = both(op, out=np.float16, **args)
    assert fast.dtype == np.float16
    close(fast, ref)
    assert np.mean(fast == ref) > 0.99
