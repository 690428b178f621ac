"""Core ML compression of a saved .mlpackage: reloaded with skip_model_load (Linux cannot compile),
compressed with coremltools.optimize.coreml, saved over the original.

Palettization uses md-export's own exact 1-D k-means (Lloyd's algorithm over the distinct fp16
values, weighted by their counts) as the coremltools "custom" LUT function: the same objective as
coremltools' scikit-learn k-means, a few hundred times faster on fp16 weights.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from md_export.core.errors import ConversionError, InputError
from md_export.lower.coreml_package import normalize_mlpackage

# ops whose constant weight inputs are compressed; embeddings (gather) only where the level allows
WEIGHT_OP_TYPES = ("conv", "conv_transpose", "linear", "matmul")
EMBEDDING_OP_TYPES = ("gather",)


def load(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def save_over(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.mlpackage")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp))
    normalize_mlpackage(tmp)
    shutil.rmtree(path)
    tmp.rename(path)


def deployment_target(model) -> int:
    return int(model.get_spec().specificationVersion)


IOS18_SPEC = 9


def _config(op_cfg, op_types=WEIGHT_OP_TYPES, name_configs: dict | None = None):
    import coremltools.optimize.coreml as cto

    # One global config with the ops outside op_types switched off, rather than a config per op
    # type: coremltools refuses a constant shared by ops with different configs, and a full-size
    # UNet shares deduplicated constants (equal zero biases) between layer_norm and linear ops.
    # weight_threshold keeps small constants (norm gammas, biases) uncompressed either way.
    off = {t: None for t in EMBEDDING_OP_TYPES if t not in op_types}
    return cto.OptimizationConfig(global_config=op_cfg, op_type_configs=off, op_name_configs=name_configs or {})


def int8_config(threshold: int = 2048):
    import coremltools.optimize.coreml as cto

    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                       weight_threshold=threshold)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted Lloyd k-means on 1-D data: (sorted centroids, index per element)."""
    flat = np.asarray(values).reshape(-1)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    u = uniq.astype(np.float64)
    w = counts.astype(np.float64)
    if len(u) <= k:
        lut = np.zeros(k, dtype=np.float64)
        lut[: len(u)] = u
        return lut, inverse.astype(np.uint8)
    # init at weighted quantiles: a good start for 1-D data
    cdf = np.cumsum(w) / w.sum()
    cent = u[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), len(u) - 1)]
    cent = np.unique(cent)
    while len(cent) < k:  # duplicates at heavy values: fill with spread points
        extra = np.setdiff1d(u[np.linspace(0, len(u) - 1, k).astype(int)], cent)[: k - len(cent)]
        cent = np.unique(np.concatenate([cent, extra]))
    for _ in range(iters):
        edges = (cent[1:] + cent[:-1]) / 2
        lab = np.searchsorted(edges, u)
        sw = np.bincount(lab, weights=w, minlength=k)
        sx = np.bincount(lab, weights=w * u, minlength=k)
        new = np.where(sw > 0, sx / np.maximum(sw, 1e-300), cent)
        new.sort()
        if np.allclose(new, cent, rtol=0, atol=1e-12):
            break
        cent = new
    edges = (cent[1:] + cent[:-1]) / 2
    lab = np.searchsorted(edges, u)
    return cent, lab[inverse].astype(np.uint8)


def lut_function(nbits: int) -> Callable:
    k = 1 << nbits

    def fn(weight: np.ndarray):
        lut, idx = kmeans_1d(weight, k)
        return lut.astype(weight.dtype), idx

    return fn


def palettize_config(nbits: int, group_size: int | None = None, threshold: int = 2048):
    import coremltools.optimize.coreml as cto

    kw = dict(mode="custom", lut_function=lut_function(nbits), weight_threshold=threshold)
    if group_size:
        kw.update(granularity="per_grouped_channel", group_size=group_size)
    return cto.OpPalettizerConfig(**kw)


def linear_int8(path: Path, embeddings: bool = True, skip: set[str] | None = None) -> None:
    import coremltools.optimize.coreml as cto

    model = load(path)
    ops = WEIGHT_OP_TYPES + (EMBEDDING_OP_TYPES if embeddings else ())
    names = {n: None for n in (skip or ())}
    out = cto.linear_quantize_weights(model, _config(int8_config(), ops, names))
    save_over(out, path)


