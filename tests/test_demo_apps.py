"""The iOS app cannot be built here (no Swift toolchain): check what can be checked — the Xcode
project's structure and the Swift algorithms' Python mirror against the goldens. (The Android
core's Kotlin tests run on the JVM from scripts/test.sh.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["check_pbxproj.py", "swift_port_check.py"])
def test_ios_tool(script):
    path = ROOT / "ios_demo" / "tools" / script
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


# ---- chunked UNets: the Python mirror of ChunkPlan / ChunkedModel (ios_demo/tools/swift_port_check.py) ----

def _port():
    import importlib.util

    spec = importlib.util.spec_from_file_location("swift_port_check", ROOT / "ios_demo" / "tools" / "swift_port_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chunked_fixture() -> dict:
    import json

    return json.loads((ROOT / "ios_demo/Tests/MDExportCoreTests/Resources/chunked_manifest.json").read_text())


def test_chunk_mirror_agrees_with_md_export_chain():
    port = _port()
    assert port.check_chunks() == []
    unet = _chunked_fixture()["models"]["unet"]
    plan = port.ChunkPlan("unet", unet)
    assert plan.feeds == [[t["name"] for t in c["inputs"]] for c in unet["chunks"]]
    assert [f["file"] for f in port.file_specs(unet)] == ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage", "UnetChunk3.mlpackage"]


@pytest.mark.parametrize("releases, symptom", [("everything", "chunked run failed"), ("nothing", "releases after chunk")])
def test_chunk_check_catches_wrong_releases(monkeypatch, releases, symptom):
    """check_chunks fails for a plan that drops tensors a later chunk takes, or holds ones none takes."""
    port = _port()
    original = port.ChunkPlan.__init__

    def mutated(self, model, spec):
        original(self, model, spec)
        if releases == "nothing":
            self.releases = [[] for _ in self.chunks]
        else:
            made = {t["name"] for t in spec["inputs"]}
            self.releases = []
            for chunk in self.chunks:
                made |= {t["name"] for t in chunk["outputs"]}
                self.releases.append(sorted(made))
            self.releases[-1] = []

    monkeypatch.setattr(port.ChunkPlan, "__init__", mutated)
    problems = port.check_chunks()
    assert any(symptom in p for p in problems), problems


def test_chunked_run_keeps_what_a_later_chunk_takes():
    """The last chunk also taking a model input and a chunk-1 output: both held until it runs."""
    port = _port()
    spec = port._reaching_back(_chunked_fixture()["models"]["unet"])
    plan = port.ChunkPlan("unet", spec)
    first_input, first_output = spec["inputs"][0]["name"], spec["chunks"][0]["outputs"][0]["name"]
    assert first_input not in plan.releases[0] + plan.releases[1]
    assert first_output not in plan.releases[0] + plan.releases[1]
    calls = []
    port.run_chunked(plan, port.fake_chunk_runners(plan.chunks, calls), {t["name"]: 1.0 for t in spec["inputs"]})
    assert [i for i, _ in calls] == [0, 1, 2]
    assert first_input in calls[2][1] and first_output in calls[2][1]


@pytest.mark.parametrize("mutation, expected", [
    ("drop_cut_output", ("chunkInputNotProduced", "unet", 2, "UnetChunk2.mlpackage")),
    ("drop_last_chunk", ("chunkOutputMissing", "unet", "UnetChunk2.mlpackage", "noise_pred")),
    ("no_chunks", ("noModelFile", "unet")),
    ("empty_chunks", ("noModelFile", "unet")),
    ("file_and_chunks", ("fileAndChunks", "unet")),
])
def test_chunked_manifest_errors_name_model_and_chunk(mutation, expected):
    port = _port()
    models = _chunked_fixture()["models"]
    unet = models["unet"]
    if mutation == "drop_cut_output":
        cut = unet["chunks"][1]["inputs"][0]["name"]
        unet["chunks"][0]["outputs"] = [t for t in unet["chunks"][0]["outputs"] if t["name"] != cut]
        expected = expected + (cut,)
    elif mutation == "drop_last_chunk":
        del unet["chunks"][-1]
    elif mutation == "no_chunks":
        del unet["chunks"]
    elif mutation == "empty_chunks":
        unet["chunks"] = []
    else:
        unet["file"] = "unet.mlpackage"
    with pytest.raises(port.ManifestError) as info:
        port.validate_model_files(models)
    assert (info.value.case_, *info.value.args_) == expected


def test_chunked_fixture_is_a_bundle_md_export_reads(tmp_path):
    """The fixture is an md-export manifest: md_export's own reader accepts it with its files present."""
    import json

    from md_export.core.manifest import model_files
    from md_export.core.manifest import read_manifest

    manifest = _chunked_fixture()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for entry in manifest["models"].values():
        for file in model_files(entry):
            (tmp_path / file).mkdir()
    assert read_manifest(tmp_path)["models"]["unet"]["chunks"] == manifest["models"]["unet"]["chunks"]
    unet = manifest["models"]["unet"]
    assert unet["bytes"] == sum(c["bytes"] for c in unet["chunks"])
    assert "file" not in unet and "sha256" not in unet
