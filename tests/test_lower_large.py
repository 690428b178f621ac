"""A full-size pipeline asks converters to save memory (LowerOptions.large): for TFLite that is
litert-torch's lightweight conversion with md-export folding the constant-only ops it leaves, whose
file must still run in LiteRT with the same numbers."""

from __future__ import annotations

import numpy as np
import torch

from md_export.capture.torch_export import capture
from md_export.checkpoint.folder import Checkpoint
from md_export.components.plan import attach_modules, make_plan
from md_export.core.metrics import compare
from md_export.export import lower_at
from md_export.lower.base import LowerOptions
from md_export.lower.tflite_fold import constant_only_ops
from md_export.runtime.open import open_file


def test_lightweight_tflite_text_encoder_runs_with_the_same_numbers(tmp_path, monkeypatch):
    # litert-torch keeps constants lazy from 1 MB; at tiny width none is that big, so lower the bar
    monkeypatch.setenv("RESOURCE_CONSTANT_NUMEL_THRESHOLD", "1024")
    ckpt = Checkpoint.open(None)
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt, only=("text_encoder",))
    comp = plan.components["text_encoder"]
    paths, outs, notes = {}, {}, {}
    ids = comp.example_inputs()
    for large in (False, True):
        out_dir = tmp_path / f"large-{large}"
        out_dir.mkdir()
        lowered = lower_at("tflite", comp, capture(comp), out_dir, LowerOptions(large=large))
        paths[large] = lowered.path
        notes[large] = lowered.notes
        runner = open_file("tflite", lowered.path, {"signature": lowered.signature})
        outs[large] = np.asarray(runner({s.name: t.numpy() for s, t in zip(comp.inputs, ids)})[comp.outputs[0].name])
    with torch.no_grad():
        ref = comp.module(*ids)
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
    assert paths[True].read_bytes() != paths[False].read_bytes()  # the lightweight path was taken
    assert any("constant-only ops folded by md-export" in n for n in notes[True]), notes[True]
    assert constant_only_ops(paths[True]) == {}
    for large, out in outs.items():
        assert compare(ref, out)["psnr"] > 70, large
