"""TFLite files in ai-edge-litert's interpreter: the kernels of Android's CPU path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from md_export.core.deps import require
from md_export.core.progress import third_party_output_muted


def load(path: Path, entry: dict):
    require("ai_edge_litert", "tflite")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    signature = entry.get("signature") or next(iter(interpreter.get_signature_list()))
    runner = interpreter.get_signature_runner(signature)
    in_details = runner.get_input_details()
    invoked = False

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal invoked
        cast = {k: np.ascontiguousarray(v, dtype=in_details[k]["dtype"]) for k, v in feeds.items()}
        if invoked:
            return {k: np.array(v) for k, v in runner(**cast).items()}
        # the first invoke applies the CPU delegate, whose C++ logs "Created TensorFlow Lite XNNPACK delegate"
        with third_party_output_muted():
            out = {k: np.array(v) for k, v in runner(**cast).items()}
        invoked = True
        return out

    return run
