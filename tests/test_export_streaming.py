"""The export streams one component at a time: a component's reference module is gone before the
next one is loaded, each rewrite set is captured once per component, and a target that fails does
not take the others with it."""

from __future__ import annotations

import gc
import weakref

import pytest

from md_export import export as E
from md_export.checkpoint.folder import Checkpoint
from md_export.config.options import ExportOptions
from md_export.core.errors import ConversionError


def test_a_reference_module_is_released_before_the_next_is_loaded(tmp_path, monkeypatch):
    alive: dict[str, weakref.ref] = {}
    seen_alive: dict[str, list[str]] = {}
    real_attach, real_capture = E.attach_modules, E.capture
    captures: list[tuple[str, int]] = []

    def attach(plan, ckpt, only=None):
        gc.collect()
        seen_alive[only[0] if only else "all"] = sorted(n for n, r in alive.items() if r() is not None)
        real_attach(plan, ckpt, only)
        for n in only or plan.components:
            if plan.components[n].module is not None:
                alive[n] = weakref.ref(plan.components[n].module)

    def counting_capture(comp):
        captures.append((comp.name, id(comp.module)))
        return real_capture(comp)

    monkeypatch.setattr(E, "attach_modules", attach)
    monkeypatch.setattr(E, "capture", counting_capture)
    results = E.export(Checkpoint.open(None), ExportOptions(out=tmp_path, targets=("tflite", "onnx"), command="pytest"))
    assert sorted(r.target for r in results) == ["onnx", "tflite"]
    assert seen_alive["unet"] == [] and seen_alive["vae_decoder"] == []  # the text encoder, then the UNet, were freed
    # onnx (no rewrites) and tflite (gpu-composites) differ: two captures per component, never more
    assert sorted(n for n, _ in captures) == sorted(["text_encoder", "unet", "vae_decoder"] * 2)


def test_a_failing_target_leaves_the_others_written(tmp_path, monkeypatch):
    real = E._export_component

    def fail_onnx_unet(target, lowerer, comp, *args, **kwargs):
        if target == "onnx" and comp.name == "unet":
            raise ConversionError("onnx: unet: forced failure")
        return real(target, lowerer, comp, *args, **kwargs)

    monkeypatch.setattr(E, "_export_component", fail_onnx_unet)
    with pytest.raises(ConversionError, match="forced failure"):
        E.export(Checkpoint.open(None), ExportOptions(out=tmp_path, targets=("onnx", "tflite"), command="pytest"))
    assert (tmp_path / "tflite" / "manifest.json").is_file() and (tmp_path / "tflite" / "unet.tflite").is_file()
    assert not (tmp_path / "onnx").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder or lock left
