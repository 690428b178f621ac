"""Fold the ops of a saved .tflite that read only constants, one op at a time.

litert-torch's lightweight conversion (what md-export uses for full-size pipelines) keeps every
constant of 1 MB or more out of the MLIR module, so the converter cannot fold the ops that read only
weights: conv-weight transposes, scale multiplies. Left in the file they run at every call (an
SD 1.5 UNet invoke went from 10 s to 39 s). litert-torch's remedy, runtime constant folding, builds
all of them into one constant-only model and runs it at once, which held 10.6 GB at that size.

Here each such op runs alone in LiteRT, on a model made of just its inputs, so its result is what
the runtime would compute; the result goes to a spill file, replaces the op's output as a constant,
and the model is rewritten with its buffers streamed (lower.tflite_file). The peak is the table
plus one op's tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from md_export.lower.tflite_file import Span, TableModel, op_name, schema

# Pure ops with one output: for constant inputs their result is a constant. Quantize/dequantize
# stay (folding them would undo compression), as do ops with subgraphs, state or randomness.
FOLDABLE = frozenset({
    "TRANSPOSE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CAST", "CONCATENATION", "SLICE", "STRIDED_SLICE",
    "PAD", "PACK", "GATHER", "EMBEDDING_LOOKUP", "BROADCAST_TO", "TILE", "FILL", "RANGE",
    "SELECT", "SELECT_V2", "EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "LOGICAL_AND", "LOGICAL_NOT",
    "ADD", "SUB", "MUL", "DIV", "NEG", "SQUARE", "SQRT", "RSQRT", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE",
    "FULLY_CONNECTED", "BATCH_MATMUL",
})


@dataclass
class FoldReport:
    folded: dict[str, int] = field(default_factory=dict)  # op name -> how many were folded
    left: dict[str, int] = field(default_factory=dict)  # constant-only ops md-export does not fold

    @property
    def count(self) -> int:
        return sum(self.folded.values())


def fold_constants(path: Path) -> FoldReport:
    """Fold `path` in place (a model with nothing to fold is left untouched)."""
    path = Path(path)
    report = FoldReport()
    table = TableModel(path)
    model = table.model
    spill_path = path.with_name(path.name + ".folded")
    try:
        with open(spill_path, "wb") as spill:
            plan = [(sg, op) for sg in model.subgraphs for op in _constant_ops(table, sg, report)]
            for sg, op in plan:
                out = _run_alone(table, sg, op)
                at = spill.tell()
                spill.write(out.tobytes())
                spill.flush()
                sg.tensors[op.outputs[0]].buffer = table.add_buffer(Span(spill_path, at, out.nbytes))
                name = op_name(model, op)
                report.folded[name] = report.folded.get(name, 0) + 1
            if not plan:
                return report
            folded = {id(op) for _, op in plan}
            for sg in model.subgraphs:
                sg.operators = [op for op in sg.operators if id(op) not in folded]
            _drop_unused(table)
        table.write(path)
    finally:
        spill_path.unlink(missing_ok=True)
    return report


def constant_only_ops(path: Path) -> dict[str, int]:
    """Op name -> how many ops of the saved model at `path` read only constants (foldable or not)."""
    table = TableModel(path)
    report = FoldReport()
    for sg in table.model.subgraphs:
        for op in _constant_ops(table, sg, report):
            name = op_name(table.model, op)
            report.left[name] = report.left.get(name, 0) + 1
    return report.left


def _constant_ops(table: TableModel, sg, report: FoldReport) -> list:
    """The ops of `sg` to fold, in execution order: every input constant (stored, or the output of
    an op folded before it), one output that is not the subgraph's."""
    const = {i for i, t in enumerate(sg.tensors) if table.spans[t.buffer] is not None}
    graph_outputs = set(int(i) for i in sg.outputs)
    out = []
    for op in sg.operators:
        inputs = [int(i) for i in op.inputs if i >= 0]
        if not inputs or not all(i in const for i in inputs):
            continue
        name = op_name(table.model, op)
        t = sg.tensors[int(op.outputs[0])] if len(op.outputs) == 1 else None
        static = t is not None and (t.shapeSignature is None or all(int(s) >= 0 for s in t.shapeSignature))
        if name not in FOLDABLE or not static or int(op.outputs[0]) in graph_outputs:
            report.left[name] = report.left.get(name, 0) + 1
            continue
        const.add(int(op.outputs[0]))
        out.append(op)
    return out


