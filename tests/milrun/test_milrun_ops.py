"""milrun op kernels against torch / numpy, fp32 and fp16; constexpr decompression against
coremltools' own; saved one-op MIL programs for dtype handling; error paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from md_export.core.errors import InputError, UnsupportedOpError
from md_export.milrun import KERNELS, MilEvaluator, op_histogram, run_mlpackage
from md_export.milrun import constexpr as cx
from md_export.milrun.kernels import OpArgs

RNG = np.random.default_rng(0)
PRECISIONS = ["fp32", "fp16"]


def run(op_type, out_dtype=np.float32, n_out=1, **inputs):
    """Call a kernel directly, then cast like the evaluator does (declared output dtype)."""
    args = OpArgs(op_type, f"{op_type}_test", inputs, [np.dtype(out_dtype)] * n_out, [None] * n_out)
    res = KERNELS[op_type](args)
    if isinstance(res, tuple):
        return tuple(np.asarray(r) for r in res)
    return np.asarray(res).astype(out_dtype)


def rand(*shape, prec="fp32", scale=1.0):
    x = (RNG.standard_normal(shape) * scale).astype(np.float32)
    return x.astype(np.float16) if prec == "fp16" else x


def t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def dt(prec):
    return np.float16 if prec == "fp16" else np.float32


def check(out, ref, prec, tol32=1e-5, tol16=2e-3):
    """fp32: max abs err <= tol32 * scale; fp16: result is fp16 and within fp16 rounding."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(np.max(np.abs(ref)), 1.0)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == dt(prec)
    err = np.max(np.abs(out.astype(np.float64) - ref)) / scale
    assert err <= (tol16 if prec == "fp16" else tol32), err


