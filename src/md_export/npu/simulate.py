"""Run an NPU-compiled .tflite on this x86 machine, in the QNN HTP simulator that onnxruntime-qnn ships.

A fully compiled LiteRT model is one DISPATCH_OP whose custom options point at a QNN context binary appended to the
flatbuffer (bytecode_offset, bytecode_size, and the graph's entry name). LiteRT cannot run that op on x86, but
onnxruntime's QNN execution provider can load the same context binary as an ONNX `EPContext` node and execute it
on its x86 HTP simulator (libQnnHtp.so for x86-64 emulates the Hexagon ops). The QNN graph's I/O tensors carry the
TFLite tensor names, so the EPContext node binds them by name (no positional aliasing).

The simulator runs in a child process (`_htp_child.py`: npz in, npz out, one JSON line on stdout) so a crash or
a leak in the QNN libraries cannot take the caller down, and so it can run under another interpreter:
`$MD_EXPORT_NPU_PYTHON` (or `python=`) names one with numpy + onnxruntime + onnxruntime-qnn; default: this one.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from md_export.npu._errors import InputError, NpuBugError, NpuSetupError

ENV_PYTHON = "MD_EXPORT_NPU_PYTHON"
CHILD = Path(__file__).with_name("_htp_child.py")
DISPATCH = "DISPATCH_OP"

# TFLite TensorType -> (numpy dtype, ONNX TensorProto enum)
_TYPES = {
    0: ("float32", 1),
    1: ("float16", 10),
    2: ("int32", 6),
    3: ("uint8", 2),
    4: ("int64", 7),
    6: ("bool", 9),
    7: ("int16", 5),
    9: ("int8", 3),
}


@dataclasses.dataclass(frozen=True)
class IoTensor:
    name: str  # the signature's name (md-export's: sample, timestep, ...)
    tensor: str  # the TFLite tensor name, which is also the QNN graph tensor's name
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class DispatchModel:
    path: Path
    signature: str
    entry: str  # the QNN graph name inside the context binary
    bytecode_offset: int
    bytecode_size: int
    vendor: str | None
    soc: str | None
    inputs: tuple[IoTensor, ...]
    outputs: tuple[IoTensor, ...]


@dataclasses.dataclass(frozen=True)
class SimRun:
    outputs: dict[str, np.ndarray]
    load_seconds: float  # context binary load + graph finalize in the simulator
    run_seconds: float  # one execution
    wall_seconds: float  # the whole child process, including its start
    versions: dict


def _stamp(model) -> tuple[str | None, str | None]:
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() == b"LiteRtStamp":
            data = model.Buffers(md.Buffer()).DataAsNumpy()
            raw = data.tobytes() if not isinstance(data, int) else b""
            parts = [p.decode(errors="replace") for p in raw.split(b"\x00") if p]
            return (parts[0] if parts else None, parts[1] if len(parts) > 1 else None)
    return None, None


def read_dispatch(path: str | Path) -> DispatchModel:
    """Parse an NPU-compiled .tflite: its one DISPATCH_OP, the context binary's place, and the signature's I/O."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _read_dispatch(p, buf, schema, flexbuffers)


