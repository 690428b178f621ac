"""The export streams one component at a time: a component's reference module is gone before the
next one is loaded, each rewrite set is captured once per component, and a target that fails does
not take the others with it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch

from md_export import export as E
from md_export.checkpoint.folder import Checkpoint
from md_export.config.options import ExportOptions
from md_export.core import isolate
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


def test_a_large_pipeline_loads_the_reference_again_instead_of_copying_it(tmp_path, monkeypatch):
    """Two rewrite sets (Core ML's, TFLite's) on a large pipeline: the second rewrites a fresh load,
    and the first set's module is gone before that load (no deep copy of a full-size module)."""
    monkeypatch.setattr(Checkpoint, "is_large", lambda self: True)
    monkeypatch.setenv(isolate.ENV, "never")
    real_attach = E.attach_modules
    loads: list[tuple[str, list[bool]]] = []
    lowered: list[tuple[str, int]] = []
    earlier: list[weakref.ref] = []

    def attach(plan, ckpt, only=None):
        gc.collect()
        loads.append((only[0], [r() is not None for r in earlier]))
        real_attach(plan, ckpt, only)
        earlier.append(weakref.ref(plan.components[only[0]].module))

    real_deepcopy = E.copy.deepcopy

    def no_module_deepcopy(obj, *a, **k):
        assert not isinstance(obj, torch.nn.Module), "a large pipeline's module was deep-copied"
        return real_deepcopy(obj, *a, **k)

    def record_then_fail(target, lowerer, comp, *args, **kwargs):
        lowered.append((target, id(comp.module)))
        raise ConversionError(f"{target}: stop after recording")  # every target fails here: one component is enough

    monkeypatch.setattr(E, "attach_modules", attach)
    monkeypatch.setattr(E.copy, "deepcopy", no_module_deepcopy)
    monkeypatch.setattr(E, "_export_component", record_then_fail)
    with pytest.raises(ConversionError, match="stop after recording"):
        E.export(Checkpoint.open(None), ExportOptions(out=tmp_path, targets=("coreml", "tflite"), command="pytest"))
    assert [name for name, _ in loads][:3] == ["text_encoder", "text_encoder", "unet"]
    assert loads[1][1] == [False]  # the Core ML set's module was freed before the load for TFLite's
    assert sorted(t for t, _ in lowered) == ["coreml", "tflite"] and lowered[0][1] != lowered[1][1]


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



# Run in a fresh interpreter: a fork is only safe before this process has converted anything
# (core.isolate), and the test session has.
CHILD_EXPORT = """
import os, signal, sys
from pathlib import Path
from md_export import export as E
from md_export.checkpoint.folder import Checkpoint
from md_export.config.options import ExportOptions
from md_export.core.progress import Progress

class Said(Progress):
    def info(self, message):
        print("info:", message, file=sys.stderr)

real = E._export_component
def maybe_killed(target, lowerer, comp, *args, **kwargs):
    if f"{target}:{comp.name}" == os.environ.get("KILL_IN"):
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    print("converting", target, comp.name, "in", "child" if os.getpid() != int(os.environ["PARENT"]) else "parent", file=sys.stderr)
    return real(target, lowerer, comp, *args, **kwargs)
E._export_component = maybe_killed
os.environ["PARENT"] = str(os.getpid())
try:
    for r in E.export(Checkpoint.open(None), ExportOptions(out=Path(sys.argv[1]), targets=tuple(sys.argv[2].split(",")), command="pytest"), Said()):
        print(r.target, *(f"{n}={m['sha256']}" for n, m in sorted(r.manifest["models"].items())))
except Exception as e:
    print("error:", type(e).__name__, e, file=sys.stderr)
    sys.exit(3)
"""


def _export_in_fresh_process(out, targets: str, kill_in: str = ""):
    env = {**os.environ, isolate.ENV: "always", "KILL_IN": kill_in}
    return subprocess.run([sys.executable, "-c", CHILD_EXPORT, str(out), targets], capture_output=True, text=True, env=env,
                          timeout=1200)


@pytest.mark.skipif(not isolate.fork_available(), reason="fork isolation is Linux only")
def test_lowering_in_a_child_writes_the_same_bytes(tmp_path, default_export):
    """MD_EXPORT_LOWER_IN_CHILD=always sends every component's lowering, compression and hashing
    to a forked child (at full size `auto` does): the same files as in-process."""
    proc = _export_in_fresh_process(tmp_path, "tflite,onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted = [line for line in proc.stderr.splitlines() if line.startswith("converting")]
    assert len(converted) == 6 and all(line.endswith("in child") for line in converted), converted
    assert "info: conversions run in child processes" in proc.stderr
    for line in proc.stdout.splitlines():
        target, *hashes = line.split()
        theirs = default_export[target].manifest["models"]
        assert dict(h.split("=") for h in hashes) == {n: m["sha256"] for n, m in theirs.items()}, target


@pytest.mark.skipif(not isolate.fork_available(), reason="fork isolation is Linux only")
def test_a_child_killed_while_lowering_fails_only_its_target(tmp_path):
    proc = _export_in_fresh_process(tmp_path, "onnx,tflite", kill_in="tflite:unet")
    assert proc.returncode == 3
    assert "error: ChildKilled tflite unet: lower: the child process doing it was killed by SIGKILL" in proc.stderr
    assert (tmp_path / "onnx" / "manifest.json").is_file() and not (tmp_path / "tflite").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