# ---------------------------------------------------------------------------------------------
# convolution and pooling


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,dil,groups",
    [
        (4, 8, 3, 1, 1, 1, 1),
        (4, 8, 3, 2, 1, 1, 1),
        (4, 6, 3, 1, 2, 2, 2),
        (8, 8, 3, 1, 1, 1, 8),  # depthwise
        (8, 16, 1, 1, 0, 1, 1),
        (3, 4, (3, 5), (2, 1), (0, 2), 1, 1),
    ],
)
def test_conv2d(prec, cin, cout, k, stride, pad, dil, groups):
    k2 = k if isinstance(k, tuple) else (k, k)
    s2 = stride if isinstance(stride, tuple) else (stride, stride)
    p2 = pad if isinstance(pad, tuple) else (pad, pad)
    x = rand(2, cin, 9, 11, prec=prec)
    w = rand(cout, cin // groups, *k2, prec=prec, scale=0.3)
    b = rand(cout, prec=prec)
    out = run("conv", dt(prec), x=x, weight=w, bias=b, strides=np.array(s2), pad_type="custom",
              pad=np.array([p2[0], p2[0], p2[1], p2[1]]), dilations=np.array([dil, dil]), groups=groups)
    ref = F.conv2d(t(x), t(w), t(b), stride=s2, padding=p2, dilation=dil, groups=groups).numpy()
    check(out, ref, prec)


def test_conv_same_padding_and_1d():
    x = rand(1, 3, 10)
    w = rand(5, 3, 4)
    out = run("conv", x=x, weight=w, pad_type="same", strides=np.array([1]))
    ref = F.conv1d(t(x), t(w), padding="same").numpy()
    # torch puts the odd padding element at the end, as MIL's "same" does
    check(out, ref, "fp32")
    x2 = rand(1, 2, 7, 7)
    w2 = rand(3, 2, 3, 3)
    out2 = run("conv", x=x2, weight=w2, pad_type="same", strides=np.array([2, 2]))
    assert out2.shape == (1, 3, 4, 4)
    ref2 = F.conv2d(t(x2), t(w2), stride=2, padding=1).numpy()
    check(out2, ref2, "fp32")


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("stride,pad,out_pad,groups", [(2, 1, 1, 1), (1, 0, 0, 1), (2, 0, 0, 2), (3, 1, 2, 1)])
def test_conv_transpose2d(prec, stride, pad, out_pad, groups):
    x = rand(1, 4, 5, 6, prec=prec)
    w = rand(4, 6 // groups, 3, 3, prec=prec, scale=0.3)
    b = rand(6, prec=prec)
    ref = F.conv_transpose2d(t(x), t(w), t(b), stride=stride, padding=pad, output_padding=out_pad, groups=groups).numpy()
    out = run("conv_transpose", dt(prec), x=x, weight=w, bias=b, strides=np.array([stride] * 2), pad_type="custom",
              pad=np.array([pad] * 4), groups=groups, output_shape=np.array(ref.shape))
    check(out, ref, prec)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_pools(prec):
    x = rand(1, 3, 8, 9, prec=prec)
    common = dict(kernel_sizes=np.array([3, 3]), strides=np.array([2, 2]), pad_type="custom", pad=np.array([1, 1, 1, 1]))
    check(run("max_pool", dt(prec), x=x, **common), F.max_pool2d(t(x), 3, 2, 1).numpy(), prec)
    out = run("avg_pool", dt(prec), x=x, exclude_padding_from_average=True, **common)
    check(out, F.avg_pool2d(t(x), 3, 2, 1, count_include_pad=False).numpy(), prec)
    out = run("avg_pool", dt(prec), x=x, exclude_padding_from_average=False, **common)
    check(out, F.avg_pool2d(t(x), 3, 2, 1, count_include_pad=True).numpy(), prec)


# ---------------------------------------------------------------------------------------------
# linear algebra, attention


@pytest.mark.parametrize("prec", PRECISIONS)
def test_linear_matmul(prec):
    x, w, b = rand(2, 5, 8, prec=prec), rand(6, 8, prec=prec), rand(6, prec=prec)
    check(run("linear", dt(prec), x=x, weight=w, bias=b), F.linear(t(x), t(w), t(b)).numpy(), prec)
    check(run("linear", dt(prec), x=x, weight=w), F.linear(t(x), t(w)).numpy(), prec)
    a, c = rand(2, 3, 4, 5, prec=prec), rand(2, 3, 6, 5, prec=prec)
    out = run("matmul", dt(prec), x=a, y=c, transpose_x=False, transpose_y=True)
    check(out, (t(a) @ t(c).transpose(-1, -2)).numpy(), prec)
    e = rand(2, 3, 6, 4, prec=prec)
    out = run("matmul", dt(prec), x=c, y=e, transpose_x=True, transpose_y=False)
    check(out, (t(c).transpose(-1, -2) @ t(e)).numpy(), prec)
    out = run("einsum", dt(prec), values=[a, c], equation="bhqd,bhkd->bhqk")
    check(out, torch.einsum("bhqd,bhkd->bhqk", t(a), t(c)).numpy(), prec)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_scaled_dot_product_attention(prec):
    q, k, v = rand(1, 2, 5, 8, prec=prec), rand(1, 2, 7, 8, prec=prec), rand(1, 2, 7, 8, prec=prec)
    check(run("scaled_dot_product_attention", dt(prec), query=q, key=k, value=v),
          F.scaled_dot_product_attention(t(q), t(k), t(v)).numpy(), prec)
    mask = RNG.random((5, 7)) > 0.3
    mask[:, 0] = True
    out = run("scaled_dot_product_attention", dt(prec), query=q, key=k, value=v, attn_mask=mask)
    check(out, F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=torch.from_numpy(mask)).numpy(), prec)
    fmask = rand(5, 7, prec=prec)
    out = run("scaled_dot_product_attention", dt(prec), query=q, key=k, value=v, attn_mask=fmask)
    check(out, F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(fmask)).numpy(), prec)


# ---------------------------------------------------------------------------------------------
# normalization


@pytest.mark.parametrize("prec", PRECISIONS)
def test_norms(prec):
    x = rand(2, 4, 5, 6, prec=prec, scale=3.0)
    g, b = rand(6, prec=prec), rand(6, prec=prec)
    out = run("layer_norm", dt(prec), x=x, axes=np.array([-1]), gamma=g, beta=b, epsilon=np.float32(1e-5))
    check(out, F.layer_norm(t(x), (6,), t(g), t(b), 1e-5).numpy(), prec)
    g2, b2 = rand(5, 6, prec=prec), rand(5, 6, prec=prec)
    out = run("layer_norm", dt(prec), x=x, axes=np.array([2, 3]), gamma=g2, beta=b2, epsilon=np.float32(1e-5))
    check(out, F.layer_norm(t(x), (5, 6), t(g2), t(b2), 1e-5).numpy(), prec)
    gc, bc = rand(4, prec=prec), rand(4, prec=prec)
    out = run("instance_norm", dt(prec), x=x, gamma=gc, beta=bc, epsilon=np.float32(1e-5))
    check(out, F.instance_norm(t(x), weight=t(gc), bias=t(bc), eps=1e-5).numpy(), prec)
    mean, var = rand(4, prec=prec), np.abs(rand(4, prec=prec)) + 0.5
    out = run("batch_norm", dt(prec), x=x, mean=mean, variance=var, gamma=gc, beta=bc, epsilon=np.float32(1e-5))
    check(out, F.batch_norm(t(x), t(mean), t(var), t(gc), t(bc), False, 0.0, 1e-5).numpy(), prec)