def _read_dispatch(p: Path, buf, schema, flexbuffers) -> DispatchModel:
    try:
        m = schema.Model.GetRootAs(buf, 0)
        n_sub = m.SubgraphsLength()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: not a TFLite flatbuffer ({e})") from None
    if n_sub != 1 or m.SignatureDefsLength() != 1:
        raise InputError(
            f"{p}: {n_sub} subgraphs / {m.SignatureDefsLength()} signatures; the simulator runs single-signature models"
        )
    sg = m.Subgraphs(0)
    codes = [m.OperatorCodes(i).CustomCode() for i in range(m.OperatorCodesLength())]
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    dispatch = [op for op in ops if codes[op.OpcodeIndex()] == DISPATCH.encode()]
    if not dispatch:
        raise InputError(f"{p}: has no {DISPATCH}; it is not NPU-compiled")
    if len(ops) != 1:
        raise InputError(
            f"{p}: {len(ops)} ops ({len(dispatch)} {DISPATCH}); only a fully compiled model (one {DISPATCH}) can be simulated"
        )
    op = dispatch[0]
    opts = flexbuffers.Loads(op.CustomOptionsAsNumpy().tobytes())
    off, size, entry = int(opts["bytecode_offset"]), int(opts["bytecode_size"]), str(opts["name"])
    if off <= 0 or size <= 0 or off + size > len(buf):
        raise InputError(f"{p}: {DISPATCH} points at bytes {off}..{off + size} of a {len(buf)}-byte file")

    def io(t_index: int, sig_name: str) -> IoTensor:
        t = sg.Tensors(t_index)
        if t.Type() not in _TYPES:
            raise InputError(f"{p}: tensor {t.Name().decode()} has TFLite type {t.Type()}, which the simulator does not map")
        shape = tuple(int(x) for x in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return IoTensor(sig_name, t.Name().decode(), shape, _TYPES[t.Type()][0])

    sd = m.SignatureDefs(0)
    op_in = {op.Inputs(i) for i in range(op.InputsLength())}
    op_out = {op.Outputs(i) for i in range(op.OutputsLength())}
    inputs = tuple(io(sd.Inputs(i).TensorIndex(), sd.Inputs(i).Name().decode()) for i in range(sd.InputsLength()))
    outputs = tuple(io(sd.Outputs(i).TensorIndex(), sd.Outputs(i).Name().decode()) for i in range(sd.OutputsLength()))
    sig_in = {sd.Inputs(i).TensorIndex() for i in range(sd.InputsLength())}
    sig_out = {sd.Outputs(i).TensorIndex() for i in range(sd.OutputsLength())}
    if not op_in <= sig_in or op_out != sig_out:
        raise InputError(f"{p}: the {DISPATCH}'s inputs/outputs are not the signature's; cannot bind them")
    inputs = tuple(t for t, idx in zip(inputs, [sd.Inputs(i).TensorIndex() for i in range(sd.InputsLength())]) if idx in op_in)
    vendor, soc = _stamp(m)
    return DispatchModel(p, sd.SignatureKey().decode(), entry, off, size, vendor, soc, inputs, outputs)


def epcontext_model(d: DispatchModel, context_file: str) -> bytes:
    """An ONNX model of one com.microsoft EPContext node over the context binary (embed_mode=0: by file name,
    relative to the .onnx), its inputs and outputs named as the QNN graph's tensors."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise NpuSetupError(
            "the simulator needs the onnx package to wrap the context binary; pip install 'md-export[npu]'"
        ) from None

    def vi(t: IoTensor):
        return helper.make_tensor_value_info(t.tensor, _TYPES[_type_code(t.dtype)][1], list(t.shape))

    node = helper.make_node(
        "EPContext",
        [t.tensor for t in d.inputs],
        [t.tensor for t in d.outputs],
        name=d.entry,
        domain="com.microsoft",
        main_context=1,
        embed_mode=0,
        ep_cache_context=context_file,
        source="QNN",
        partition_name=d.entry,
    )
    graph = helper.make_graph([node], f"md_export_npu_{d.entry}", [vi(t) for t in d.inputs], [vi(t) for t in d.outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _type_code(dtype: str) -> int:
    for code, (np_name, _) in _TYPES.items():
        if np_name == dtype:
            return code
    raise NpuBugError(f"no TFLite type for numpy dtype {dtype}")


def _coerce_feeds(d: DispatchModel, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    want = {t.name: t for t in d.inputs}
    missing = [n for n in want if n not in feeds]
    if missing:
        raise InputError(f"{d.path}: missing input(s) {', '.join(missing)}; it takes {', '.join(want)}")
    out = {}
    for name, t in want.items():
        a = np.asarray(feeds[name])
        if tuple(a.shape) != t.shape:
            raise InputError(f"{d.path}: input '{name}' has shape {tuple(a.shape)}; the compiled model takes {t.shape}")
        target = np.dtype(t.dtype)
        if a.dtype != target:
            if a.dtype.kind != target.kind and not (a.dtype.kind in "iu" and target.kind in "iu"):
                raise InputError(f"{d.path}: input '{name}' is {a.dtype}; the compiled model takes {target}")
            a = a.astype(target)
        out[t.tensor] = np.ascontiguousarray(a)
    return out


def simulator_python(python: str | os.PathLike | None = None) -> str:
    return str(python or os.environ.get(ENV_PYTHON) or sys.executable)


def run_simulator(
    compiled_tflite: str | Path,
    feeds: Mapping[str, np.ndarray],
    *,
    python: str | os.PathLike | None = None,
    provider_options: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
) -> SimRun:
    """Run a fully compiled model once in the HTP simulator. feeds and outputs are keyed by the signature's names."""
    d = read_dispatch(compiled_tflite)
    arrays = _coerce_feeds(d, feeds)
    exe = simulator_python(python)
    with tempfile.TemporaryDirectory(prefix="md-export-htp-") as tmp:
        t = Path(tmp)
        with open(d.path, "rb") as f:
            f.seek(d.bytecode_offset)
            (t / "context.bin").write_bytes(f.read(d.bytecode_size))
        (t / "model.onnx").write_bytes(epcontext_model(d, "context.bin"))
        np.savez(t / "inputs.npz", **arrays)
        req = {
            "model": str(t / "model.onnx"),
            "inputs": str(t / "inputs.npz"),
            "outputs": [o.tensor for o in d.outputs],
            "out": str(t / "outputs.npz"),
            "provider_options": dict(provider_options or {"backend_type": "htp"}),
        }
        (t / "request.json").write_text(json.dumps(req))
        t0 = time.perf_counter()
        try:
            cmd = [exe, str(CHILD), str(t / "request.json")]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, errors="replace", timeout=timeout)
        except FileNotFoundError:
            raise NpuSetupError(f"simulator interpreter {exe} does not exist (${ENV_PYTHON})") from None
        except subprocess.TimeoutExpired:
            raise NpuBugError(f"{d.path}: the HTP simulator did not finish in {timeout:.0f} s") from None
        wall = time.perf_counter() - t0
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        if proc.returncode == 2:
            raise NpuSetupError(last or f"{exe}: onnxruntime-qnn missing")
        if proc.returncode != 0:
            raise NpuBugError(f"{d.path}: the HTP simulator failed (exit {proc.returncode}): {last[:300]}")
        if "positional name aliasing" in proc.stderr:
            raise NpuBugError(f"{d.path}: onnxruntime bound the QNN graph's I/O by position, not by name; outputs may be swapped")
        with np.load(t / "outputs.npz") as z:
            outs = {o.name: z[o.tensor] for o in d.outputs}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    return SimRun(outs, info.pop("load_seconds"), info.pop("run_seconds"), round(wall, 3), info)


def simulate(compiled_tflite: str | Path, feeds: Mapping[str, np.ndarray], **kwargs) -> dict[str, np.ndarray]:
    """Outputs of a compiled model run in the HTP simulator, keyed by the model's output names."""
    return run_simulator(compiled_tflite, feeds, **kwargs).outputs
