"""Run a saved Core ML ML-program package (.mlpackage) op by op in numpy.

The package is read as saved: the Manifest names the model spec, the spec is parsed, and
coremltools' milproto loader rebuilds the MIL program with its weights from ``weights/``. The
evaluator then walks the main function in program order:

- ``const`` values and ``constexpr_*`` weights are materialised once, at load (compressed weights
  are decompressed as Core ML does at model load; see :mod:`md_export.milrun.constexpr`);
- every other op runs through a numpy kernel (:mod:`md_export.milrun.kernels`) and its result is
  cast to the dtype the program declares for it, so fp16 programs keep fp16 activations (computed
  internally in fp32, rounded to float16 after each op);
- model inputs are cast to the declared input dtypes; outputs come back in the declared dtypes.

An op without a kernel raises :class:`md_export.core.errors.UnsupportedOpError`.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from md_export.core.errors import InputError, UnsupportedOpError

from md_export.milrun.kernels import KERNELS, OpArgs

_MANIFEST = "Manifest.json"
KERNELS_ENV = "MD_EXPORT_MILRUN_KERNELS"  # torch (the default) or numpy (the reference kernels only)


def kernel_table(choice: str | None = None) -> dict:
    """{op type: kernel}: the numpy reference kernels, with the heavy ops on torch's CPU kernels
    (:mod:`md_export.milrun.torch_kernels`) unless ``choice`` (or $MD_EXPORT_MILRUN_KERNELS) is
    ``numpy``."""
    choice = (choice or os.environ.get(KERNELS_ENV) or "torch").strip().lower()
    if choice not in ("torch", "numpy"):
        raise InputError(f"{KERNELS_ENV}={choice!r}: expected torch or numpy")
    if choice == "numpy":
        return KERNELS
    from md_export.milrun.torch_kernels import FAST

    return {**KERNELS, **FAST}


def _read_spec(path: Path):
    """Parse the package's model spec. Returns (spec, weights_dir)."""
    if not path.is_dir() or not (path / _MANIFEST).is_file():
        raise InputError(f"not a Core ML package (no {_MANIFEST}): {path}")
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
        root = manifest["rootModelIdentifier"]
        rel = manifest["itemInfoEntries"][root]["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"unreadable Core ML package manifest ({e.__class__.__name__}: {e}): {path}") from None
    model_file = path / "Data" / rel
    if not model_file.is_file():
        raise InputError(f"Core ML package has no model spec at Data/{rel}: {path}")
    from coremltools import proto

    spec = proto.Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf's DecodeError
        raise InputError(f"Core ML model spec does not parse ({e}): {path}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(
            f"Core ML package is a '{spec.WhichOneof('Type')}' model, not an ML program: {path}"
        )
    return spec, model_file.parent / "weights"


def _load_program(spec, weights_dir: Path, path: Path):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    try:
        return milproto_load(spec, spec.specificationVersion, str(weights_dir))
    except Exception as e:
        raise InputError(f"cannot rebuild the MIL program ({e.__class__.__name__}: {e}): {path}") from None


def _np_dtype(builtin):
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(builtin))


