"""ONNX compression of a saved .onnx.

- fp16: onnxruntime's float16 converter (fp16 weights and compute, fp32 graph inputs/outputs),
  with a block list of nodes kept fp32 (the VAE decoder's overflow way through).
- int8: weight-only, per output channel, symmetric: each Conv/ConvTranspose/MatMul/Gemm/Gather
  weight initializer becomes int8 + DequantizeLinear (axis = output channels), so compute stays
  fp32 exactly as in the Core ML and TFLite int8 levels.
- w8a8: onnxruntime.quantization static QDQ (int8 weights per channel, uint8 activations) with a
  calibration reader over recorded real activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from md_export.compress.calibration import calibration_feeds, output_peaks
from md_export.core.errors import ConversionError

WEIGHT_OPS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1), "Gemm": (1, 0), "Gather": (0, 0)}


def _onnx():
    import onnx

    return onnx


def load(path: Path):
    return _onnx().load(str(path), load_external_data=True)


def save(model, path: Path) -> None:
    onnx = _onnx()
    big = model.ByteSize() > 2 * 1024**3 - 64 * 1024**2 if hasattr(model, "ByteSize") else False
    tmp = path.with_name(path.stem + ".tmp.onnx")
    onnx.save(model, str(tmp), save_as_external_data=big, location=path.name + ".data" if big else None)
    tmp.replace(path)


def to_fp16(path: Path, keep_fp32_nodes: list[str] | None = None) -> list[str]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load(path)
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                     node_block_list=list(keep_fp32_nodes or []))
    save(model, path)
    return list(keep_fp32_nodes or [])


def _axis_for(op_type: str, attrs: dict, weight: np.ndarray) -> int:
    if op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if op_type == "ConvTranspose":
        return 1 if weight.ndim > 1 else 0
    if op_type == "MatMul":
        return weight.ndim - 1
    return 0


def int8_weights(path: Path, skip: set[str] | None = None, min_elements: int = 16) -> list[str]:
    """Replace float weight initializers of WEIGHT_OPS by int8 + DequantizeLinear. Returns the
    names of the initializers quantized."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    model = load(path)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, list] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    done = []
    new_nodes = []
    for name, init in list(inits.items()):
        if init.data_type != onnx.TensorProto.FLOAT or (skip and name in skip):
            continue
        consumers = uses.get(name, [])
        if not consumers:
            continue
        kinds = {(n.op_type, i) for n, i in consumers}
        if len(kinds) != 1:
            continue
        op_type, slot = next(iter(kinds))
        if op_type not in WEIGHT_OPS or WEIGHT_OPS[op_type][0] != slot:
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_elements or w.ndim < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in consumers[0][0].attribute}
        axis = _axis_for(op_type, attrs, w)
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.abs(moved).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        # symmetric: no zero point (DequantizeLinear's default 0, int8 from the data); short names
        qname, sname = f"mdq/{len(done)}", f"mdq/{len(done)}/s"
        g.initializer.remove(init)
        g.initializer.extend([numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)])
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname], [name], axis=axis))
        done.append(name)
    for n in reversed(new_nodes):
        g.node.insert(0, n)
    _ensure_opset(model, 13)
    save(model, path)
    return done


def _ensure_opset(model, minimum: int) -> None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < minimum:
            raise ConversionError(f"onnx: opset {imp.version} has no per-axis DequantizeLinear (need {minimum})")


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def unshare_initializers(model) -> int:
    """Give every node its own copy of a float initializer that several nodes read; returns the
    number of copies made. onnxruntime's static quantizer copies a shared bias itself and names
    the copy <name><n> without looking at activation names, and the torch exporter's names are
    val_<n>: bias val_45 read by many GroupNorms gets copies val_450, val_451, ..., names the
    graph already gives to activations. Two tensors of one name either stop it ("Quantization parameter shared mode is
    not supported for weight", when the clash is a Reshape output) or wire a bias where an
    activation was. The exporter shares identical tensors (GroupNorm's ones and zeros, and norm
    weights that are still at their initial values), so the copies are small."""
    onnx = _onnx()
    g = model.graph
    floats = {i.name: i for i in g.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    readers: dict[str, list] = {}
    for node in g.node:
        for name in dict.fromkeys(node.input):  # a node reading a tensor twice is one reader
            if name in floats:
                readers.setdefault(name, []).append(node)
    taken = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.initializer} | \
        {v.name for v in (*g.input, *g.output, *g.value_info)}
    copies = 0
    for name, nodes in readers.items():
        for node in nodes[1:]:
            k = 1
            while f"{name}/copy{k}" in taken:
                k += 1
            new = f"{name}/copy{k}"
            taken.add(new)
            dup = onnx.TensorProto()
            dup.CopyFrom(floats[name])
            dup.name = new
            g.initializer.append(dup)
            for i, x in enumerate(node.input):
                if x == name:
                    node.input[i] = new
            copies += 1
    return copies


