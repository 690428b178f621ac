"""TFLite compression of a saved .tflite with ai-edge-quantizer (AEQ), tensors picked by the op's
scope (its output tensor names, which carry the torch module path).

AEQ 0.10.0 crashes on weight tensors over 32 MiB (its chunked quantizer broadcasts per-channel
scales of rank 4 onto a 2-D view: "input operand has more dimensions than allowed by the axis
remapping"). Those ops are excluded from the AEQ recipe by their exact scope and md-export
quantizes them itself afterwards (int8, per output channel, symmetric, with a DEQUANTIZE op in
front of the consumer, the same layout AEQ writes). Every such tensor is listed in the notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from md_export.compress.calibration import calibration_feeds
from md_export.core.errors import ConversionError
from md_export.core.progress import third_party_output_muted
from md_export.lower.tflite_file import op_name, tensor_name

AEQ_LIMIT_BYTES = 32 * 1024 * 1024

# TFLite builtin op -> index of its weight input and the axis of output channels in that weight
WEIGHT_OPS = {
    "FULLY_CONNECTED": (1, 0),
    "CONV_2D": (1, 0),
    "DEPTHWISE_CONV_2D": (1, 3),
    "TRANSPOSE_CONV": (1, 0),
    "EMBEDDING_LOOKUP": (1, 0),
    "BATCH_MATMUL": (1, None),
    "GATHER": (0, 0),  # embedding tables as litert-torch writes them; AEQ has no GATHER weights
}
OP_CLASSES = {"fc": ("FULLY_CONNECTED", "BATCH_MATMUL"), "conv": ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"),
              "embedding": ("EMBEDDING_LOOKUP", "GATHER")}


@dataclass
class WeightOp:
    subgraph: int
    index: int
    op: str
    scope: str
    tensor: int
    name: str
    shape: tuple[int, ...]
    nbytes: int
    buffer: int


def _fbu():
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils


def read(path: Path):
    return read_bytes(Path(path).read_bytes())


def read_bytes(data):
    """The model object, with every buffer's data as a uint8 numpy array. litert's reader leaves
    buffers stored by offset (models over 2 GB) as byte slices, and the flatbuffers object API packs
    anything but an ndarray one byte per Python call: hours for a full-size UNet."""
    model = _fbu().read_model_from_bytearray(data)
    for buf in model.buffers:
        if buf.data is not None and type(buf.data) is not np.ndarray:
            buf.data = np.frombuffer(bytes(buf.data), dtype=np.uint8)
    return model


def weight_ops(model) -> list[WeightOp]:
    """Ops with a constant float weight input: what weight quantization can touch."""
    out = []
    for si, sg in enumerate(model.subgraphs):
        for oi, op in enumerate(sg.operators):
            name = op_name(model, op)
            if name not in WEIGHT_OPS:
                continue
            widx = WEIGHT_OPS[name][0]
            if len(op.inputs) <= widx or op.inputs[widx] < 0:
                continue
            t = sg.tensors[op.inputs[widx]]
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if data is None or len(data) == 0 or t.type != 0:  # 0 = FLOAT32
                continue
            names = [tensor_name(sg.tensors[i]) for i in op.outputs if i >= 0]
            scope = ";".join(n for n in names if n) + (";" if names else "")
            out.append(WeightOp(si, oi, name, scope, op.inputs[widx], tensor_name(t), tuple(int(s) for s in t.shape), len(data), t.buffer))
    return out


def _entry(regex: str, op: str, algorithm: str, weight: dict | None = None, activation: dict | None = None,
           compute: str = "FLOAT", explicit_dequantize: bool = True) -> dict:
    cfg: dict = {"compute_precision": compute, "explicit_dequantize": explicit_dequantize, "skip_checks": False}
    if weight:
        cfg["weight_tensor_config"] = weight
    if activation:
        cfg["activation_tensor_config"] = activation
    return {"regex": regex, "operation": op, "algorithm_key": algorithm, "op_config": cfg}


def _int_weight(bits: int, granularity: str = "CHANNELWISE") -> dict:
    return {"num_bits": bits, "symmetric": True, "granularity": granularity, "dtype": "INT"}


FP16_WEIGHT = {"num_bits": 16, "symmetric": True, "granularity": "TENSORWISE", "dtype": "FLOAT"}


def rule(kind: str, regex: str = ".*", op: str = "*") -> list[dict]:
    """One recipe rule: kind is fp16 | int8 | int4-block32 | int4 | none | w8a8."""
    if kind == "none":
        return [{"regex": regex, "operation": op, "algorithm_key": "no_quantize", "op_config": {}}]
    if kind == "fp16":
        ops = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "EMBEDDING_LOOKUP") if op == "*" else (op,)
        return [_entry(regex, o, "float_casting", FP16_WEIGHT) for o in ops]
    if kind == "int8":
        return [_entry(regex, op, "min_max_uniform_quantize", _int_weight(8))]
    if kind == "int4":
        return [_entry(regex, op, "min_max_uniform_quantize", _int_weight(4))]
    if kind.startswith("int4-block"):
        size = int(kind.removeprefix("int4-block"))
        # AEQ has blockwise int4 only as dynamic-range quantization (integer compute, activations
        # quantized at run time), not weight-only
        return [_entry(regex, op, "min_max_uniform_quantize", _int_weight(4, f"BLOCKWISE_{size}"), compute="INTEGER",
                       explicit_dequantize=False)]
    if kind == "w8a8":
        act = {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE", "dtype": "INT"}
        return [_entry(regex, op, "min_max_uniform_quantize", _int_weight(8), act, compute="INTEGER", explicit_dequantize=False)]
    raise ValueError(kind)


_AEQ_OP = {"TRANSPOSE_CONV": "CONV_2D_TRANSPOSE"}


def quantize_file(src: Path, dest: Path, recipe: list[dict], calibration: dict | None = None,
                  big_kind: str | None = "int8", gather_int8: bool = False) -> dict:
    """Run AEQ with `recipe` on `src`, excluding ops whose weight is over AEQ's 32 MiB limit, then
    quantize those with md-export's own int8 (when big_kind is int8; otherwise keep them float).
    Returns what happened: {"aeq_ops": n, "own_int8": [names], "kept_float": [names]}."""
    model = read(src)
    wops = weight_ops(model)
    big = [w for w in wops if w.nbytes > AEQ_LIMIT_BYTES and w.op != "GATHER"] if big_kind != "skip" else []
    full = list(recipe) + [r for w in big for r in rule("none", "^" + re.escape(w.scope) + "$")]
    del model
    # AEQ draws tqdm bars (calibration has no switch for them) and its interpreters log from C++
    with third_party_output_muted():
        from ai_edge_quantizer import quantizer

        q = quantizer.Quantizer(str(src), full)
        calib = None
        if q.need_calibration:
            if not calibration:
                raise ConversionError("tflite: this level needs calibration data")
            calib = q.calibrate(calibration)
        result = q.quantize(calib, enable_progress_bar=False, enable_progress_report=False)
    data = result.quantized_model
    info = {"own_int8": [], "kept_float": []}
    tables = []
    if big_kind == "int8" or gather_int8:
        # embedding tables (GATHER) that AEQ cannot quantize, when the level quantizes embeddings
        model = read_bytes(data)
        tables = [w.name for w in weight_ops(model) if w.op in ("GATHER", "EMBEDDING_LOOKUP") and w.nbytes >= 16 * 1024] if gather_int8 else []
    if (big and big_kind == "int8") or tables:
        model = read_bytes(data)
        names = list(dict.fromkeys(([w.name for w in big] if big_kind == "int8" else []) + tables))
        info["own_int8"] = quantize_weights_int8(model, names)
        data = _fbu().convert_object_to_bytearray(model)
        if big_kind != "int8" and big:
            info["kept_float"] = [w.name for w in big]
    elif big:
        info["kept_float"] = [w.name for w in big]
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(dest)
    return info


def _opcode_index(model, builtin: int) -> int:
    from ai_edge_litert import schema_py_generated as schema

    for i, c in enumerate(model.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def symmetric_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis) symmetric int8 in [-127, 127]; returns (q, scale per channel)."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.array([np.abs(w).max()], dtype=np.float32)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale[0]), -127, 127).astype(np.int8)
        return q, scale
    moved = np.moveaxis(w, axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.empty(moved.shape, dtype=np.int8)
    for c in range(moved.shape[0]):  # one channel at a time: no tensor-sized float temporaries
        q[c] = np.clip(np.rint(moved[c] / scale[c]), -127, 127)
    return np.moveaxis(q, 0, axis), scale


def quantize_weights_int8(model, tensor_names: list[str]) -> list[str]:
    """In a ModelT: replace each named float weight by an int8 per-channel tensor feeding a new
    DEQUANTIZE op whose output is the original tensor (so consumers are unchanged)."""
    from ai_edge_litert import schema_py_generated as schema

    wanted = set(tensor_names)
    done = []
    deq = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE)
    for si, sg in enumerate(model.subgraphs):
        axes = {}
        for op in sg.operators:
            name = op_name(model, op)
            if name in WEIGHT_OPS and len(op.inputs) > WEIGHT_OPS[name][0]:
                axes[op.inputs[WEIGHT_OPS[name][0]]] = WEIGHT_OPS[name][1]
        new_ops = []
        for ti, t in enumerate(sg.tensors):
            if tensor_name(t) not in wanted or t.type != 0 or ti not in axes:
                continue
            raw = model.buffers[t.buffer].data
            w = np.frombuffer(np.asarray(raw, dtype=np.uint8).tobytes() if not isinstance(raw, np.ndarray) else raw.tobytes(),
                              dtype=np.float32).reshape([int(s) for s in t.shape])
            axis = axes[ti]
            q, scale = symmetric_int8(w, axis)
            buf = schema.BufferT()
            buf.data = np.frombuffer(q.tobytes(), dtype=np.uint8)
            model.buffers.append(buf)
            qt = schema.TensorT()
            qt.shape = np.asarray(t.shape, dtype=np.int32)
            qt.type = schema.TensorType.INT8
            qt.buffer = len(model.buffers) - 1
            qt.name = (tensor_name(t) + "_int8").encode()
            qp = schema.QuantizationParametersT()
            qp.scale = scale.astype(np.float32)
            qp.zeroPoint = np.zeros(scale.shape, dtype=np.int64)
            qp.quantizedDimension = 0 if axis is None else axis
            qt.quantization = qp
            sg.tensors.append(qt)
            # the float tensor becomes a run-time value produced by DEQUANTIZE; its data goes unless
            # another tensor shares the buffer
            old = t.buffer
            model.buffers.append(schema.BufferT())
            t.buffer = len(model.buffers) - 1
            if not any(o.buffer == old for g in model.subgraphs for o in g.tensors):
                model.buffers[old].data = None
                model.buffers[old].offset = 0
                model.buffers[old].size = 0
            op = schema.OperatorT()
            op.opcodeIndex = deq
            op.inputs = np.asarray([len(sg.tensors) - 1], dtype=np.int32)
            op.outputs = np.asarray([ti], dtype=np.int32)
            new_ops.append(op)
            done.append(tensor_name(t))
        sg.operators = new_ops + list(sg.operators)
    missing = wanted - set(done)
    if missing:
        raise ConversionError(f"tflite: could not quantize {len(missing)} large weight tensors: {sorted(missing)[:3]}")
    return done


def inventory(path: Path) -> list[tuple[str, int, float, int]]:
    """(tensor name, elements, stored bits) of every constant float/int weight tensor."""
    bits = {0: 32, 1: 16, 9: 8, 3: 8, 17: 4, 2: 32, 4: 64, 6: 8, 7: 16}
    model = read(path)
    out = []
    seen = set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if data is None or len(data) == 0 or t.type not in (0, 1, 9, 17) or t.buffer in seen:
                continue
            seen.add(t.buffer)
            n = int(np.prod(t.shape)) if len(t.shape) else 1
            q = t.quantization
            side = 0
            if q is not None and q.scale is not None:
                side = len(q.scale) * 4 + (len(q.zeroPoint) * 8 if q.zeroPoint is not None else 0)
            out.append((tensor_name(t), n, float(bits.get(t.type, 32)), side))
    return out


# -- levels ----------------------------------------------------------------------------------------


def recipe_for(level) -> list[dict]:
    if level.kind == "fp16":
        return rule("fp16")
    if level.kind in ("int8", "int4"):
        return rule(level.kind)
    if level.kind == "int4-block":
        return rule(f"int4-block{level.block}", op="FULLY_CONNECTED") + rule("int8", op="CONV_2D") + \
            rule("int8", op="DEPTHWISE_CONV_2D") + rule("int8", op="CONV_2D_TRANSPOSE") + rule("int8", op="EMBEDDING_LOOKUP")
    if level.kind == "mixed":
        out: list[dict] = []
        for cls, lvl in level.rules:
            for op in OP_CLASSES[cls]:
                out += rule(lvl, op=_AEQ_OP.get(op, op))
        return out
    if level.kind == "w8a8":
        # int8 activations and weights at the ops with weights; the rest stays float with
        # quantize/dequantize at the boundaries (AEQ's all-op integer recipe broke the decoder:
        # PSNR < 0 dB on the tiny VAE, its composites and norms have no int8 kernels)
        return [r for op in W8A8_OPS for r in rule("w8a8", op=op)]
    raise ValueError(level.kind)


W8A8_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def apply(lowered, component, level, context: dict):
    notes = list(lowered.notes)
    calibration = None
    if level.kind == "w8a8":
        feeds = calibration_feeds(component, context)
        calibration = {lowered.signature or component.name: feeds}
    big_kind = "int8" if level.kind in ("int8", "int4", "int4-block", "w8a8") or \
        (level.kind == "mixed" and any(lvl in ("int8", "int4") for _, lvl in level.rules)) else None
    gather = level.kind in ("int8", "int4", "int4-block", "w8a8") or \
        (level.kind == "mixed" and any(c == "embedding" and lvl in ("int8", "int4") for c, lvl in level.rules))
    info = quantize_file(lowered.path, lowered.path, recipe_for(level), calibration,
                         big_kind=big_kind if level.kind != "fp16" else "skip", gather_int8=gather)
    if info["own_int8"]:
        notes.append(f"{len(info['own_int8'])} weight tensors quantized to int8 per channel by md-export (over 32 MiB, "
                     f"where ai-edge-quantizer 0.10.0 crashes, or GATHER embedding tables it does not quantize): "
                     f"{', '.join(info['own_int8'])}")
    if info["kept_float"]:
        notes.append(f"{len(info['kept_float'])} weight tensors over 32 MiB left float: {', '.join(info['kept_float'])}")
    if level.kind == "int4-block":
        notes.append("int4 blockwise (dynamic range: activations quantized at run time) on fully-connected weights; "
                     "conv weights int8 per channel (no blockwise conv kernels)")
    lowered.notes = notes
    if level.kind == "fp16":
        lowered.precision = "fp16"
        lowered.notes.append("fp16 weights; the CPU interpreter computes in fp32, GPU delegates in fp16")
    return lowered
