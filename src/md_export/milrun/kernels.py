"""numpy kernels for MIL ops, one small function per op type.

Every kernel receives an :class:`OpArgs` and returns one array (or a tuple for multi-output ops).
Floating-point inputs arrive as float32 (float16 tensors are widened on read) and the evaluator
casts each result to the dtype the program declares for that output. An fp16 op therefore
computes internally in fp32 and its result is rounded to float16, like a runtime that stores
activations in fp16 and accumulates in fp32.

Semantics follow the op definitions in coremltools (`converters/mil/mil/ops/defs/`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from md_export.milrun import constexpr as cx

KERNELS: dict[str, Callable] = {}

_MISSING = object()


class OpArgs:
    """The inputs of one op, read from the evaluator's environment."""

    __slots__ = ("op_type", "name", "_values", "out_dtypes", "out_shapes")

    def __init__(self, op_type, name, values, out_dtypes, out_shapes):
        self.op_type = op_type
        self.name = name
        self._values = values
        self.out_dtypes = out_dtypes
        self.out_shapes = out_shapes

    def has(self, key: str) -> bool:
        return self._values.get(key) is not None

    def raw(self, key: str, default=_MISSING):
        v = self._values.get(key)
        if v is None:
            if default is _MISSING:
                raise KeyError(f"{self.op_type} '{self.name}': missing input '{key}'")
            return default
        return v

    def __getitem__(self, key: str):
        return _widen(self.raw(key))

    def get(self, key: str, default=None):
        v = self._values.get(key)
        return default if v is None else _widen(v)

    def list(self, key: str) -> list:
        v = self.raw(key)
        if not isinstance(v, (list, tuple)):
            v = [v]
        return [_widen(x) for x in v]

    def int(self, key: str, default=_MISSING) -> int:
        v = self.raw(key, default)
        return v if v is default and default is not _MISSING else int(np.asarray(v).reshape(()))

    def float(self, key: str, default=_MISSING) -> float:
        v = self.raw(key, default)
        return v if v is default and default is not _MISSING else float(np.asarray(v).reshape(()))

    def bool(self, key: str, default=_MISSING) -> bool:
        v = self.raw(key, default)
        return v if v is default and default is not _MISSING else bool(np.asarray(v).reshape(()))

    def ints(self, key: str, default=_MISSING):
        v = self.raw(key, default)
        if v is default and default is not _MISSING:
            return v
        return [int(i) for i in np.asarray(v).reshape(-1)]

    def bools(self, key: str, default=_MISSING):
        v = self.raw(key, default)
        if v is default and default is not _MISSING:
            return v
        return [bool(i) for i in np.asarray(v).reshape(-1)]

    def str(self, key: str, default=_MISSING) -> str:
        v = self.raw(key, default)
        return str(v)


def _widen(v):
    if isinstance(v, np.ndarray) and v.dtype == np.float16:
        return v.astype(np.float32)
    if isinstance(v, np.float16):
        return np.float32(v)
    return v


def kernel(*names, table: dict | None = None):
    """Register the decorated function as the kernel of op types `names` (in KERNELS unless `table`)."""
    def deco(fn):
        for n in names:
            (KERNELS if table is None else table)[n] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# elementwise


def _binary(fn):
    return lambda a: fn(np.asarray(a["x"]), np.asarray(a["y"]))


def _real_div(x, y):
    return np.true_divide(x, y)


def _pow(x, y):
    if np.issubdtype(np.asarray(x).dtype, np.integer) and np.issubdtype(np.asarray(y).dtype, np.integer):
        return np.power(x.astype(np.float64), y).astype(x.dtype)
    return np.power(x, y)


_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": _real_div,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": _pow,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _n, _f in _BINARY.items():
    KERNELS[_n] = _binary(_f)


def _erf(x):
    from scipy.special import erf

    return erf(x)


def _sigmoid(x):
    # exp(-|x|) never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


_UNARY = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "erf": _erf,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "logical_not": np.logical_not,
    "round": np.round,  # MIL: 0.5 rounds to 0, i.e. half to even
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(0, x),
}
for _n, _f in _UNARY.items():
    KERNELS[_n] = (lambda f: lambda a: f(np.asarray(a["x"])))(_f)


@kernel("inverse")
def _inverse(a):
    return 1.0 / (a["x"] + a.float("epsilon", 1e-4))


@kernel("log")
def _log(a):
    return np.log(a["x"] + a.float("epsilon", 1e-45))


@kernel("rsqrt")
def _rsqrt(a):
    return 1.0 / np.sqrt(a["x"] + a.float("epsilon", 1e-12))