def w8a8(path: Path, calibration: list[dict[str, np.ndarray]], skip_nodes: list[str] | None = None) -> int:
    """Static QDQ quantization in place; returns how many shared initializers were copied first."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = path.with_name(path.stem + ".pre.onnx")
    out = path.with_name(path.stem + ".q.onnx")
    try:
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
    except Exception:  # shape inference is a help, not a need: quantize the file as it is
        pre = path
    model = load(pre)
    copies = unshare_initializers(model)
    pre = path.with_name(path.stem + ".pre.onnx")
    save(model, pre)
    del model
    try:
        quantize_static(str(pre), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(skip_nodes or []),
                        extra_options={"WeightSymmetric": True})
    finally:
        pre.unlink(missing_ok=True)
        pre.with_name(pre.name + ".data").unlink(missing_ok=True)
    out.replace(path)
    return copies


def inventory(path: Path) -> list[tuple[str, int, float]]:
    onnx = _onnx()
    bits = {onnx.TensorProto.FLOAT: 32, onnx.TensorProto.FLOAT16: 16, onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8,
            onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}
    model = load(path)
    out = []
    side = {}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.name.endswith(("/s", "_scale", "_zero_point")):  # ours (mdq/N/s), and onnxruntime's QDQ names
            base = init.name.removesuffix("/s")
            side[base] = side.get(base, 0) + (init.ByteSize() if base.startswith("mdq/") else n * bits.get(init.data_type, 32) // 8)
        elif init.name.startswith("mdq/"):  # framing of our int8 tensors
            side[init.name] = side.get(init.name, 0) + init.ByteSize() - n
    for node in model.graph.node:  # our DequantizeLinear nodes
        if node.op_type == "DequantizeLinear" and node.input and node.input[0].startswith("mdq/"):
            side[node.input[0]] = side.get(node.input[0], 0) + node.ByteSize()
    for init in model.graph.initializer:
        if init.data_type not in bits or init.name.endswith(("/s", "_scale", "_zero_point")):
            continue
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        if n > 1:
            out.append((init.name, n, float(bits[init.data_type]), side.get(init.name, 0)))
    for node in model.graph.node:  # the dynamo exporter also stores weights as Constant nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in bits:
                    n = int(np.prod(a.t.dims)) if len(a.t.dims) else 1
                    if n > 1:
                        out.append((node.output[0], n, float(bits[a.t.data_type]), 0))
    return out


FP16_SAFE = 2.0**14  # a quarter of fp16's max (65504): room for the sums that follow a layer


def fp16_guard_nodes(path: Path, component, context: dict) -> tuple[list[str], list[str]]:
    """The fp16 overflow way through: layers whose fp32 outputs (torch reference, recorded or
    example inputs) come near fp16's range, and the nodes of their parent blocks, kept fp32."""
    if component.module is None:
        return [], []
    if context.get("plan") is not None and context.get("checkpoint") is not None:
        feeds = calibration_feeds(component, context, limit=4)
    else:
        feeds = [{s.name: t.numpy() for s, t in zip(component.inputs, component.example_inputs(seed=i))} for i in range(2)]
    peaks = output_peaks(component.module, feeds, [s.name for s in component.inputs])
    hot = sorted(m for m, v in peaks.items() if v > FP16_SAFE)
    if not hot:
        return [], []
    scopes = {m.rsplit(".", 1)[0] if "." in m else m for m in hot}
    model = load(path)
    nodes = []
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        names = meta.get("pkg.torch.onnx.name_scopes", "")
        if any(f"'{s}'" in names for s in scopes):
            nodes.append(node.name)
    return hot, nodes


def apply(lowered, component, level, context: dict):
    if level.kind == "fp16":
        hot, keep = fp16_guard_nodes(lowered.path, component, context)
        to_fp16(lowered.path, keep)
        lowered.precision = "fp16"
        if keep:
            lowered.notes.append(f"fp16 overflow guard: {len(keep)} nodes kept fp32 around {len(hot)} layers whose outputs "
                                 f"exceed {FP16_SAFE:g} in fp32: {', '.join(hot[:8])}")
    elif level.kind == "int8":
        done = int8_weights(lowered.path)
        lowered.notes.append(f"int8 weights (per channel, symmetric, DequantizeLinear) on {len(done)} initializers")
    elif level.kind == "w8a8":
        if "external data" in lowered.notes:  # quantize_static here reads and writes single-file models only
            raise ConversionError(f"onnx: w8a8 of '{component.name}' is not supported over 2 GB (external data) yet; "
                                  "use --quantize int8 for ONNX, or w8a8 in TFLite or Core ML")

        feeds = [{k: v for k, v in f.items()} for f in calibration_feeds(component, context)]
        copies = w8a8(lowered.path, feeds)
        lowered.notes.append(f"QDQ static quantization: int8 weights per channel, uint8 activations, {len(feeds)} calibration inputs")
        if copies:
            lowered.notes.append(f"{copies} copies of float initializers shared by several nodes (one per node), so that "
                                 "onnxruntime's quantizer does not name its own copies after existing activations")
    else:
        raise ValueError(level.kind)
    return lowered
