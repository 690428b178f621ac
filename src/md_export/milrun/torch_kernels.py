"""The ops a full-size check waits on, computed by torch's CPU kernels instead of numpy's.

At full size the numpy kernels spend most of a UNet call building im2col windows for ``conv`` and
in single-threaded passes over the attention scores (``einsum``, ``mul``, ``softmax`` over
2x8x4096x4096 values), each also widened from float16 and rounded back by numpy on one core.
torch's kernels do the same arithmetic, and the widening and rounding, on every core without the
window copy. Each kernel here computes the same function as its namesake in
:mod:`md_export.milrun.kernels`, which stays the reference (``MD_EXPORT_MILRUN_KERNELS=numpy``
selects it; the tests compare the two on every op here). The MIL semantics (pads, groups,
transposes, masks) are resolved by our code; torch only does the arithmetic. Inputs are numpy
arrays viewed as tensors, not copied; a result comes back already in the dtype the program
declares (float16 rounding is round-to-nearest-even in both libraries).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from md_export.milrun import kernels as npk

FAST: dict = {}

_SMALL = 1 << 15  # below this many elements numpy's call overhead is lower than torch's
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))
_TORCH_DTYPE = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def _fast(*names):
    return npk.kernel(*names, table=FAST)


def _view(x) -> torch.Tensor:
    """A torch view of a numpy array (a copy only when it is not contiguous). Constants loaded
    from the package are read-only; they are never written here, so torch's warning is noise."""
    x = np.ascontiguousarray(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def _floats(a, *keys) -> bool:
    """Every named input is a float16 or float32 array (anything else goes to numpy, whose type
    promotion the reference kernels follow)."""
    for k in keys:
        v = a.raw(k, None)
        if v is not None and not (isinstance(v, np.ndarray) and v.dtype in _FLOATS):
            return False
    return True


def _arg(a, key):
    """Input ``key`` as a float32 tensor (float16 widened by torch), or None when absent."""
    v = a.raw(key, None)
    return None if v is None else _view(v).float()


def _result(a, t: torch.Tensor) -> np.ndarray:
    """``t`` as numpy in the op's declared output dtype when that is a float type."""
    want = a.out_dtypes[0] if a.out_dtypes else None
    if want in _TORCH_DTYPE and t.dtype != _TORCH_DTYPE[want]:
        t = t.to(_TORCH_DTYPE[want])
    return t.numpy()


def _size(a, *keys) -> int:
    return max(int(np.size(a.raw(k, 0))) for k in keys)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_nd(x, w, bias=None, strides=None, pads=None, dilations=None, groups=1) -> torch.Tensor:
    """:func:`md_export.milrun.kernels.conv_nd` for 1-3 spatial axes (explicit (begin, end) pads
    per axis, negative pads crop), as a float32 tensor."""
    nsp = x.ndim - 2
    pads = pads or [(0, 0)] * nsp
    xt = _view(x).float()
    if any(p != (0, 0) for p in pads):
        flat = []
        for lo, hi in reversed(pads):  # F.pad lists the last axis first
            flat += [int(lo), int(hi)]
        xt = F.pad(xt, flat)
    b = None if bias is None else _view(np.asarray(bias).reshape(-1)).float()
    with torch.no_grad():
        return _CONV[nsp](xt, _view(w).float(), b, stride=list(strides or [1] * nsp), dilation=list(dilations or [1] * nsp),
                          groups=groups)


@_fast("conv")
def _conv(a):
    x, w = a.raw("x"), a.raw("weight")
    nsp = x.ndim - 2
    if nsp not in _CONV or not _floats(a, "x", "weight", "bias"):
        return npk.KERNELS["conv"](a)
    strides = a.ints("strides", [1] * nsp)
    dilations = a.ints("dilations", [1] * nsp)
    keff = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations)]
    pads = npk._resolve_pads(a.str("pad_type", "valid"), a.ints("pad", [0] * 2 * nsp), x.shape[2:], keff, strides)
    return _result(a, _conv_nd(x, w, a.raw("bias", None), strides, pads, dilations, a.int("groups", 1)))


@_fast("conv_transpose")
def _conv_transpose(a):
    if a.raw("x").ndim - 2 not in _CONV:
        return npk.KERNELS["conv_transpose"](a)
    return npk._conv_transpose(a, conv=lambda *args: _conv_nd(*args).numpy())


@_fast("linear")
def _linear(a):
    if not _floats(a, "x", "weight", "bias"):
        return npk.KERNELS["linear"](a)
    with torch.no_grad():
        return _result(a, F.linear(_arg(a, "x"), _arg(a, "weight"), _arg(a, "bias")))