# ---------------------------------------------------------------------------------------------
# elementwise and activations


UNARY_REF = {
    "abs": torch.abs, "ceil": torch.ceil, "cos": torch.cos, "erf": torch.erf, "exp": torch.exp,
    "floor": torch.floor, "sign": torch.sign, "sin": torch.sin, "sqrt": lambda x: torch.sqrt(x.abs()),
    "square": torch.square, "tanh": torch.tanh, "relu": torch.relu, "relu6": F.relu6,
    "sigmoid": torch.sigmoid, "silu": F.silu, "softplus": F.softplus, "softsign": F.softsign,
    "atan": torch.atan, "round": torch.round,
}


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("op", sorted(UNARY_REF))
def test_unary(prec, op):
    x = rand(3, 17, prec=prec, scale=2.0)
    if op == "sqrt":
        x = np.abs(x)
    check(run(op, dt(prec), x=x), UNARY_REF[op](t(x)).numpy(), prec)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_unary_with_params(prec):
    x = rand(4, 9, prec=prec, scale=2.0)
    pos = np.abs(x) + np.asarray(0.1, dtype=x.dtype)
    check(run("rsqrt", dt(prec), x=pos, epsilon=np.float32(1e-12)), torch.rsqrt(t(pos)).numpy(), prec)
    check(run("inverse", dt(prec), x=pos, epsilon=np.float32(0)), (1 / t(pos)).numpy(), prec)
    check(run("log", dt(prec), x=pos, epsilon=np.float32(0)), torch.log(t(pos)).numpy(), prec)
    check(run("clip", dt(prec), x=x, alpha=np.float32(-0.5), beta=np.float32(0.7)), t(x).clamp(-0.5, 0.7).numpy(), prec)
    check(run("leaky_relu", dt(prec), x=x, alpha=np.float32(0.1)), F.leaky_relu(t(x), 0.1).numpy(), prec)
    check(run("elu", dt(prec), x=x, alpha=np.float32(1.0)), F.elu(t(x)).numpy(), prec)
    check(run("gelu", dt(prec), x=x, mode="EXACT"), F.gelu(t(x)).numpy(), prec)
    check(run("gelu", dt(prec), x=x, mode="TANH_APPROXIMATION"), F.gelu(t(x), approximate="tanh").numpy(), prec)
    check(run("gelu", dt(prec), x=x, mode="SIGMOID_APPROXIMATION"), (t(x) * torch.sigmoid(1.702 * t(x))).numpy(), prec)
    check(run("softmax", dt(prec), x=x, axis=np.int32(-1)), torch.softmax(t(x), -1).numpy(), prec)
    check(run("softmax", dt(prec), x=x, axis=np.int32(0)), torch.softmax(t(x), 0).numpy(), prec)
    xp = rand(1, 3, 4, prec=prec)
    alpha = np.array([0.1, 0.2, 0.3], np.float32)
    check(run("prelu", dt(prec), x=xp, alpha=alpha), F.prelu(t(xp), t(alpha)).numpy(), prec)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_binary_broadcast(prec):
    x, y = rand(2, 1, 5, prec=prec), rand(3, 1, prec=prec) + np.asarray(3.0, dtype=dt(prec))
    for op, fn in [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("real_div", torch.div),
                   ("maximum", torch.maximum), ("minimum", torch.minimum), ("pow", lambda a, b: torch.pow(a.abs(), b))]:
        xx = np.abs(x) if op == "pow" else x
        check(run(op, dt(prec), x=xx, y=y), fn(t(xx), t(y)).numpy(), prec)
    out = run("greater_equal", np.bool_, x=x, y=np.float32(0))
    assert out.dtype == np.bool_ and np.array_equal(out, x >= 0)
    out = run("select", dt(prec), cond=out, a=x, b=-x)
    check(out, np.abs(x.astype(np.float32)), prec)
    ints = run("floor_div", np.int32, x=np.array([7, -7, 9], np.int32), y=np.array([2, 2, -4], np.int32))
    assert ints.tolist() == [3, -4, -3]
    assert run("mod", np.float32, x=np.array([7.5, -7.5]), y=np.float32(2)).tolist() == [1.5, 0.5]


