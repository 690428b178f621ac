"""A full-size pipeline asks converters to save memory (LowerOptions.large): for TFLite that is
litert-torch's lightweight conversion, whose file must still run in LiteRT with the same numbers."""

from __future__ import annotations

import numpy as np
import torch

from md_export.capture.torch_export import capture
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.core.metrics import compare
from md_export.export import lower_at
from md_export.lower.base import LowerOptions
from md_export.runtime.open import open_file


def test_lightweight_tflite_text_encoder_runs_with_the_same_numbers(tmp_path):
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt, only=("text_encoder",))
    comp = plan.components["text_encoder"]
    paths, outs = {}, {}
    ids = comp.example_inputs()
    for large in (False, True):
        out_dir = tmp_path / f"large-{large}"
        out_dir.mkdir()
        lowered = lower_at("tflite", comp, capture(comp), out_dir, LowerOptions(large=large))
        paths[large] = lowered.path
        runner = open_file("tflite", lowered.path, {"signature": lowered.signature})
        outs[large] = np.asarray(runner({s.name: t.numpy() for s, t in zip(comp.inputs, ids)})[comp.outputs[0].name])
    with torch.no_grad():
        ref = comp.module(*ids)
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
    assert paths[True].read_bytes() != paths[False].read_bytes()  # the lightweight path was taken
    for large, out in outs.items():
        assert compare(ref, out)["psnr"] > 70, large
