"""ONNX files in onnxruntime, on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from md_export.core.deps import require

NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
                "tensor(int64)": np.int64}


def load(path: Path, entry: dict):
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    in_types = {i.name: i.type for i in session.get_inputs()}

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: np.ascontiguousarray(v, dtype=NUMPY_DTYPES[in_types[k]]) for k, v in feeds.items()}
        return dict(zip(out_names, session.run(out_names, cast)))

    return run