def test_cast_truncates_and_rounds():
    x = np.array([1.7, -1.7, 2.5, 70000.0], np.float32)
    assert run("cast", np.int32, x=x, dtype="int32").tolist() == [1, -1, 2, 70000]
    h = run("cast", np.float16, x=x, dtype="fp16")
    assert h.dtype == np.float16 and np.isinf(h[3]) and h[0] == np.float16(1.7)


# ---------------------------------------------------------------------------------------------
# reductions


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("keep", [True, False])
def test_reductions(prec, keep):
    x = np.abs(rand(2, 3, 4, 5, prec=prec)) + np.asarray(0.1, dtype=dt(prec))
    xf = x.astype(np.float64)
    axes = (1, 3)
    refs = {
        "reduce_mean": np.mean(xf, axes, keepdims=keep), "reduce_sum": np.sum(xf, axes, keepdims=keep),
        "reduce_max": np.max(xf, axes, keepdims=keep), "reduce_min": np.min(xf, axes, keepdims=keep),
        "reduce_prod": np.prod(xf, axes, keepdims=keep),
        "reduce_l1_norm": np.sum(np.abs(xf), axes, keepdims=keep),
        "reduce_l2_norm": np.sqrt(np.sum(xf**2, axes, keepdims=keep)),
        "reduce_sum_square": np.sum(xf**2, axes, keepdims=keep),
        "reduce_log_sum": np.log(np.sum(xf, axes, keepdims=keep)),
        "reduce_log_sum_exp": np.log(np.sum(np.exp(xf), axes, keepdims=keep)),
    }
    for op, ref in refs.items():
        check(run(op, dt(prec), x=x, axes=np.array([1, -1]), keep_dims=keep), ref, prec)
    assert run("reduce_mean", dt(prec), x=x).shape == ()
    am = run("reduce_argmax", np.int32, x=x, axis=np.int32(2), keep_dims=keep)
    assert np.array_equal(am, np.argmax(x, 2, keepdims=keep))


# ---------------------------------------------------------------------------------------------
# shape and data movement