def palettize(path: Path, nbits: int, group_size: int | None = None, per_op_bits: dict[str, int] | None = None,
              skip: set[str] | None = None) -> None:
    """Palettize conv/linear/matmul weights (embedding lookups left out). per_op_bits maps a
    const or op name to its own bit width (mixed-bit); 16 = leave it fp16."""
    import coremltools.optimize.coreml as cto

    model = load(path)
    if group_size and deployment_target(model) < IOS18_SPEC:
        raise InputError("coreml: per-grouped-channel palettization needs --minimum-deployment-target iOS18")
    names: dict = {n: None for n in (skip or ())}
    for name, bits in (per_op_bits or {}).items():
        names[name] = None if bits >= 16 else palettize_config(int(bits), group_size)
    out = cto.palettize_weights(model, _config(palettize_config(nbits, group_size), WEIGHT_OP_TYPES, names))
    save_over(out, path)


def to_fp16(path: Path) -> None:
    """An fp32 ML program -> fp16 compute and weights (coremltools' own fp16 cast pass)."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass

    model = load(path)
    out = _apply_graph_pass(model, PASS_REGISTRY["common::add_fp16_cast"])
    save_over(out, path)


# -- what is stored ------------------------------------------------------------------------------


def program(path: Path):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    model = load(path)
    return _convert_model_spec_to_pymil_prog(model, model.get_spec().specificationVersion, milproto_load)


def _ops(block):
    for op in block.operations:
        yield op
        for b in getattr(op, "blocks", []):
            yield from _ops(b)


def _bits(var) -> float:
    try:
        return float(var.dtype.get_bitwidth())
    except Exception:
        return float(np.asarray(var.val).dtype.itemsize * 8)


def inventory(path: Path) -> list[tuple[str, int, float, int]]:
    """(weight name, elements, stored bits per element) of the weights the program stores:
    float consts as they are, constexpr_* by their payload (indices, quantized data)."""
    prog = program(path)
    out = []
    for fn in prog.functions.values():
        for op in _ops(fn):
            if op.op_type == "const":
                v = op.outputs[0]
                if v.val is None or not np.issubdtype(np.asarray(v.val).dtype, np.floating):
                    continue
                n = int(np.asarray(v.val).size)
                if n > 1:
                    out.append((op.name, n, _bits(v), 0))
            elif op.op_type.startswith("constexpr_"):
                shape = op.outputs[0].shape
                n = int(math.prod(int(s) for s in shape))
                if op.op_type == "constexpr_lut_to_dense":
                    lut = np.asarray(op.inputs["lut"].val)
                    entries = lut.shape[0] if lut.ndim == 1 else lut.shape[-2]  # iOS16: (K,); iOS18: (..., K, dim)
                    bits = math.log2(entries) if entries > 1 else 1
                    groups = max(1, lut.size // entries)
                    out.append((op.name, n, bits, groups * entries * 2))
                else:
                    data = op.inputs.get("quantized_data") or op.inputs.get("data")
                    bits = _bits(data) if data is not None else 8
                    side = sum(int(np.asarray(v.val).size) * _bits(v) for k, v in op.inputs.items()
                               if k not in ("quantized_data", "data") and v.val is not None)
                    out.append((op.name, n, bits, int(side / 8)))
    return out


def consts_feeding(path: Path, op_types: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(const name, consuming op name, elements) for the weight consts of the given op types."""
    prog = program(path)
    out = []
    for fn in prog.functions.values():
        for op in _ops(fn):
            if op.op_type not in op_types:
                continue
            for key in ("weight", "y", "x"):
                v = op.inputs.get(key) if hasattr(op.inputs, "get") else None
                if v is not None and v.op is not None and v.op.op_type == "const" and v.val is not None and np.asarray(v.val).size > 1 \
                        and np.issubdtype(np.asarray(v.val).dtype, np.floating):
                    out.append((v.op.name, op.name, int(np.asarray(v.val).size)))
    return out


def check_spec(path: Path) -> None:
    if not (path / "Manifest.json").is_file():
        raise ConversionError(f"coreml: {path} is not an .mlpackage")