@_fast("matmul")
def _matmul(a):
    if not _floats(a, "x", "y") or a.raw("x").ndim < 2 or a.raw("y").ndim < 2:
        return npk.KERNELS["matmul"](a)
    x, y = _arg(a, "x"), _arg(a, "y")
    if a.bool("transpose_x", False):
        x = x.transpose(-1, -2)
    if a.bool("transpose_y", False):
        y = y.transpose(-1, -2)
    return _result(a, torch.matmul(x, y))


@_fast("einsum")
def _einsum(a):
    values = a.raw("values")
    values = values if isinstance(values, (list, tuple)) else [values]
    if not all(isinstance(v, np.ndarray) and v.dtype in _FLOATS for v in values):
        return npk.KERNELS["einsum"](a)
    return _result(a, torch.einsum(a.str("equation"), *[_view(v).float() for v in values]))


@_fast("scaled_dot_product_attention")
def _sdpa(a):
    mask = a.raw("attn_mask", None)
    if not _floats(a, "query", "key", "value") or (mask is not None and np.asarray(mask).dtype not in (np.bool_, *_FLOATS)):
        return npk.KERNELS["scaled_dot_product_attention"](a)
    m = None if mask is None else _view(np.asarray(mask))
    if m is not None and m.dtype != torch.bool:
        m = m.float()
    with torch.no_grad():
        return _result(a, F.scaled_dot_product_attention(_arg(a, "query"), _arg(a, "key"), _arg(a, "value"), attn_mask=m))


@_fast("softmax")
def _softmax(a):
    if not _floats(a, "x") or _size(a, "x") < _SMALL:
        return npk.KERNELS["softmax"](a)
    return _result(a, torch.softmax(_arg(a, "x"), dim=a.int("axis", -1)))


def _unary(name, fn):
    def run(a):
        if not _floats(a, "x") or _size(a, "x") < _SMALL:
            return npk.KERNELS[name](a)
        return _result(a, fn(_arg(a, "x")))

    FAST[name] = run


_unary("silu", F.silu)
_unary("sigmoid", torch.sigmoid)
_unary("square", torch.square)
_unary("sqrt", torch.sqrt)
_unary("exp", torch.exp)
_unary("tanh", torch.tanh)


@_fast("gelu")
def _gelu(a):
    mode = a.str("mode", "EXACT")
    if not _floats(a, "x") or _size(a, "x") < _SMALL or mode not in ("EXACT", "TANH_APPROXIMATION"):
        return npk.KERNELS["gelu"](a)
    return _result(a, F.gelu(_arg(a, "x"), approximate="none" if mode == "EXACT" else "tanh"))


def _binary(name, fn):
    """Elementwise with numpy's broadcasting; only when both sides are float arrays (numpy and
    torch promote mixed types differently) and the result is large."""
    def run(a):
        if not _floats(a, "x", "y") or _size(a, "x", "y") < _SMALL:  # (_floats: both arrays, not scalars)
            return npk.KERNELS[name](a)
        return _result(a, fn(_arg(a, "x"), _arg(a, "y")))

    FAST[name] = run


_binary("add", torch.add)
_binary("sub", torch.sub)
_binary("mul", torch.mul)
_binary("real_div", torch.div)


@_fast("layer_norm")
def _layer_norm(a):
    x = a.raw("x")
    axes = sorted(ax % x.ndim for ax in a.ints("axes", list(range(x.ndim))))
    shape = tuple(x.shape[x.ndim - len(axes):])
    trailing = axes == list(range(x.ndim - len(axes), x.ndim))
    params_fit = all(np.shape(a.raw(k, np.zeros(shape))) == shape for k in ("gamma", "beta"))
    if not (trailing and params_fit and _floats(a, "x", "gamma", "beta")):
        return npk.KERNELS["layer_norm"](a)
    with torch.no_grad():
        return _result(a, F.layer_norm(_arg(a, "x"), shape, _arg(a, "gamma"), _arg(a, "beta"), a.float("epsilon", 1e-5)))


@_fast("reduce_mean")
def _reduce_mean(a):
    if not _floats(a, "x") or _size(a, "x") < _SMALL:
        return npk.KERNELS["reduce_mean"](a)
    x = a.raw("x")
    axes = a.ints("axes", None) if a.has("axes") else None
    dims = list(range(x.ndim)) if axes is None else [ax % x.ndim for ax in axes]
    if not dims:  # numpy: over no axis is the identity; torch: over every axis
        return npk.KERNELS["reduce_mean"](a)
    return _result(a, torch.mean(_arg(a, "x"), dim=dims, keepdim=a.bool("keep_dims", False)))


__all__ = ["FAST"]