def test_shape_ops():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert run("reshape", x=x, shape=np.array([0, -1])).shape == (2, 12)
    assert np.array_equal(run("transpose", x=x, perm=np.array([0, 2, -2])), x.transpose(0, 2, 1))
    assert run("expand_dims", x=x, axes=np.array([0, -1])).shape == (1, 2, 3, 4, 1)
    assert run("squeeze", x=x[:, :1], axes=np.array([1])).shape == (2, 4)
    out = run("slice_by_index", x=x, begin=np.array([0, 1, 3]), end=np.array([2, 3, 0]),
              stride=np.array([1, 1, -1]), begin_mask=np.array([False, False, False]),
              end_mask=np.array([True, False, True]), squeeze_mask=np.array([False, False, False]))
    assert np.array_equal(out, x[:, 1:3, 3::-1])
    out = run("slice_by_index", x=x, begin=np.array([1, 0, 0]), end=np.array([2, 3, 4]),
              squeeze_mask=np.array([True, False, False]))
    assert np.array_equal(out, x[1])
    assert np.array_equal(run("slice_by_size", x=x, begin=np.array([1, 1, 0]), size=np.array([1, -1, 2])), x[1:2, 1:, 0:2])
    parts = run("split", n_out=2, x=x, split_sizes=np.array([1, 3]), axis=np.int32(-1))
    assert [p.shape for p in parts] == [(2, 3, 1), (2, 3, 3)]
    parts = run("split", n_out=3, x=x, num_splits=np.int32(3), axis=np.int32(1))
    assert np.array_equal(parts[2], x[:, 2:3])
    a, b = x, x + 100
    assert np.array_equal(run("concat", values=[a, b], axis=np.int32(1), interleave=False), np.concatenate([a, b], 1))
    inter = run("concat", values=[a, b], axis=np.int32(1), interleave=True)
    assert np.array_equal(inter[:, 0], a[:, 0]) and np.array_equal(inter[:, 1], b[:, 0]) and inter.shape == (2, 6, 4)
    assert np.array_equal(run("stack", values=[a, b], axis=np.int32(0)), np.stack([a, b]))
    assert np.array_equal(run("tile", x=x, reps=np.array([1, 2, 1])), np.tile(x, (1, 2, 1)))
    assert np.array_equal(run("reverse", x=x, axes=np.array([2])), x[..., ::-1])
    assert run("shape", np.int32, x=x).tolist() == [2, 3, 4]
    assert run("fill", x=None, shape=np.array([2, 2]), value=np.float32(3)).tolist() == [[3, 3], [3, 3]]
    assert run("range_1d", np.int32, start=np.int32(1), end=np.int32(7), step=np.int32(2)).tolist() == [1, 3, 5]
    assert np.array_equal(run("cumsum", x=x, axis=np.int32(2)), np.cumsum(x, 2))
    assert np.array_equal(run("cumsum", x=x, axis=np.int32(2), exclusive=True, reverse=True),
                          np.flip(np.cumsum(np.flip(x, 2), 2), 2) - x)
    m = run("band_part", x=np.ones((4, 4), np.float32), lower=np.int32(1), upper=np.int32(0))
    assert np.array_equal(m, np.tril(np.triu(np.ones((4, 4)), -1)))
    oh = run("one_hot", x=None, indices=np.array([0, 2]), one_hot_vector_size=np.int32(3), axis=np.int32(-1))
    assert oh.tolist() == [[1, 0, 0], [0, 0, 1]]
    vals, idx = run("topk", n_out=2, x=np.array([[3.0, 1.0, 4.0, 1.5]], np.float32), k=np.int32(2), axis=np.int32(-1))
    assert vals.tolist() == [[4.0, 3.0]] and idx.tolist() == [[2, 0]]


def test_gathers():
    x = RNG.standard_normal((4, 5, 6)).astype(np.float32)
    idx = np.array([[3, 0], [1, 1]], np.int32)
    assert np.array_equal(run("gather", x=x, indices=idx, axis=np.int32(1)), np.take(x, idx, axis=1))
    assert np.array_equal(run("gather", x=x, indices=np.array([-1]), axis=np.int32(0)), x[-1:])
    bidx = RNG.integers(0, 5, (4, 3))
    out = run("gather", x=x, indices=bidx, axis=np.int32(1), batch_dims=np.int32(1))
    assert np.array_equal(out, np.stack([x[i, bidx[i]] for i in range(4)]))
    ga = RNG.integers(0, 6, (4, 5, 2))
    assert np.array_equal(run("gather_along_axis", x=x, indices=ga, axis=np.int32(2)), np.take_along_axis(x, ga, 2))
    nd = np.array([[0, 1], [3, 4]])
    assert np.array_equal(run("gather_nd", x=x, indices=nd), x[[0, 3], [1, 4]])
    emb = torch.nn.functional.embedding(torch.tensor([[2, 0]]), t(x[:, 0])).numpy()
    assert np.array_equal(run("gather", x=x[:, 0], indices=np.array([[2, 0]]), axis=np.int32(0)), emb)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_pad_modes(prec):
    x = rand(1, 2, 4, 5, prec=prec)
    pad = np.array([1, 2, 2, 1])
    for mode, tmode in [("constant", "constant"), ("reflect", "reflect"), ("replicate", "replicate")]:
        out = run("pad", dt(prec), x=x, pad=pad, mode=mode, constant_val=np.float32(0.5))
        kw = {"value": 0.5} if mode == "constant" else {}
        check(out, F.pad(t(x), (2, 1, 1, 2), mode=tmode, **kw).numpy(), prec)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_resampling(prec):
    x = rand(1, 2, 4, 5, prec=prec)
    out = run("upsample_nearest_neighbor", dt(prec), x=x, scale_factor_height=np.float32(2), scale_factor_width=np.float32(3))
    check(out, F.interpolate(t(x), scale_factor=(2, 3), mode="nearest").numpy(), prec)
    for align in (True, False):
        out = run("upsample_bilinear", dt(prec), x=x, scale_factor_height=np.float32(2),
                  scale_factor_width=np.float32(2), align_corners=align)
        check(out, F.interpolate(t(x), scale_factor=2, mode="bilinear", align_corners=align).numpy(), prec)
    out = run("resize_bilinear", dt(prec), x=x, target_size_height=np.int32(7), target_size_width=np.int32(3),
              sampling_mode="UNALIGN_CORNERS")
    check(out, F.interpolate(t(x), size=(7, 3), mode="bilinear", align_corners=False).numpy(), prec)
    out = run("resize_nearest_neighbor", dt(prec), x=x, target_size_height=np.int32(8), target_size_width=np.int32(10))
    check(out, F.interpolate(t(x), size=(8, 10), mode="nearest").numpy(), prec)


