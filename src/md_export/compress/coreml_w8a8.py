"""Core ML W8A8 on Linux: int8 weights (per channel) plus int8 activations at conv/linear/add
inputs and outputs, as quantize/dequantize pairs.

coremltools' linear_quantize_activations measures activation ranges by calling predict (macOS
only). Here the ranges come from md-export's MIL evaluator (milrun) running the saved program op
by op on the recorded calibration inputs; the quantize/dequantize ops are then written by
coremltools' own graph passes, given those ranges.
"""

from __future__ import annotations

import numpy as np

from md_export.compress.calibration import calibration_feeds
from md_export.compress.coreml import linear_int8, load, save_over
from md_export.milrun import MilEvaluator


def activation_stats(path, feeds: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """{MIL variable name: {"rmin", "rmax"}} over every non-constant value and every input."""
    # the numpy kernels: these ranges are written into the bundle, so they must not move with the
    # machine's thread count or torch's kernel choice (bundle bytes reproducible)
    ev = MilEvaluator(path, kernels="numpy")
    stats: dict[str, dict[str, float]] = {}
    consts = set(getattr(ev, "_consts", {}))
    for f in feeds:
        env = ev.trace({k: f[k] for k in ev.input_names})
        for name, value in env.items():
            if name in consts:
                continue
            a = np.asarray(value)
            if a.dtype.kind != "f" or a.size == 0:
                continue
            lo, hi = float(a.min()), float(a.max())
            s = stats.get(name)
            if s is None:
                stats[name] = {"rmin": lo, "rmax": hi}
            else:
                s["rmin"], s["rmax"] = min(s["rmin"], lo), max(s["rmax"], hi)
    return stats


def _integer_op_names(model) -> list[str]:
    """Names of the program's ops whose outputs are not floating point."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil import types

    spec = model.get_spec()
    prog = milproto.load(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)
    return [op.name for f in prog.functions.values() for op in f.operations
            if op.outputs and not all(types.is_float(o.dtype) for o in op.outputs)]


def apply_w8a8(lowered, component, context: dict) -> None:
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.models.utils import _apply_graph_pass

    feeds = calibration_feeds(component, context, limit=8)
    stats = activation_stats(lowered.path, feeds)
    model = load(lowered.path)
    # integer ops (e.g. the add that wraps negative token ids before the embedding gather) have no
    # activation range to quantize: coremltools' passes would ask for one and fail
    skip = {name: None for name in _integer_op_names(model)}
    cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                           weight_threshold=1), op_name_configs=skip)
    passes = []
    for key in ("compression::insert_prefix_quantize_dequantize_pair", "compression::insert_suffix_quantize_dequantize_pair"):
        p = PASS_REGISTRY[key]
        p.set_options([PassOption("config", cfg)])
        p.set_options([PassOption("activation_stats", stats)])
        passes.append(p)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    spec_version = max(model.get_spec().specificationVersion, 8)  # activation quantize ops: iOS17
    quantized = _apply_graph_pass(model, passes, spec_version=spec_version, skip_model_load=True)
    save_over(quantized, lowered.path)
    linear_int8(lowered.path)
    lowered.notes.append(f"int8 activations at conv/linear/add inputs and outputs, ranges from milrun over {len(feeds)} "
                         "recorded calibration inputs; int8 weights per channel")