@kernel("clip")
def _clip(a):
    return np.minimum(np.maximum(a["x"], a.float("alpha")), a.float("beta"))


@kernel("threshold")
def _threshold(a):
    return np.maximum(a["x"], a.float("alpha"))


@kernel("thresholded_relu")
def _thresholded_relu(a):
    x = a["x"]
    return np.where(x >= a.float("alpha", 1.0), x, 0).astype(x.dtype)


@kernel("leaky_relu")
def _leaky_relu(a):
    x = a["x"]
    return np.where(x >= 0, x, x * a.float("alpha", 0.01))


@kernel("elu")
def _elu(a):
    x = a["x"]
    return np.where(x > 0, x, a.float("alpha", 1.0) * np.expm1(np.minimum(x, 0)))


@kernel("clamped_relu")
def _clamped_relu(a):
    x = a["x"]
    return np.minimum(np.where(x >= 0, x, x * a.float("alpha")), a.float("beta"))


@kernel("prelu")
def _prelu(a):
    x, alpha = a["x"], np.asarray(a["alpha"])
    alpha = alpha.reshape([1, -1] + [1] * (x.ndim - 2))
    return np.where(x >= 0, x, x * alpha)


@kernel("linear_activation")
def _linear_activation(a):
    return a.float("alpha") * a["x"] + a.float("beta", 0.0)


@kernel("scaled_tanh")
def _scaled_tanh(a):
    return a.float("alpha", 1.0) * np.tanh(a.float("beta", 1.0) * a["x"])


@kernel("sigmoid_hard")
def _sigmoid_hard(a):
    return np.clip(a.float("alpha", 0.2) * a["x"] + a.float("beta", 0.5), 0, 1)


@kernel("softplus_parametric")
def _softplus_parametric(a):
    x = a["x"]
    shape = [1, -1] + [1] * (x.ndim - 2)
    alpha = np.asarray(a["alpha"]).reshape(shape)
    beta = np.asarray(a["beta"]).reshape(shape)
    return alpha * np.logaddexp(0, beta * x)


@kernel("gelu")
def _gelu(a):
    x = a["x"]
    mode = a.str("mode", "EXACT")
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise ValueError(f"gelu: unknown mode {mode}")


@kernel("softmax")
def _softmax(a):
    x = a["x"]
    axis = a.int("axis", -1)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


@kernel("cast")
def _cast(a):
    # The evaluator casts to the declared output dtype (`dtype` names the same type).
    x = np.asarray(a.raw("x"))
    target = cx._dtype_from_name(a.str("dtype"))
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return x.astype(target)


@kernel("select")
def _select(a):
    return np.where(np.asarray(a.raw("cond")).astype(bool), a["a"], a["b"])


# ----------------------------------------------------------------------------------------------
# linear algebra


@kernel("linear")
def _linear(a):
    x, w = a["x"], a["weight"]
    y = np.matmul(x, w.T)
    b = a.get("bias")
    return y + b if b is not None else y


@kernel("matmul")
def _matmul(a):
    x, y = a["x"], a["y"]
    if a.bool("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.bool("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@kernel("einsum")
def _einsum(a):
    return np.einsum(a.str("equation"), *a.list("values"))


@kernel("scaled_dot_product_attention")
def _sdpa(a):
    q, k, v = a["query"], a["key"], a["value"]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.sqrt(q.shape[-1])
    if a.has("attn_mask"):
        mask = np.asarray(a["attn_mask"])
        if mask.dtype == np.bool_:
            scores = np.where(mask, scores, -np.inf)
        else:
            scores = scores + mask
    m = np.max(scores, axis=-1, keepdims=True)
    e = np.exp(scores - m)
    return np.matmul(e / np.sum(e, axis=-1, keepdims=True), v)


# ----------------------------------------------------------------------------------------------
# convolution and pooling


def _resolve_pads(pad_type, pad, in_sizes, kernel_eff, strides):
    """Per spatial axis (begin, end) padding for MIL's pad_type."""
    n = len(in_sizes)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s in zip(in_sizes, kernel_eff, strides):
            o = -(-size // s)
            total = max((o - 1) * s + k - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise ValueError(f"unknown pad_type {pad_type}")


_CHUNK_ELEMENTS = 1 << 25  # largest im2col buffer (elements) built in one go


def conv_nd(x, w, bias=None, strides=None, pads=None, dilations=None, groups=1):
    """N-d cross-correlation, NC[spatial] layout, weight [O, C/groups, *k], explicit pads."""
    nsp = x.ndim - 2
    strides = strides or [1] * nsp
    dilations = dilations or [1] * nsp
    pads = pads or [(0, 0)] * nsp
    ksz = list(w.shape[2:])
    keff = [(k - 1) * d + 1 for k, d in zip(ksz, dilations)]
    if any(p != (0, 0) for p in pads):
        neg = any(lo < 0 or hi < 0 for lo, hi in pads)
        x = np.pad(x, [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads])
        if neg:
            sl = [slice(None), slice(None)]
            for lo, hi in pads:
                sl.append(slice(-min(lo, 0), x.shape[len(sl)] - (-min(hi, 0))))
            x = x[tuple(sl)]
    sp_axes = tuple(range(2, 2 + nsp))
    win = sliding_window_view(x, keff, axis=sp_axes)
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dilations)]
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    osp = win.shape[2:2 + nsp]
    k_axes = list(range(2 + nsp, 2 + 2 * nsp))
    if groups == 1:
        out = _chunked_tensordot(win, w, k_axes, nsp)
    elif cg == 1 and og == 1:  # depthwise
        kk = int(np.prod(ksz))
        wd = w.reshape(c, kk)
        out = np.einsum("nc...k,ck->nc...", win.reshape(n, c, *osp, kk), wd, optimize=True)
    else:
        parts = []
        for g in range(groups):
            parts.append(_chunked_tensordot(win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], k_axes, nsp))
        out = np.concatenate(parts, axis=1)
    if bias is not None:
        out = out + np.asarray(bias).reshape([1, -1] + [1] * nsp)
    return out