def test_resize_bilinear_grid_points_from_op_doc():
    # coremltools' resize_bilinear doc lists the grid for Xin=2, Xout=5 under each sampling mode
    x = np.array([[[[0.0, 1.0]]]], np.float32)  # value == coordinate
    expect = {
        "UNALIGN_CORNERS": [0.0, 0.1, 0.5, 0.9, 1.0],
        "STRICT_ALIGN_CORNERS": [0.0, 0.25, 0.5, 0.75, 1.0],
        "ALIGN_CORNERS": [0.0, 0.25, 0.5, 0.75, 1.0],
        "DEFAULT": [0.0, 0.4, 0.8, 1.0, 1.0],
        "OFFSET_CORNERS": [0.1, 0.3, 0.5, 0.7, 0.9],
    }
    for mode, grid in expect.items():
        out = run("resize_bilinear", x=x, target_size_height=np.int32(1), target_size_width=np.int32(5), sampling_mode=mode)
        np.testing.assert_allclose(out[0, 0, 0], grid, atol=1e-6, err_msg=mode)


def test_pixel_shuffle_and_depth_to_space():
    x = RNG.standard_normal((1, 8, 3, 4)).astype(np.float32)
    assert np.array_equal(run("pixel_shuffle", x=x, upscale_factor=np.int32(2)), F.pixel_shuffle(t(x), 2).numpy())
    y = run("pixel_shuffle", x=x, upscale_factor=np.int32(2))
    assert np.array_equal(run("pixel_unshuffle", x=y, downscale_factor=np.int32(2)), x)
    s2d = run("space_to_depth", x=y, block_size=np.int32(2))
    assert np.array_equal(run("depth_to_space", x=s2d, block_size=np.int32(2)), y)


# ---------------------------------------------------------------------------------------------
# compressed weights: our decompression vs coremltools' own


def _ct_ops():
    from coremltools.converters.mil.mil.ops.defs.iOS16 import constexpr_ops as c16
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as c18

    return c16, c18


def test_constexpr_ios16_against_coremltools():
    from coremltools.optimize import _utils as ou

    c16, _ = _ct_ops()
    q = RNG.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    scale = RNG.random(6).astype(np.float16) + np.float16(0.01)
    zp = RNG.integers(-3, 3, 6).astype(np.int8)
    ours = cx.affine_dequantize(q, zp, scale, 0)
    theirs = c16.constexpr_affine_dequantize.decompress(q, zp, scale, 0)
    assert ours.dtype == np.float16 and np.array_equal(ours, theirs)
    u8 = RNG.integers(0, 256, (5, 7)).astype(np.uint8)
    ours = cx.affine_dequantize(u8, np.uint8(128), np.float32(0.5), 1)
    assert np.array_equal(ours, c16.constexpr_affine_dequantize.decompress(u8, np.uint8(128), np.float32(0.5), 1))
    for nbits in (1, 2, 4, 6, 8):
        lut = RNG.standard_normal(2**nbits).astype(np.float16)
        shape = np.array([3, 5, 7], np.uint32)
        idx = RNG.integers(0, 2**nbits, int(np.prod(shape))).astype(np.uint8)
        packed = ou.pack_elements_into_bits(idx, nbits)
        ours = cx.lut_to_dense_ios16(lut, packed, shape)
        assert np.array_equal(ours, lut[idx].reshape(3, 5, 7))
        assert np.array_equal(ours, c16.constexpr_lut_to_dense.decompress(lut, packed, shape))
    dense = RNG.standard_normal((4, 9)).astype(np.float32)
    dense[RNG.random((4, 9)) < 0.5] = 0
    mask = np.packbits((dense != 0).reshape(-1), bitorder="little")
    nz = dense[dense != 0]
    ours = cx.sparse_to_dense_ios16(nz, mask, np.array([4, 9], np.uint32))
    assert np.array_equal(ours, dense)
    assert np.array_equal(ours, c16.constexpr_sparse_to_dense.decompress(nz, mask, np.array([4, 9], np.uint32)))
    assert cx.cast(np.array([1.5], np.float16), "fp32").dtype == np.float32


