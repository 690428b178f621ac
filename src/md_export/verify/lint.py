"""`md-export lint`: what in a saved model the mobile accelerator path is known to reject.

Per model: the op histogram of the saved artifact and findings (op, dtype, rank, shape), each
with the op and, where the artifact's names carry it, the module it came from.

- TFLite (GPU delegate): reads the flatbuffer with ai-edge-litert's schema bindings. Rejected:
  BROADCAST_TO, FILL, GATHER_ND and the other ops the delegate has no kernel for, tensors of rank
  over 4, dynamic dimensions, 64-bit tensors, StableHLO composites other than odml.*.
- Core ML (Neural Engine): reads the ML program (no weights). Falls off: ops the ANE has no
  kernel for (gather_nd, scatter, cumsum, sorting, control flow ...), fp32 compute, tensors of
  rank over 5, dimensions over 16384.
- ONNX: the graph's ops; dynamic dimensions and rank over 4 (mobile execution providers:
  NNAPI / XNNPACK / Core ML EP).
"""

from __future__ import annotations

import collections
from pathlib import Path

from md_export.core.errors import InputError
from md_export.core.manifest import find_bundles, model_files, read_manifest
from md_export.milrun import op_histogram
from md_export.milrun.evaluator import _read_spec

# -- TFLite GPU delegate ------------------------------------------------------------------------

