"""Materialise compressed Core ML weights (`constexpr_*` ops) in numpy.

Each function takes the op's constant inputs as numpy arrays and returns the dense tensor(s)
Core ML would build at load time. Semantics follow the op definitions in coremltools
(`mil/ops/defs/iOS16/constexpr_ops.py`, `iOS18/compression.py`):

- iOS16 ``constexpr_affine_dequantize``: ``(q - zero_point) * scale``, scale/zero_point scalar
  or a vector along ``axis``.
- ``constexpr_cast``: fp16 source widened to the declared output dtype.
- iOS16 ``constexpr_lut_to_dense``: a flat LUT of 2**n entries, indices bit-packed LSB first
  into a uint8 vector, output reshaped to ``shape``.
- iOS16 ``constexpr_sparse_to_dense``: a bit-packed (LSB first) uint8 mask over the flattened
  output; set bits take the next value of ``nonzero_data``, in order.
- iOS18 ``constexpr_blockwise_shift_scale``: ``scale * (data - offset)`` where ``scale`` and
  ``offset`` have the rank of ``data`` and each of their entries covers a block of
  ``data.shape[i] // scale.shape[i]`` along every axis.
- iOS18 ``constexpr_lut_to_dense``: ``lut`` has shape ``[*G, NUM_PALETTES, VECTOR_SIZE]`` with one
  palette per block of the indices (``indices.shape[i] // G[i]`` along axis i); with VECTOR_SIZE
  > 1 each index expands to VECTOR_SIZE consecutive values along ``vector_axis``.
- iOS18 ``constexpr_sparse_to_dense``: a uint1 mask with the output's shape.
- iOS18 ``constexpr_lut_to_sparse`` / ``constexpr_sparse_blockwise_shift_scale``: the same
  decompressions applied to sparse data; they return ``(mask, nonzero_values)`` for a following
  ``constexpr_sparse_to_dense``.

Sub-byte inputs (uint1..uint6, int4) arrive unpacked, one element per uint8/int8, because the
program loader expands them.
"""

from __future__ import annotations

import numpy as np


def unpack_bits_lsb_first(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Unsigned ``nbits``-bit integers packed least-significant bit first into bytes."""
    bits = np.unpackbits(np.asarray(packed).astype(np.uint8, copy=False).reshape(-1), bitorder="little")
    needed = nbits * count
    if bits.size < needed:
        raise ValueError(f"packed data holds {bits.size} bits, {needed} needed")
    bits = bits[:needed].reshape(count, nbits).astype(np.uint32)
    weights = (1 << np.arange(nbits, dtype=np.uint32))
    return bits @ weights


def _promote_along_axis(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0:
        return param
    shape = [1] * rank
    shape[axis] = param.size
    return param.reshape(shape)


def affine_dequantize(quantized_data, zero_point, scale, axis) -> np.ndarray:
    q = np.asarray(quantized_data)
    axis = int(axis) % max(q.ndim, 1)
    scale = np.asarray(scale)
    zp = _promote_along_axis(np.asarray(zero_point).astype(np.float32), q.ndim, axis)
    out = (q.astype(np.float32) - zp) * _promote_along_axis(scale.astype(np.float32), q.ndim, axis)
    return out.astype(scale.dtype)


def cast(source_val, output_dtype: str) -> np.ndarray:
    return np.asarray(source_val).astype(_dtype_from_name(output_dtype))


def lut_to_dense_ios16(lut, indices, shape) -> np.ndarray:
    lut = np.asarray(lut).reshape(-1)
    nbits = int(round(np.log2(lut.size)))
    count = int(np.prod(shape))
    idx = unpack_bits_lsb_first(indices, nbits, count)
    return lut[idx].reshape([int(s) for s in shape])


def sparse_to_dense_ios16(nonzero_data, mask, shape) -> np.ndarray:
    count = int(np.prod(shape))
    bits = unpack_bits_lsb_first(mask, 1, count).astype(bool)
    nonzero_data = np.asarray(nonzero_data)
    out = np.zeros(count, dtype=nonzero_data.dtype)
    out[bits] = nonzero_data.reshape(-1)
    return out.reshape([int(s) for s in shape])


def _block_repeat(param: np.ndarray, full_shape) -> np.ndarray:
    """Expand a per-block parameter to ``full_shape`` (each entry covers a block)."""
    for ax, (n, g) in enumerate(zip(full_shape, param.shape)):
        if g != n:
            if n % g:
                raise ValueError(f"axis {ax}: {n} is not a multiple of {g} blocks")
            param = np.repeat(param, n // g, axis=ax)
    return param


def blockwise_shift_scale(data, scale, offset=None) -> np.ndarray:
    data = np.asarray(data)
    scale = np.asarray(scale)
    x = data.astype(np.float32)
    if offset is not None:
        x = x - _block_repeat(np.asarray(offset).astype(np.float32), data.shape)
    x = x * _block_repeat(scale.astype(np.float32), data.shape)
    return x.astype(scale.dtype)


def lut_to_dense_ios18(indices, lut, vector_axis=None) -> np.ndarray:
    indices = np.asarray(indices).astype(np.int64)
    lut = np.asarray(lut)
    k = indices.ndim
    groups = lut.shape[:k]
    n_pal, vsize = lut.shape[k], lut.shape[k + 1]
    # Flat palette id of each index: sum over axes of (position // block) * group stride.
    gid = np.zeros(indices.shape, dtype=np.int64)
    stride = 1
    for ax in reversed(range(k)):
        block = indices.shape[ax] // groups[ax]
        pos = np.arange(indices.shape[ax]) // block
        bshape = [1] * k
        bshape[ax] = indices.shape[ax]
        gid = gid + (pos * stride).reshape(bshape)
        stride *= groups[ax]
    flat_lut = lut.reshape(-1, n_pal, vsize)
    vals = flat_lut[gid, indices]  # [*indices.shape, vsize]
    if vsize == 1:
        return vals[..., 0]
    if vector_axis is None:
        raise ValueError("vector_axis is required when VECTOR_SIZE > 1")
    ax = int(vector_axis) % k
    vals = np.moveaxis(vals, -1, ax + 1)  # [..., n_ax, vsize, ...]
    shape = list(indices.shape)
    shape[ax] *= vsize
    return vals.reshape(shape)


def sparse_to_dense_ios18(nonzero_data, mask) -> np.ndarray:
    mask = np.asarray(mask)
    nonzero_data = np.asarray(nonzero_data)
    out = np.zeros(mask.shape, dtype=nonzero_data.dtype)
    out[mask != 0] = nonzero_data.reshape(-1)
    return out


def lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    dense_idx = sparse_to_dense_ios18(indices_nonzero_data, indices_mask)
    dense = lut_to_dense_ios18(dense_idx, lut, vector_axis)
    mask = np.asarray(indices_mask)
    vsize = np.asarray(lut).shape[-1]
    if vsize > 1:
        mask = np.repeat(mask, vsize, axis=int(vector_axis) % mask.ndim)
    return mask, dense[mask != 0]


def sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    mask = np.asarray(data_mask)
    dense = sparse_to_dense_ios18(nonzero_data, mask)
    deq = blockwise_shift_scale(dense, scale, offset)
    return mask, deq[mask != 0]


_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
}


def _dtype_from_name(name: str):
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"unknown dtype name '{name}'") from None