def test_constexpr_ios18_against_coremltools():
    _, c18 = _ct_ops()
    data = RNG.integers(-8, 8, (8, 12)).astype(np.int8)
    scale = (RNG.random((4, 3)) + 0.1).astype(np.float16)
    offset = RNG.integers(-2, 2, (4, 3)).astype(np.int8)
    ours = cx.blockwise_shift_scale(data, scale, offset)
    theirs = c18.constexpr_blockwise_shift_scale.decompress(data, scale, offset)
    assert ours.dtype == np.float16 and np.array_equal(ours, theirs)
    assert ours[1, 5] == np.float16(np.float32(scale[0, 1]) * (data[1, 5] - offset[0, 1]))
    assert np.array_equal(cx.blockwise_shift_scale(data, scale, None),
                          c18.constexpr_blockwise_shift_scale.decompress(data, scale, None))
    # per-grouped-channel LUT: 2 palettes over axis 0 of a [6, 4] tensor
    idx = RNG.integers(0, 4, (6, 4)).astype(np.uint8)
    lut = RNG.standard_normal((2, 1, 4, 1)).astype(np.float16)
    ours = cx.lut_to_dense_ios18(idx, lut)
    assert np.array_equal(ours, c18.constexpr_lut_to_dense.decompress(idx, lut, None))
    assert ours[4, 2] == lut[1, 0, idx[4, 2], 0]
    # vector palettization (VECTOR_SIZE 3 along axis 1), groups on two axes
    idx = RNG.integers(0, 2, (4, 2, 6)).astype(np.uint8)
    lut = RNG.standard_normal((2, 1, 3, 2, 3)).astype(np.float32)
    ours = cx.lut_to_dense_ios18(idx, lut, 1)
    assert ours.shape == (4, 6, 6)
    assert np.array_equal(ours, c18.constexpr_lut_to_dense.decompress(idx, lut, np.int32(1)))
    mask = (RNG.random((5, 6)) < 0.4).astype(np.uint8)
    nz = RNG.standard_normal(int(mask.sum())).astype(np.float16)
    assert np.array_equal(cx.sparse_to_dense_ios18(nz, mask), c18.constexpr_sparse_to_dense.decompress(nz, mask))
    nz_idx = RNG.integers(0, 4, int(mask.sum())).astype(np.uint8)
    lut = RNG.standard_normal((1, 1, 4, 1)).astype(np.float16)
    for a, b in zip(cx.lut_to_sparse(mask, nz_idx, lut), c18.constexpr_lut_to_sparse.decompress(mask, nz_idx, lut, None)):
        assert np.array_equal(a, b)
    nz_q = RNG.integers(-8, 8, int(mask.sum())).astype(np.int8)
    sc = (RNG.random((5, 1)) + 0.1).astype(np.float16)
    for a, b in zip(cx.sparse_blockwise_shift_scale(mask, nz_q, sc, None),
                    c18.constexpr_sparse_blockwise_shift_scale.decompress(mask, nz_q, sc, None)):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# saved MIL programs: declared dtypes, casts, IO, errors