GPU_REJECTED = {
    "BROADCAST_TO": "no GPU kernel; broadcast in the consumer op instead",
    "FILL": "no GPU kernel; make the tensor a constant",
    "GATHER_ND": "no GPU kernel",
    "SCATTER_ND": "no GPU kernel",
    "ARG_MAX": "no GPU kernel",
    "ARG_MIN": "no GPU kernel",
    "TOPK_V2": "no GPU kernel",
    "WHERE": "dynamic output shape",
    "NON_MAX_SUPPRESSION_V4": "no GPU kernel",
    "NON_MAX_SUPPRESSION_V5": "no GPU kernel",
    "RANGE": "no GPU kernel (shape computation)",
    "SHAPE": "shape computation at run time",
    "UNIQUE": "dynamic output shape",
    "WHILE": "control flow",
    "IF": "control flow",
    "RANDOM_UNIFORM": "no GPU kernel",
    "RANDOM_STANDARD_NORMAL": "no GPU kernel",
    "MULTINOMIAL": "no GPU kernel",
    "REVERSE_V2": "no GPU kernel",
    "SEGMENT_SUM": "no GPU kernel",
    "UNSORTED_SEGMENT_SUM": "no GPU kernel",
    "SPARSE_TO_DENSE": "no GPU kernel",
    "LSH_PROJECTION": "no GPU kernel",
}
# At the graph's edge the delegate hands the op to the CPU and takes the rest: not a finding.
GPU_EDGE_OK = {"EMBEDDING_LOOKUP": "token embedding at the input runs on the CPU; the delegate takes the rest"}
_BAD_TFL_DTYPES = {"INT64", "FLOAT64", "COMPLEX64", "COMPLEX128", "STRING"}


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def lint_tflite(path: Path) -> dict:
    from ai_edge_litert import schema_py_generated as fb

    buf = path.read_bytes()
    model = fb.Model.GetRootAsModel(buf, 0)
    op_names = _enum_names(fb.BuiltinOperator)
    dtype_names = _enum_names(fb.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM" and oc.CustomCode():
            name = f"CUSTOM:{oc.CustomCode().decode()}"
        codes.append(name)
    # the signature's subgraph (0 unless the file says otherwise); decomposition subgraphs of
    # composites are what the CPU runs when the delegate does not take the composite: not counted
    main = 0
    if model.SignatureDefsLength():
        main = model.SignatureDefs(0).SubgraphIndex()
    sg = model.Subgraphs(main)
    hist: collections.Counter = collections.Counter()
    findings: list[dict] = []
    notes: list[dict] = []
    inputs = {sg.Inputs(i) for i in range(sg.InputsLength())}
    consts = set()
    for t in range(sg.TensorsLength()):
        tensor = sg.Tensors(t)
        if tensor.Buffer() and model.Buffers(tensor.Buffer()) is not None and (
                model.Buffers(tensor.Buffer()).DataLength() or model.Buffers(tensor.Buffer()).Offset()):
            consts.add(t)

    from_input = set(inputs)  # tensors computed from the graph inputs by shape-only ops

    def tname(t):
        n = sg.Tensors(t).Name()
        return n.decode() if n else f"tensor {t}"

    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        name = codes[op.OpcodeIndex()]
        if name == "STABLEHLO_COMPOSITE":
            opts = op.BuiltinOptions2()
            cname = None
            if opts is not None:
                c = fb.StableHLOCompositeOptions()
                c.Init(opts.Bytes, opts.Pos)
                cname = c.Name().decode() if c.Name() else None
            name = f"composite:{cname}" if cname else name
        hist[name] += 1
        outs = [op.Outputs(k) for k in range(op.OutputsLength()) if op.Outputs(k) >= 0]
        ins = [op.Inputs(k) for k in range(op.InputsLength()) if op.Inputs(k) >= 0]
        where = tname(outs[0]) if outs else ""
        base = name.split(":", 1)[0]
        if base in ("RESHAPE", "CAST", "SQUEEZE", "EXPAND_DIMS") and ins and ins[0] in from_input:
            from_input.update(outs)
        if base in GPU_EDGE_OK and all(i in from_input or i in consts for i in ins):
            notes.append({"op": name, "where": where, "note": GPU_EDGE_OK[base]})
        elif base in GPU_REJECTED:
            findings.append({"kind": "op", "op": name, "where": where, "why": f"GPU delegate: {GPU_REJECTED[base]}"})
        elif base in GPU_EDGE_OK:
            findings.append({"kind": "op", "op": name, "where": where, "why": "GPU delegate: no kernel (inside the graph)"})
        elif name.startswith("composite:") and not name.startswith("composite:odml."):
            findings.append({"kind": "op", "op": name, "where": where, "why": "GPU delegate: only odml.* composites are fused"})
        elif name == "STABLEHLO_COMPOSITE" or (name.startswith("STABLEHLO_") and name != "STABLEHLO_COMPOSITE"):
            findings.append({"kind": "op", "op": name, "where": where, "why": "GPU delegate: StableHLO op without a TFLite kernel"})
        elif name.startswith("CUSTOM"):
            findings.append({"kind": "op", "op": name, "where": where, "why": "GPU delegate: custom op"})
        for t in outs:
            tensor = sg.Tensors(t)
            shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            sig = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else shape
            dtype = dtype_names.get(tensor.Type(), str(tensor.Type()))
            if len(shape) > 4:
                findings.append({"kind": "rank", "op": name, "where": tname(t), "why": f"rank {len(shape)} tensor {shape} (GPU delegate: at most 4)"})
            if any(d < 0 for d in sig):
                findings.append({"kind": "shape", "op": name, "where": tname(t), "why": f"dynamic shape {sig}"})
            if dtype in _BAD_TFL_DTYPES:
                findings.append({"kind": "dtype", "op": name, "where": tname(t), "why": f"{dtype} tensor (GPU delegate: float32/16, int32, int8, bool)"})
    for i in inputs:
        tensor = sg.Tensors(i)
        sig = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else []
        if any(d < 0 for d in sig):
            findings.append({"kind": "shape", "op": "input", "where": tname(i), "why": f"dynamic input shape {sig}"})
    return {"ops": sum(hist.values()), "histogram": dict(hist.most_common()), "findings": findings, "notes": notes,
            "accelerator": "TFLite GPU delegate"}


# -- Core ML Neural Engine ------------------------------------------------------------------------

ANE_REJECTED = {
    "gather_nd": "gather_nd runs on the CPU",
    "scatter": "scatter runs on the CPU",
    "scatter_nd": "scatter_nd runs on the CPU",
    "scatter_along_axis": "scatter runs on the CPU",
    "cumsum": "cumsum runs on the CPU",
    "argsort": "sorting runs on the CPU",
    "topk": "topk runs on the CPU",
    "non_maximum_suppression": "runs on the CPU",
    "while_loop": "control flow runs on the CPU",
    "cond": "control flow runs on the CPU",
    "random_uniform": "runs on the CPU",
    "random_normal": "runs on the CPU",
    "random_bernoulli": "runs on the CPU",
    "random_categorical": "runs on the CPU",
    "non_zero": "dynamic output shape",
    "band_part": "falls back off the Neural Engine",
}
ANE_MAX_DIM = 16384
ANE_MAX_RANK = 5
_NO_COMPUTE = {"const", "cast", "constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_sparse_to_dense",
               "constexpr_blockwise_shift_scale", "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
               "constexpr_cast"}


def _coreml_spec(path: Path):
    spec, _ = _read_spec(path)
    return spec


def lint_coreml(path: Path) -> dict:
    hist = op_histogram(path)
    spec = _coreml_spec(path)
    f = spec.mlProgram.functions["main"]
    block = f.block_specializations[f.opset]
    findings: list[dict] = []
    fp32_ops: collections.Counter = collections.Counter()
    dtype_name = {}
    try:
        from coremltools.proto import MIL_pb2

        dtype_name = {v: k for k, v in MIL_pb2.DataType.items()}
    except Exception:  # pragma: no cover - coremltools is there when a Core ML bundle is
        pass

    def walk(b):
        for op in b.operations:
            yield op
            for inner in op.blocks:
                yield from walk(inner)

    for op in walk(block):
        opname = op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else ""
        if op.type in ANE_REJECTED:
            findings.append({"kind": "op", "op": op.type, "where": opname, "why": f"Neural Engine: {ANE_REJECTED[op.type]}"})
        if op.type in _NO_COMPUTE:
            continue
        for out in op.outputs:
            tt = out.type.tensorType if out.type.HasField("tensorType") else None
            if tt is None:
                continue
            dt = dtype_name.get(tt.dataType, str(tt.dataType))
            dims = [d.constant.size if d.HasField("constant") else -1 for d in tt.dimensions]
            if dt == "FLOAT32":
                fp32_ops[op.type] += 1
            if len(dims) > ANE_MAX_RANK:
                findings.append({"kind": "rank", "op": op.type, "where": opname, 
                                 "why": f"rank {len(dims)} tensor {dims} (Neural Engine: at most {ANE_MAX_RANK})"})
            if any(d > ANE_MAX_DIM for d in dims):
                findings.append({"kind": "shape", "op": op.type, "where": opname, "why": f"dimension over {ANE_MAX_DIM} in {dims}"})
            if any(d < 0 for d in dims):
                findings.append({"kind": "shape", "op": op.type, "where": opname, "why": f"dynamic shape {dims}"})
    for op_type, n in fp32_ops.most_common():
        findings.append({"kind": "dtype", "op": op_type, "where": f"{n} op(s)",
                         "why": "fp32 compute: the Neural Engine runs fp16 only (export with --precision fp16)"})
    notes = []
    if hist.get("transpose"):
        notes.append({"op": "transpose", "where": f"{hist['transpose']} op(s)",
                      "note": "each is a copy on the Neural Engine; the (B, C, 1, S) rewrites "
                              "(attention=split-einsum, linear-to-conv, layernorm-channels) remove most"})
    return {"ops": sum(v for k, v in hist.items() if k != "const"), "histogram": {k: v for k, v in hist.most_common() if k != "const"},
            "findings": findings, "notes": notes, "accelerator": "Core ML Neural Engine"}


# -- ONNX ---------------------------------------------------------------------------------------


def lint_onnx(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    hist = collections.Counter(n.op_type for n in model.graph.node)
    findings = []
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if any(d < 0 for d in dims):
            findings.append({"kind": "shape", "op": "tensor", "where": vi.name, "why": f"dynamic shape {dims}"})
        if len(dims) > 4 and t.elem_type == onnx.TensorProto.FLOAT:
            findings.append({"kind": "rank", "op": "tensor", "where": vi.name, "why": f"rank {len(dims)} float tensor (mobile EPs: at most 4)"})
    return {"ops": sum(hist.values()), "histogram": dict(hist.most_common()), "findings": findings, "notes": [],
            "accelerator": "ONNX mobile execution providers"}


LINTERS = {"tflite": lint_tflite, "coreml": lint_coreml, "onnx": lint_onnx}


def lint_bundle(bundle: Path) -> dict:
    manifest = read_manifest(bundle)
    target = manifest["target"]
    if target not in LINTERS:
        raise InputError(f"{bundle}: no linter for target '{target}'")
    models = {}
    for name, entry in manifest["models"].items():
        files = model_files(entry)
        for file in files:  # a chunked model is linted chunk by chunk
            result = LINTERS[target](bundle / file)
            for f in result["findings"]:
                f["module"] = module_of(f.get("where", ""))
            models[name if len(files) == 1 else f"{name} ({file})"] = result
    return {"bundle": str(bundle), "target": target, "rewrites": [r["name"] for r in manifest.get("rewrites", [])], "models": models}


def lint_paths(paths) -> list[dict]:
    bundles = []
    for p in paths:
        bundles += find_bundles(Path(p))
    if not bundles:
        raise InputError(f"no bundle (a folder with manifest.json) under {', '.join(map(str, paths))}")
    return [lint_bundle(b) for b in bundles]


def module_of(name: str) -> str | None:
    """The module an artifact's tensor/op name carries, if any. litert-torch names tensors by
    their module stack, 'pkg.Class_attr/pkg.Class_attr/...;N': this gives 'Class_attr/...' without
    md-export's own wrappers, e.g. 'CrossAttnDownBlock2D_0/ResnetBlock2D_0/GroupNorm_norm1'."""
    if not name or "/" not in name:
        return None
    parts = [seg.rsplit(".", 1)[-1] for seg in name.split(";", 1)[0].split("/")]
    parts = [p for p in parts if not p.startswith(("_NamedIO", "UNetWrapper", "TextEncoderWrapper", "VAEDecoderWrapper", "VAEEncoderWrapper"))]
    return "/".join(parts) or None


def render_lint(output, data: list[dict]) -> None:
    from rich.table import Table

    for b in data:
        t = Table(title=f"{b['target']} bundle {b['bundle']}" + (f" (rewrites: {', '.join(b['rewrites'])})" if b["rewrites"] else ""))
        for col in ("model", "ops", "top ops", "findings"):
            t.add_column(col, overflow="fold")
        for name, m in b["models"].items():
            top = ", ".join(f"{k} {v}" for k, v in list(m["histogram"].items())[:8])
            n = len(m["findings"])
            t.add_row(name, str(m["ops"]), top, f"[red]{n}[/]" if n else "[green]0[/]")
        output.print(t)
        for name, m in b["models"].items():
            if not m["findings"]:
                continue
            ft = Table(title=f"{name}: {m['accelerator']}")
            for col in ("kind", "op", "where", "why"):
                ft.add_column(col, overflow="fold")
            grouped: dict = {}
            for f in m["findings"]:
                key = (f["kind"], f["op"], f["why"])
                grouped.setdefault(key, []).append(f.get("module") or f.get("where") or "")
            for (kind, op, why), wheres in grouped.items():
                shown = ", ".join(sorted(set(w for w in wheres if w))[:3])
                more = f" (+{len(wheres) - 3} more)" if len(wheres) > 3 else ""
                ft.add_row(kind, op, shown + more, why)
            output.print(ft)
        for name, m in b["models"].items():
            for note in m.get("notes", []):
                output.print(f"[cyan]note[/] {name}: {note['op']} ({module_of(note['where']) or note['where']}): {note['note']}")