def _chunked_tensordot(win, w, k_axes, nsp):
    """sum over (C, *k) of win[N, C, *o, *k] * w[O, C, *k] -> [N, O, *o]."""
    w_axes = list(range(1, w.ndim))
    per_row = win[:, :, :1].size if win.shape[2] else 0
    rows = win.shape[2]
    step = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    outs = []
    for r in range(0, rows, step):
        part = np.tensordot(win[:, :, r:r + step], w, axes=([1] + k_axes, w_axes))  # [N, *o, O]
        outs.append(np.moveaxis(part, -1, 1))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)


@kernel("conv")
def _conv(a):
    x, w = a["x"], a["weight"]
    nsp = x.ndim - 2
    strides = a.ints("strides", [1] * nsp)
    dilations = a.ints("dilations", [1] * nsp)
    ksz = w.shape[2:]
    keff = [(k - 1) * d + 1 for k, d in zip(ksz, dilations)]
    pads = _resolve_pads(a.str("pad_type", "valid"), a.ints("pad", [0] * 2 * nsp), x.shape[2:], keff, strides)
    return conv_nd(x, w, a.get("bias"), strides, pads, dilations, a.int("groups", 1))


@kernel("conv_transpose")
def _conv_transpose(a, conv=None):
    """``conv`` is the correlation to run on the zero-stuffed input (:func:`conv_nd` unless given)."""
    x, w = a["x"], a["weight"]  # w: [C_in, C_out/groups, *k]
    nsp = x.ndim - 2
    groups = a.int("groups", 1)
    strides = a.ints("strides", [1] * nsp)
    dilations = a.ints("dilations", [1] * nsp)
    ksz = list(w.shape[2:])
    keff = [(k - 1) * d + 1 for k, d in zip(ksz, dilations)]
    in_sz = list(x.shape[2:])
    full = [(i - 1) * s + k for i, s, k in zip(in_sz, strides, keff)]  # size with no padding
    pad_type = a.str("pad_type", "valid")
    out_shape = a.ints("output_shape", None) if a.has("output_shape") else None
    if pad_type == "custom":
        pad = a.ints("pad", [0] * 2 * nsp)
        crops = [(pad[2 * i], pad[2 * i + 1]) for i in range(nsp)]
    elif pad_type == "valid":
        crops = [(0, 0)] * nsp
    elif pad_type in ("same", "same_lower"):
        crops = []
        for f, i, s in zip(full, in_sz, strides):
            total = max(f - i * s, 0)
            small, big = total // 2, total - total // 2
            crops.append((small, big) if pad_type == "same" else (big, small))
    else:
        raise ValueError(f"unknown pad_type {pad_type}")
    # Zero-stuff the input, then a stride-1 correlation with the flipped, transposed kernel.
    n, cin = x.shape[:2]
    stuffed = np.zeros((n, cin) + tuple((i - 1) * s + 1 for i, s in zip(in_sz, strides)), dtype=x.dtype)
    stuffed[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
    cin_g = cin // groups
    og = w.shape[1]
    wt = w.reshape((groups, cin_g, og) + tuple(ksz)).swapaxes(1, 2).reshape((groups * og, cin_g) + tuple(ksz))
    wt = np.flip(wt, axis=tuple(range(2, 2 + nsp)))
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(keff, crops)]
    if out_shape is not None:
        want = out_shape[-nsp:]
        for i in range(nsp):
            cur = full[i] - crops[i][0] - crops[i][1]
            if want[i] != cur:
                pads[i] = (pads[i][0], pads[i][1] + want[i] - cur)
    return (conv or conv_nd)(stuffed, wt, a.get("bias"), [1] * nsp, pads, dilations, groups)