def _save_program(prog, tmp_path, name, target):
    import coremltools as ct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                           compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    path = tmp_path / f"{name}.mlpackage"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def fp16_program(tmp_path_factory):
    """x fp32 -> cast fp16 -> conv (fp16 weights) -> silu -> *3 -> outputs: fp32 cast and int32 cast."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    w = (np.random.default_rng(1).standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 6, 6), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        h = mb.conv(x=h, weight=w, pad_type="same")
        h = mb.silu(x=h)
        h = mb.mul(x=h, y=np.float16(3.0))
        return mb.cast(x=h, dtype="fp32"), mb.cast(x=h, dtype="int32")

    path = _save_program(prog, tmp_path_factory.mktemp("mil"), "fp16prog", ct.target.iOS17)
    return path, w


def test_fp16_program_rounds_each_op_and_honours_casts(fp16_program):
    path, w = fp16_program
    ev = MilEvaluator(path)
    assert ev.input_names == ["x"] and ev.input_dtypes["x"] == np.float32
    assert ev.ops.count("cast") == 3 and "conv" in ev.ops and "silu" in ev.ops
    x = RNG.standard_normal((1, 3, 6, 6))  # float64 on purpose: cast to the declared fp32
    out = ev.predict({"x": x})
    f_name, i_name = ev.output_names
    assert out[f_name].dtype == np.float32 and out[i_name].dtype == np.int32
    # expectation: every op's result rounded to fp16
    h = x.astype(np.float32).astype(np.float16).astype(np.float32)
    h = F.conv2d(t(h), t(w.astype(np.float32)), padding=1).numpy().astype(np.float16).astype(np.float32)
    h = (h / (1 + np.exp(-h))).astype(np.float16).astype(np.float32)
    h = (h * 3).astype(np.float16)
    np.testing.assert_allclose(out[f_name], h.astype(np.float32), rtol=2e-3, atol=2e-3)
    # the fp32 output holds fp16-representable values only
    assert np.array_equal(out[f_name], out[f_name].astype(np.float16).astype(np.float32))
    assert np.array_equal(out[i_name], np.trunc(out[f_name]).astype(np.int32))
    assert run_mlpackage(path, {"x": x})[f_name].tobytes() == out[f_name].tobytes()
    assert op_histogram(path)["cast"] == 3


def test_unsupported_op_raises_naming_op(fp16_program, monkeypatch):
    path, _ = fp16_program
    from md_export.milrun.torch_kernels import FAST

    monkeypatch.delitem(KERNELS, "silu")
    monkeypatch.delitem(FAST, "silu")
    with pytest.raises(UnsupportedOpError) as e:
        MilEvaluator(path)
    msg = str(e.value)
    assert "'silu'" in msg and str(path) in msg and "\n" not in msg
    import re

    assert re.search(r"named '[^']*silu[^']*'", msg)


def test_bad_inputs_and_packages(fp16_program, tmp_path):
    path, _ = fp16_program
    ev = MilEvaluator(path)
    with pytest.raises(InputError, match="missing"):
        ev.predict({})
    with pytest.raises(InputError, match="shape"):
        ev.predict({"x": np.zeros((1, 3, 5, 5))})
    with pytest.raises(InputError, match="unknown"):
        ev.predict({"x": np.zeros((1, 3, 6, 6)), "y": 1})
    with pytest.raises(InputError) as e:
        MilEvaluator(tmp_path / "nope.mlpackage")
    assert "nope.mlpackage" in str(e.value)
    bad = tmp_path / "bad.mlpackage"
    (bad / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (bad / "Manifest.json").write_text('{"rootModelIdentifier": "a", "itemInfoEntries": {"a": {"path": "com.apple.CoreML/model.mlmodel"}}}')
    (bad / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(InputError, match="bad.mlpackage"):
        MilEvaluator(bad)
    (bad / "Manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest"):
        op_histogram(bad)


def test_every_constexpr_and_core_op_used_by_md_export_has_a_kernel():
    needed = {
        "conv", "conv_transpose", "linear", "matmul", "layer_norm", "instance_norm", "batch_norm",
        "softmax", "gelu", "silu", "sigmoid", "reduce_mean", "reshape", "transpose", "expand_dims",
        "concat", "split", "slice_by_index", "gather", "select", "greater_equal", "cast", "pad",
        "upsample_nearest_neighbor", "scaled_dot_product_attention", "sin", "cos", "sqrt", "square",
        "real_div", "add", "sub", "mul", "constexpr_affine_dequantize", "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense", "constexpr_cast", "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
    }
    assert needed <= set(KERNELS)


def test_register_missing_torch_ops_is_idempotent():
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    from md_export.lower.coreml_torch_ops import register_missing_torch_ops

    register_missing_torch_ops()
    assert "alias" in _TORCH_OPS_REGISTRY.name_to_func_mapping
    fn = _TORCH_OPS_REGISTRY.name_to_func_mapping["alias"]
    assert register_missing_torch_ops() == []
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping["alias"] is fn