def _static_shape(var):
    shape = getattr(var, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except TypeError:  # symbolic dims
        return None


class _Step:
    __slots__ = ("op_type", "name", "kernel", "inputs", "outputs", "dtypes", "shapes")

    def __init__(self, op_type, name, kernel, inputs, outputs, dtypes, shapes):
        self.op_type, self.name, self.kernel = op_type, name, kernel
        self.inputs, self.outputs, self.dtypes, self.shapes = inputs, outputs, dtypes, shapes


class MilEvaluator:
    """Load a saved .mlpackage once; run it on numpy inputs with :meth:`predict`.

    ``kernels``: ``torch`` or ``numpy`` (see :func:`kernel_table`).

    Attributes: ``path``, ``input_names``, ``output_names``, ``input_dtypes``, ``input_shapes``,
    ``output_dtypes`` and ``ops`` (op type names of the main function, in program order).
    """

    def __init__(self, path, function: str = "main", kernels: str | None = None):
        self.path = Path(path)
        self._kernels = kernel_table(kernels)
        spec, weights_dir = _read_spec(self.path)
        prog = _load_program(spec, weights_dir, self.path)
        if function not in prog.functions:
            raise InputError(f"Core ML package has no function '{function}': {self.path}")
        func = prog.functions[function]
        self.spec_version = spec.specificationVersion

        self.input_names = [d.name for d in spec.description.input] or list(func.inputs)
        for n in self.input_names:
            if n not in func.inputs:
                raise InputError(f"model input '{n}' is not an input of the program: {self.path}")
        self.input_dtypes = {n: _np_dtype(func.inputs[n].dtype) for n in self.input_names}
        self.input_shapes = {n: _static_shape(func.inputs[n]) for n in self.input_names}

        out_vars = list(func.outputs)
        described = [d.name for d in spec.description.output]
        if described and len(described) != len(out_vars):
            raise InputError(f"model describes {len(described)} outputs, program has {len(out_vars)}: {self.path}")
        self.output_names = described or [v.name for v in out_vars]
        by_name = {v.name: v for v in out_vars}
        if all(n in by_name for n in self.output_names):
            self._out_vars = [by_name[n].name for n in self.output_names]
        else:
            self._out_vars = [v.name for v in out_vars]
        self.output_dtypes = {
            n: _np_dtype(v.dtype) for n, v in zip(self.output_names, [by_name[x] for x in self._out_vars])
        }

        self.ops: list[str] = []
        self._consts: dict[str, object] = {}
        self._steps: list[_Step] = []
        for op in func.operations:
            self.ops.append(op.op_type)
            if op.blocks:
                self._unsupported(op, "(control flow)")
            step = self._compile(op)
            if op.op_type == "const":
                self._consts[op.outputs[0].name] = _const_value(op.outputs[0])
            elif op.op_type.startswith("constexpr_"):
                self._run_step(step, self._consts)  # weights: decompressed once, at load
            else:
                self._steps.append(step)

        self._dead_after = _last_uses(self._steps, keep=set(self._out_vars) | set(self._consts))

    # ------------------------------------------------------------------------------------------

    def _unsupported(self, op, extra=""):
        raise UnsupportedOpError(
            f"Core ML op '{op.op_type}'{(' ' + extra) if extra else ''} (named '{op.name}') is not "
            f"implemented by the milrun evaluator: {self.path}"
        )

    def _compile(self, op) -> _Step:
        kernel = None
        if op.op_type != "const":
            kernel = self._kernels.get(op.op_type)
            if kernel is None:
                self._unsupported(op)
        inputs = {}
        for key, var in op.inputs.items():
            if isinstance(var, (list, tuple)):
                inputs[key] = [v.name for v in var]
            else:
                inputs[key] = var.name
        outs = [v.name for v in op.outputs]
        dtypes = [_np_dtype(v.dtype) if v.dtype is not None else None for v in op.outputs]
        shapes = [_static_shape(v) for v in op.outputs]
        return _Step(op.op_type, op.name, kernel, inputs, outs, dtypes, shapes)

    def _run_step(self, step: _Step, env: dict):
        values = {
            k: ([env[n] for n in v] if isinstance(v, list) else env[v]) for k, v in step.inputs.items()
        }
        args = OpArgs(step.op_type, step.name, values, step.dtypes, step.shapes)
        try:
            result = step.kernel(args)
        except UnsupportedOpError:
            raise
        except Exception as e:
            raise RuntimeError(
                f"milrun: op '{step.op_type}' (named '{step.name}') failed: {e.__class__.__name__}: {e}"
            ) from e
        if not isinstance(result, tuple):
            result = (result,)
        if len(result) != len(step.outputs):
            raise RuntimeError(
                f"milrun: op '{step.op_type}' (named '{step.name}') produced {len(result)} outputs, "
                f"the program declares {len(step.outputs)}"
            )
        for name, value, dtype, shape in zip(step.outputs, result, step.dtypes, step.shapes):
            value = np.asarray(value)
            if dtype is not None and value.dtype != dtype:
                value = value.astype(dtype)
            if shape is not None and value.shape != shape:
                raise RuntimeError(
                    f"milrun: op '{step.op_type}' (named '{step.name}') output '{name}' has shape "
                    f"{value.shape}, the program declares {shape}"
                )
            env[name] = value

    # ------------------------------------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the program. ``inputs`` maps every model input name to an array (cast to the
        declared dtype). Returns {output name: array in the declared output dtype}."""
        env = self.trace(inputs, keep=False)
        out = {}
        for name, var in zip(self.output_names, self._out_vars):
            out[name] = np.asarray(env[var]).astype(self.output_dtypes[name], copy=False)
        return out

    def trace(self, inputs: Mapping[str, np.ndarray], keep: bool = True) -> dict[str, np.ndarray]:
        """Run the program and return every value by its MIL variable name (for bisecting).
        ``keep=False`` drops each intermediate after its last use (what :meth:`predict` does: at
        full size the UNet's attention scores alone are gigabytes), leaving the outputs."""
        unknown = sorted(set(inputs) - set(self.input_names))
        missing = [n for n in self.input_names if n not in inputs]
        if unknown or missing:
            raise InputError(
                f"inputs for {self.path.name} must be {self.input_names}; "
                f"missing {missing}, unknown {unknown}"
            )
        env = dict(self._consts)
        for n in self.input_names:
            x = np.asarray(inputs[n])
            want = self.input_shapes[n]
            if want is not None and tuple(x.shape) != want:
                raise InputError(f"input '{n}' of {self.path.name} has shape {tuple(x.shape)}, expected {want}")
            env[n] = np.ascontiguousarray(x.astype(self.input_dtypes[n], copy=False))
        for step, dead in zip(self._steps, self._dead_after):
            self._run_step(step, env)
            if not keep:
                for name in dead:
                    env.pop(name, None)
        return env

    def profile(self, inputs: Mapping[str, np.ndarray]) -> collections.Counter:
        """Run the program once and return {op type: seconds spent in its kernels} (which kernels
        a full-size check waits on)."""
        spent: collections.Counter = collections.Counter()
        run = self._run_step

        def timed(step, env):
            t0 = time.perf_counter()
            run(step, env)
            spent[step.op_type] += time.perf_counter() - t0

        self._run_step = timed
        try:
            self.trace(inputs, keep=False)
        finally:
            del self._run_step
        return spent

    def constant(self, name: str) -> np.ndarray:
        """A constant of the program by its MIL variable name; ``constexpr_*`` outputs are
        returned decompressed (as materialised at load)."""
        try:
            return self._consts[name]
        except KeyError:
            raise KeyError(f"no constant named '{name}' in {self.path}") from None

    def __repr__(self):
        return f"MilEvaluator({str(self.path)!r}, inputs={self.input_names}, outputs={self.output_names}, ops={len(self.ops)})"


def _last_uses(steps: list[_Step], keep: set[str]) -> list[list[str]]:
    """For each step, the values no later step reads (its inputs and unread outputs), except
    those in ``keep`` (outputs and constants)."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for v in step.inputs.values():
            for name in v if isinstance(v, list) else [v]:
                last[name] = i
        for name in step.outputs:
            last.setdefault(name, i)
    dead: list[list[str]] = [[] for _ in steps]
    for name, i in last.items():
        if name not in keep:
            dead[i].append(name)
    return dead


def _const_value(var):
    v = var.val
    if isinstance(v, np.ndarray) or isinstance(v, str):
        return v
    if isinstance(v, (bool, int, float, np.generic)):
        return np.asarray(v, dtype=_np_dtype(var.dtype)) if var.dtype is not None else np.asarray(v)
    return v


def run_mlpackage(path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Load ``path`` and run it once on ``inputs``."""
    return MilEvaluator(path).predict(inputs)


def op_histogram(path, function: str = "main") -> collections.Counter:
    """Op type -> count in the package's ``function`` (all ops, including ``const``).

    Reads the spec only: no weights are loaded and no kernels are needed.
    """
    path = Path(path)
    spec, _ = _read_spec(path)
    funcs = spec.mlProgram.functions
    if function not in funcs:
        raise InputError(f"Core ML package has no function '{function}': {path}")
    f = funcs[function]
    block = f.block_specializations[f.opset]
    counter: collections.Counter = collections.Counter()

    def walk(b):
        for op in b.operations:
            counter[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    walk(block)
    return counter


__all__ = ["MilEvaluator", "run_mlpackage", "op_histogram"]