def _pool(a, reduce):
    x = a["x"]
    nsp = x.ndim - 2
    ksz = a.ints("kernel_sizes")
    strides = a.ints("strides", [1] * nsp)
    pads = _resolve_pads(a.str("pad_type", "valid"), a.ints("pad", [0] * 2 * nsp), x.shape[2:], ksz, strides)
    if a.bool("ceil_mode", False):
        pads = [
            (lo, hi + ((-(size + lo + hi - k)) % s))
            for (lo, hi), size, k, s in zip(pads, x.shape[2:], ksz, strides)
        ]
    fill = -np.inf if reduce == "max" else np.nan
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
    win = sliding_window_view(xp, ksz, axis=tuple(range(2, 2 + nsp)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    k_axes = tuple(range(-nsp, 0))
    if reduce == "max":
        return np.max(win, axis=k_axes)
    if reduce == "l2":
        return np.sqrt(np.nansum(win * win, axis=k_axes))
    total = np.nansum(win, axis=k_axes)
    if a.bool("exclude_padding_from_average", False):
        return total / np.sum(~np.isnan(win), axis=k_axes)
    return total / float(np.prod(ksz))


KERNELS["max_pool"] = lambda a: _pool(a, "max")
KERNELS["avg_pool"] = lambda a: _pool(a, "avg")
KERNELS["l2_pool"] = lambda a: _pool(a, "l2")


# ----------------------------------------------------------------------------------------------
# normalization


def _axes_shape(x, axes, param):
    shape = [1] * x.ndim
    for ax, n in zip(sorted(axes), np.asarray(param).shape if np.ndim(param) else []):
        shape[ax] = n
    return np.asarray(param).reshape(shape) if np.ndim(param) else param


@kernel("layer_norm")
def _layer_norm(a):
    x = a["x"]
    axes = [ax % x.ndim for ax in a.ints("axes", list(range(x.ndim)))]
    eps = a.float("epsilon", 1e-5)
    mean = np.mean(x, axis=tuple(axes), keepdims=True)
    var = np.mean(np.square(x - mean), axis=tuple(axes), keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if a.has("gamma"):
        y = y * _axes_shape(x, axes, a["gamma"])
    if a.has("beta"):
        y = y + _axes_shape(x, axes, a["beta"])
    return y


def _per_channel(x, p):
    return np.asarray(p).reshape([1, -1] + [1] * (x.ndim - 2))


@kernel("instance_norm")
def _instance_norm(a):
    x = a["x"]
    axes = tuple(range(2, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + a.float("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _per_channel(x, a["gamma"])
    if a.has("beta"):
        y = y + _per_channel(x, a["beta"])
    return y


@kernel("batch_norm")
def _batch_norm(a):
    x = a["x"]
    y = (x - _per_channel(x, a["mean"])) / np.sqrt(_per_channel(x, a["variance"]) + a.float("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _per_channel(x, a["gamma"])
    if a.has("beta"):
        y = y + _per_channel(x, a["beta"])
    return y


@kernel("l2_norm")
def _l2_norm(a):
    # normalizes over the last three dims (or all but batch for rank < 3)
    x = a["x"]
    axes = tuple(range(max(x.ndim - 3, 1), x.ndim)) if x.ndim > 1 else (0,)
    norm = np.sqrt(np.maximum(np.sum(x * x, axis=axes, keepdims=True), a.float("epsilon", 1e-6)))
    return x / norm


@kernel("local_response_norm")
def _lrn(a):
    x = a["x"]
    size = a.int("size")
    alpha, beta, k = a.float("alpha", 1e-4), a.float("beta", 0.75), a.float("k", 1.0)
    sq = np.square(x)
    pad = [(0, 0)] * x.ndim
    pad[1] = ((size - 1) // 2, size // 2)
    win = sliding_window_view(np.pad(sq, pad), size, axis=1)
    return x / np.power(k + alpha / size * np.sum(win, axis=-1), beta)


# ----------------------------------------------------------------------------------------------
# reductions


def _reduce(fn):
    def run(a):
        x = a["x"]
        axes = a.ints("axes", None) if a.has("axes") else None
        axes = tuple(range(x.ndim)) if axes is None else tuple(ax % x.ndim for ax in axes)
        return fn(x, axes, a.bool("keep_dims", False))

    return run


_REDUCE = {
    "reduce_mean": lambda x, ax, k: np.mean(x, axis=ax, keepdims=k),
    "reduce_sum": lambda x, ax, k: np.sum(x, axis=ax, keepdims=k),
    "reduce_max": lambda x, ax, k: np.max(x, axis=ax, keepdims=k),
    "reduce_min": lambda x, ax, k: np.min(x, axis=ax, keepdims=k),
    "reduce_prod": lambda x, ax, k: np.prod(x, axis=ax, keepdims=k),
    "reduce_l1_norm": lambda x, ax, k: np.sum(np.abs(x), axis=ax, keepdims=k),
    "reduce_l2_norm": lambda x, ax, k: np.sqrt(np.sum(np.square(x), axis=ax, keepdims=k)),
    "reduce_sum_square": lambda x, ax, k: np.sum(np.square(x), axis=ax, keepdims=k),
    "reduce_log_sum": lambda x, ax, k: np.log(np.sum(x, axis=ax, keepdims=k)),
    "reduce_log_sum_exp": lambda x, ax, k: _logsumexp(x, ax, k),
}
for _n, _f in _REDUCE.items():
    KERNELS[_n] = _reduce(_f)


def _logsumexp(x, axes, keep):
    m = np.max(x, axis=axes, keepdims=True)
    r = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return r if keep else np.squeeze(r, axis=axes)


def _arg_reduce(fn):
    def run(a):
        x = a["x"]
        axis = a.int("axis", -1) % x.ndim
        r = fn(x, axis=axis)
        return np.expand_dims(r, axis) if a.bool("keep_dims", False) else r

    return run


KERNELS["reduce_argmax"] = _arg_reduce(np.argmax)
KERNELS["reduce_argmin"] = _arg_reduce(np.argmin)


@kernel("cumsum")
def _cumsum(a):
    x = a["x"]
    axis = a.int("axis", 0)
    if a.bool("reverse", False):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if a.bool("exclusive", False):
        y = y - x
    if a.bool("reverse", False):
        y = np.flip(y, axis)
    return y


# ----------------------------------------------------------------------------------------------
# shape and data movement


@kernel("reshape")
def _reshape(a):
    x = a.raw("x")
    shape = a.ints("shape")
    # MIL: 0 copies the input dim, -1 is inferred
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, shape)


@kernel("reshape_like")
def _reshape_like(a):
    x = a.raw("x")
    refs = a.raw("ref_tensors")
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    begins, ends, end_masks = a.ints("begins"), a.ints("ends"), a.bools("end_masks")
    shape = []
    for r, b, e, m in zip(refs, begins, ends, end_masks):
        s = np.asarray(r).shape
        shape.extend(s[b:] if m else s[b:e])
    return np.reshape(x, shape)


@kernel("transpose")
def _transpose(a):
    return np.transpose(a.raw("x"), a.ints("perm"))


@kernel("expand_dims")
def _expand_dims(a):
    x = np.asarray(a.raw("x"))
    axes = a.ints("axes")
    out_rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(ax % out_rank for ax in axes)))


@kernel("squeeze")
def _squeeze(a):
    x = np.asarray(a.raw("x"))
    if not a.has("axes"):
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(ax % x.ndim for ax in a.ints("axes")))


@kernel("flatten2d")
def _flatten2d(a):
    x = np.asarray(a.raw("x"))
    axis = a.int("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@kernel("concat")
def _concat(a):
    values = [np.asarray(v) for v in a.list("values")]
    axis = a.int("axis")
    if a.bool("interleave", False):
        axis %= values[0].ndim
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] = -1
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@kernel("stack")
def _stack(a):
    return np.stack([np.asarray(v) for v in a.list("values")], axis=a.int("axis"))


@kernel("split")
def _split(a):
    x = np.asarray(a.raw("x"))
    axis = a.int("axis") % x.ndim
    if a.has("split_sizes"):
        sizes = a.ints("split_sizes")
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
    return tuple(np.split(x, a.int("num_splits"), axis=axis))


@kernel("slice_by_index")
def _slice_by_index(a):
    x = np.asarray(a.raw("x"))
    r = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r)
    bmask = a.bools("begin_mask", [False] * r)
    emask = a.bools("end_mask", [False] * r)
    smask = a.bools("squeeze_mask", [False] * r)
    idx = []
    for i in range(r):
        if smask[i]:
            idx.append(begin[i])
            continue
        idx.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    return x[tuple(idx)]


@kernel("slice_by_size")
def _slice_by_size(a):
    x = np.asarray(a.raw("x"))
    begin, size = a.ints("begin"), a.ints("size")
    idx = []
    for i in range(x.ndim):
        b = begin[i] % x.shape[i] if x.shape[i] else 0
        idx.append(slice(b, None if size[i] == -1 else b + size[i]))
    return x[tuple(idx)]


@kernel("slice_update")
def _slice_update(a):
    x = np.array(a.raw("x"), copy=True)
    r = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r)
    bmask = a.bools("begin_mask", [False] * r)
    emask = a.bools("end_mask", [False] * r)
    smask = a.bools("squeeze_mask", [False] * r)
    idx = []
    for i in range(r):
        if smask[i]:
            idx.append(begin[i])
        else:
            idx.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    x[tuple(idx)] = np.asarray(a.raw("update"))
    return x


@kernel("gather")
def _gather(a):
    x = np.asarray(a.raw("x"))
    idx = np.asarray(a.raw("indices")).astype(np.int64)
    axis = a.int("axis", 0) % x.ndim
    bd = a.int("batch_dims", 0)
    if bd == 0:
        return np.take(x, idx, axis=axis)
    bshape = x.shape[:bd]
    xf = x.reshape((-1,) + x.shape[bd:])
    idf = idx.reshape((-1,) + idx.shape[bd:])
    out = np.stack([np.take(xf[i], idf[i], axis=axis - bd) for i in range(xf.shape[0])])
    return out.reshape(bshape + out.shape[1:])


@kernel("gather_along_axis")
def _gather_along_axis(a):
    x = np.asarray(a.raw("x"))
    axis = a.int("axis", 0) % x.ndim
    idx = np.asarray(a.raw("indices")).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


@kernel("gather_nd")
def _gather_nd(a):
    x = np.asarray(a.raw("x"))
    idx = np.asarray(a.raw("indices")).astype(np.int64)
    bd = a.int("batch_dims", 0)
    if bd == 0:
        return x[tuple(np.moveaxis(idx, -1, 0))]
    bshape = x.shape[:bd]
    xf = x.reshape((-1,) + x.shape[bd:])
    idf = idx.reshape((-1,) + idx.shape[bd:])
    out = np.stack([xf[i][tuple(np.moveaxis(idf[i], -1, 0))] for i in range(xf.shape[0])])
    return out.reshape(bshape + out.shape[1:])


@kernel("scatter", "scatter_along_axis", "scatter_nd")
def _scatter(a):
    x = np.array(a.raw("data"), copy=True)
    idx = np.asarray(a.raw("indices")).astype(np.int64)
    upd = np.asarray(a.raw("updates"))
    mode = a.str("mode", "update")
    if a.op_type == "scatter":  # 1-D indices along `axis`
        axis = a.int("axis", 0) % x.ndim
        view, um, target = np.moveaxis(x, axis, 0), np.moveaxis(upd, axis, 0), (idx,)
    elif a.op_type == "scatter_along_axis":
        axis = a.int("axis", 0) % x.ndim
        grids = list(np.indices(idx.shape, sparse=True))
        grids[axis] = idx
        target, view, um = tuple(grids), x, upd
    else:
        target, view, um = tuple(np.moveaxis(idx, -1, 0)), x, upd
    ufuncs = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
              "max": np.maximum, "min": np.minimum}
    if mode == "update":
        view[target] = um
    elif mode in ufuncs:
        ufuncs[mode].at(view, target, um)
    else:
        raise ValueError(f"unknown scatter mode {mode}")
    return x


@kernel("tile")
def _tile(a):
    return np.tile(a.raw("x"), a.ints("reps"))


@kernel("reverse")
def _reverse(a):
    x = np.asarray(a.raw("x"))
    axes = a.ints("axes", None) if a.has("axes") else list(range(x.ndim))
    return np.flip(x, axis=tuple(axes))


@kernel("pad")
def _pad(a):
    x = np.asarray(a["x"])
    pad = a.ints("pad")
    k = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in range(k)]
    mode = a.str("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=a.float("constant_val", 0.0))
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"unknown pad mode {mode}")


@kernel("fill")
def _fill(a):
    return np.full(a.ints("shape"), a.raw("value", 0.0))


@kernel("fill_like")
def _fill_like(a):
    return np.full(np.shape(a.raw("ref_tensor")), a.raw("value", 0.0))


@kernel("shape")
def _shape(a):
    return np.array(np.shape(a.raw("x")), dtype=np.int32)


@kernel("range_1d")
def _range_1d(a):
    return np.arange(a.raw("start"), a.raw("end"), a.raw("step"))


@kernel("band_part")
def _band_part(a):
    x = np.asarray(a.raw("x"))
    lower, upper = a.int("lower", -1), a.int("upper", -1)
    m, n = x.shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = np.ones((m, n), dtype=bool)
    if lower >= 0:
        keep &= (i - j) <= lower
    if upper >= 0:
        keep &= (j - i) <= upper
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


@kernel("one_hot")
def _one_hot(a):
    idx = np.asarray(a.raw("indices")).astype(np.int64)
    depth = a.int("one_hot_vector_size")
    axis = a.int("axis", -1)
    on, off = a.raw("on_value", 1), a.raw("off_value", 0)
    hot = idx[..., None] == np.arange(depth)
    out = np.where(hot, on, off)
    return np.moveaxis(out, -1, axis % out.ndim)


@kernel("topk")
def _topk(a):
    x = np.asarray(a["x"])
    axis = a.int("axis", -1) % x.ndim
    k = a.int("k", 1)
    asc = a.bool("ascending", False)
    order = np.argsort(x if asc else -x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    vals = np.take_along_axis(x, idx, axis=axis)
    if not a.bool("return_indices", True):
        return vals
    return vals, idx.astype(np.int32)


@kernel("argsort")
def _argsort(a):
    x = np.asarray(a["x"])
    axis = a.int("axis", -1)
    return np.argsort(x if a.bool("ascending", False) else -x, axis=axis, kind="stable").astype(np.int32)


@kernel("depth_to_space")
def _depth_to_space(a):
    x = np.asarray(a.raw("x"))
    b = a.int("block_size")
    n, c, h, w = x.shape
    y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("space_to_depth")
def _space_to_depth(a):
    x = np.asarray(a.raw("x"))
    b = a.int("block_size")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@kernel("pixel_shuffle")
def _pixel_shuffle(a):
    x = np.asarray(a.raw("x"))
    r = a.int("upscale_factor")
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


@kernel("pixel_unshuffle")
def _pixel_unshuffle(a):
    x = np.asarray(a.raw("x"))
    r = a.int("downscale_factor")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * r * r, h // r, w // r)


# ----------------------------------------------------------------------------------------------
# resampling (last two axes are H, W)


@kernel("upsample_nearest_neighbor")
def _upsample_nearest(a):
    x = np.asarray(a.raw("x"))
    sh, sw = a.float("scale_factor_height", 1.0), a.float("scale_factor_width", 1.0)
    h, w = x.shape[-2:]
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    if sh == int(sh) and sw == int(sw):
        return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)
    ih = np.minimum(np.floor(np.arange(oh) / sh).astype(np.int64), h - 1)
    iw = np.minimum(np.floor(np.arange(ow) / sw).astype(np.int64), w - 1)
    return x[..., ih, :][..., iw]


@kernel("resize_nearest_neighbor")
def _resize_nearest(a):
    x = np.asarray(a.raw("x"))
    h, w = x.shape[-2:]
    oh, ow = a.int("target_size_height"), a.int("target_size_width")
    ih = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
    iw = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
    return x[..., ih, :][..., iw]


def _grid(n_in, n_out, mode):
    """Source coordinates of each output sample (see resize_bilinear's sampling_mode doc)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([(n_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        s = n_in / n_out
        g = i * s + 0.5 * s - 0.5
    else:
        raise ValueError(f"unknown sampling_mode {mode}")
    return np.clip(g, 0, n_in - 1)


def _lerp_axis(x, coords, axis):
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    frac = (coords - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _bilinear(x, oh, ow, mode_h, mode_w=None):
    h, w = x.shape[-2:]
    y = _lerp_axis(x, _grid(h, oh, mode_h), x.ndim - 2)
    return _lerp_axis(y, _grid(w, ow, mode_w or mode_h), x.ndim - 1)


@kernel("resize_bilinear")
def _resize_bilinear(a):
    x = a["x"]
    return _bilinear(x, a.int("target_size_height", 1), a.int("target_size_width", 1), a.str("sampling_mode", "DEFAULT"))


@kernel("upsample_bilinear")
def _upsample_bilinear(a):
    x = a["x"]
    sh, sw = a.float("scale_factor_height", 1.0), a.float("scale_factor_width", 1.0)
    h, w = x.shape[-2:]
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    align = a.bool("align_corners", True)
    half = a.bool("half_pixel_centers", not align)
    if align:
        return _bilinear(x, oh, ow, "STRICT_ALIGN_CORNERS")
    ch = np.arange(oh) / sh
    cw = np.arange(ow) / sw
    if half:
        ch, cw = (np.arange(oh) + 0.5) / sh - 0.5, (np.arange(ow) + 0.5) / sw - 0.5
    y = _lerp_axis(x, np.clip(ch, 0, h - 1), x.ndim - 2)
    return _lerp_axis(y, np.clip(cw, 0, w - 1), x.ndim - 1)


@kernel("resize")
def _resize(a):
    x = a["x"]
    shape = a.ints("shape")
    dims = a.ints("resized_dims")
    mode = a.str("interpolation_mode", "LINEAR")
    sampling = a.str("sampling_mode", "DEFAULT")
    for k in range(dims, 0, -1):
        axis = x.ndim - k
        n_out = shape[-k] if shape[-k] > 0 else x.shape[axis]
        n_in = x.shape[axis]
        if mode == "LINEAR":
            x = _lerp_axis(x, _grid(n_in, n_out, sampling), axis)
        elif mode == "NEAREST_NEIGHBOR":
            idx = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
            x = np.take(x, idx, axis=axis)
        else:
            raise ValueError(f"resize: unknown interpolation_mode {mode}")
    return x


@kernel("crop")
def _crop(a):
    x = np.asarray(a.raw("x"))
    ch, cw = a.ints("crop_height"), a.ints("crop_width")
    h, w = x.shape[-2:]
    return x[..., ch[0]:h - ch[1], cw[0]:w - cw[1]]


# ----------------------------------------------------------------------------------------------
# activation quantization (iOS17)


def _promote(p, x, axis):
    p = np.asarray(p)
    if p.ndim == 0 or axis is None:
        return p
    shape = [1] * x.ndim
    shape[axis % x.ndim] = p.size
    return p.reshape(shape)


@kernel("quantize")
def _quantize(a):
    x = a["input"]
    axis = a.int("axis") if a.has("axis") else None
    target = cx._dtype_from_name(a.str("output_dtype"))
    info = np.iinfo(target)
    q = np.round(x / _promote(a["scale"], x, axis))
    if a.has("zero_point"):
        q = q + _promote(np.asarray(a.raw("zero_point")).astype(np.float32), x, axis)
    return np.clip(q, info.min, info.max).astype(target)


@kernel("dequantize")
def _dequantize(a):
    x = np.asarray(a.raw("input")).astype(np.float32)
    axis = a.int("axis") if a.has("axis") else None
    if a.has("zero_point"):
        x = x - _promote(np.asarray(a.raw("zero_point")).astype(np.float32), x, axis)
    return x * _promote(a["scale"], x, axis)


# ----------------------------------------------------------------------------------------------
# compressed constants (materialised once, at load)


@kernel("constexpr_affine_dequantize")
def _k_affine_dequantize(a):
    return cx.affine_dequantize(a.raw("quantized_data"), a.raw("zero_point"), a.raw("scale"), a.int("axis"))


@kernel("constexpr_cast")
def _k_constexpr_cast(a):
    return cx.cast(a.raw("source_val"), a.str("output_dtype"))


@kernel("constexpr_lut_to_dense")
def _k_lut_to_dense(a):
    if a.has("shape"):  # iOS16 form
        return cx.lut_to_dense_ios16(a.raw("lut"), a.raw("indices"), a.ints("shape"))
    vector_axis = a.int("vector_axis") if a.has("vector_axis") else None
    return cx.lut_to_dense_ios18(a.raw("indices"), a.raw("lut"), vector_axis)


@kernel("constexpr_sparse_to_dense")
def _k_sparse_to_dense(a):
    if a.has("shape"):  # iOS16 form
        return cx.sparse_to_dense_ios16(a.raw("nonzero_data"), a.raw("mask"), a.ints("shape"))
    return cx.sparse_to_dense_ios18(a.raw("nonzero_data"), a.raw("mask"))


@kernel("constexpr_blockwise_shift_scale")
def _k_blockwise_shift_scale(a):
    return cx.blockwise_shift_scale(a.raw("data"), a.raw("scale"), a.raw("offset", None))


@kernel("constexpr_lut_to_sparse")
def _k_lut_to_sparse(a):
    vector_axis = a.int("vector_axis") if a.has("vector_axis") else None
    return cx.lut_to_sparse(a.raw("indices_mask"), a.raw("indices_nonzero_data"), a.raw("lut"), vector_axis)


@kernel("constexpr_sparse_blockwise_shift_scale")
def _k_sparse_blockwise_shift_scale(a):
    return cx.sparse_blockwise_shift_scale(
        a.raw("data_mask"), a.raw("nonzero_data"), a.raw("scale"), a.raw("offset", None)
    )