def _run_alone(table: TableModel, sg, op) -> np.ndarray:
    """`op` evaluated by LiteRT on a model holding only its inputs as constants."""
    from ai_edge_litert import interpreter as litert
    from ai_edge_litert.tools import flatbuffer_utils

    s = schema()
    one = s.ModelT()
    one.version = 3
    one.operatorCodes = [copy.copy(table.model.operatorCodes[op.opcodeIndex])]
    one.buffers = [s.BufferT()]
    g = s.SubGraphT()
    g.tensors, g.inputs, g.operators = [], [], []
    inputs = []
    for i in op.inputs:
        if i < 0:
            inputs.append(-1)
            continue
        t = copy.copy(sg.tensors[int(i)])
        buf = s.BufferT()
        buf.data = table.data(t.buffer)
        one.buffers.append(buf)
        t.buffer = len(one.buffers) - 1
        g.tensors.append(t)
        inputs.append(len(g.tensors) - 1)
    t_out = sg.tensors[int(op.outputs[0])]
    result = copy.copy(t_out)
    result.buffer = 0
    g.tensors.append(result)
    g.outputs = [len(g.tensors) - 1]
    alone = copy.copy(op)
    alone.opcodeIndex, alone.inputs, alone.outputs, alone.intermediates = 0, inputs, [len(g.tensors) - 1], None
    g.operators = [alone]
    one.subgraphs = [g]
    interpreter = litert.Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(one)))
    interpreter.allocate_tensors()
    interpreter.invoke()
    value = np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    want = tuple(int(d) for d in t_out.shape)
    if value.shape != want:
        raise ValueError(f"folding {op_name(table.model, op)} gave shape {value.shape}, the model says {want}")
    return np.ascontiguousarray(value)


def _drop_unused(table: TableModel) -> None:
    """Remove tensors no op, graph or signature refers to any more, then buffers no tensor or
    metadata refers to (buffer 0 stays: the empty one by convention)."""
    model = table.model
    for gi, sg in enumerate(model.subgraphs):
        used = {int(i) for op in sg.operators for i in _tensor_refs(op) if i >= 0}
        used |= {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == gi:
                used |= {m.tensorIndex for m in list(sig.inputs or []) + list(sig.outputs or [])}
        keep = sorted(used)
        new = {old: n for n, old in enumerate(keep)}
        sg.tensors = [sg.tensors[i] for i in keep]
        def remap(idx, new=new):
            return [new[int(i)] if i >= 0 else -1 for i in idx]
        for op in sg.operators:
            op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
            if op.intermediates is not None:
                op.intermediates = remap(op.intermediates)
        sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == gi:
                for m in list(sig.inputs or []) + list(sig.outputs or []):
                    m.tensorIndex = new[m.tensorIndex]
    used_buffers = {0} | {t.buffer for sg in model.subgraphs for t in sg.tensors} | {m.buffer for m in model.metadata or []}
    keep = sorted(used_buffers)
    new = {old: n for n, old in enumerate(keep)}
    model.buffers = [model.buffers[i] for i in keep]
    table.spans = [table.spans[i] for i in keep]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = new[t.buffer]
    for m in model.metadata or []:
        m.buffer = new[m.buffer]


def _tensor_refs(op) -> list[int]:
    return list(op.inputs) + list(op.outputs) + list(op.intermediates if op.intermediates is not None else [])
