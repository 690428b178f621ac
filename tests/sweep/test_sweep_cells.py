"""Cell hashing: the same inputs give the same hash, any option or weight byte changes it; a cell
is skipped only when a finished cell with its hash is on disk, never by its folder name alone."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from md_export.sweep import cells as C
from md_export.sweep.run import remove_partials
from md_export.sweep.spec import CellSpec, CheckOptions, ModelEntry, Resources


def ckpt(tmp_path: Path, name: str = "ck") -> Path:
    d = tmp_path / name
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text('{"sample_size": 16}')
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 40)
    (d / ".cache").mkdir()
    (d / ".cache" / "junk").write_text("not part of the model")
    return d


def make(spec: CellSpec, d: Path, check: CheckOptions | None = None, version: str = "0.1.0",
         resources: Resources | None = None) -> C.Cell:
    return C.plan(spec, d, C.digest(d), check or CheckOptions(), resources or Resources(), version)


SPEC = CellSpec(ModelEntry("ck"), "onnx", "int8", ("vae_decoder=fp16",), ("--height", "128"))


def test_digest_is_content_not_names_or_dates(tmp_path):
    a = ckpt(tmp_path, "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    (b / ".cache" / "junk").write_text("hidden files do not count")
    da, db = C.digest(a), C.digest(b)
    assert da.sha256 == db.sha256 and da.files == 2
    assert da.weight_bytes == 256 * 40  # the .safetensors only
    w = b / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[1000] ^= 1
    w.write_bytes(bytes(data))
    assert C.digest(b).sha256 != da.sha256
    (a / "unet" / "config.json").rename(a / "unet" / "config2.json")  # same bytes, another name: another checkpoint
    assert C.digest(a).sha256 != da.sha256


def test_same_inputs_same_hash(tmp_path):
    d = ckpt(tmp_path)
    h1, h2 = make(SPEC, d).hash, make(SPEC, d).hash
    assert h1 == h2 and len(h1) == 64
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    assert make(SPEC, copy).hash == h1  # where the checkpoint lives does not matter
    # memory requests and the model's display name do not change what the cell computes
    assert make(SPEC, d, resources=Resources(memory_base_mb=1, memory_factor=9, timeout_minutes=5)).hash == h1
    assert make(replace(SPEC, model=ModelEntry("renamed")), d).hash == h1


def test_every_option_changes_the_hash(tmp_path):
    d = ckpt(tmp_path)
    base = make(SPEC, d).hash
    variants = [
        make(replace(SPEC, level="fp16"), d),
        make(replace(SPEC, target="tflite"), d),
        make(replace(SPEC, keep=()), d),
        make(replace(SPEC, keep=("vae_decoder=fp32",)), d),
        make(replace(SPEC, args=("--height", "256")), d),
        make(SPEC, d, check=CheckOptions(samples=3)),
        make(SPEC, d, check=CheckOptions(seed=1)),
        make(SPEC, d, check=CheckOptions(end_to_end=False)),
        make(SPEC, d, check=CheckOptions(parity=False)),
        make(SPEC, d, check=CheckOptions(thresholds=("unet=45",))),
        make(SPEC, d, version="0.2.0"),
        make(SPEC, d, resources=Resources(cpus_per_cell=2)),  # another thread count rounds differently
    ]
    hashes = [v.hash for v in variants]
    assert base not in hashes and len(set(hashes)) == len(hashes)
    (d / "unet" / "config.json").write_text('{"sample_size": 32}')
    assert make(SPEC, d).hash != base
    # keep order does not matter: the set of kept components does
    two = replace(SPEC, keep=("vae_decoder=fp16", "text_encoder=fp16"))
    assert make(two, d).hash == make(replace(two, keep=tuple(reversed(two.keep))), d).hash


def test_memory_request_grows_with_weights(tmp_path):
    d = ckpt(tmp_path)
    cell = make(SPEC, d, resources=Resources(memory_base_mb=100, memory_factor=4.0))
    assert cell.memory_bytes == 100 * 2**20 + 4 * 256 * 40
    assert cell.num_cpus == 1.0


def finish(out: Path, cell: C.Cell, status: str = "pass", hash_: str | None = None, files: bool = True) -> Path:
    folder = out / C.CELLS_DIR / cell.name
    (folder / cell.target).mkdir(parents=True)
    (folder / cell.target / "manifest.json").write_text(json.dumps({"models": {"unet": {"file": "unet.onnx"}}}))
    if files:
        (folder / cell.target / "unet.onnx").write_bytes(b"x")
    (folder / C.CELL_JSON).write_text(json.dumps({"hash": hash_ or cell.hash, "status": status, "exit_code": 0}))
    return folder


def test_finished_only_by_hash_not_by_name(tmp_path):
    d = ckpt(tmp_path)
    out = tmp_path / "out"
    cell = make(SPEC, d)
    assert not C.is_finished(out, cell)
    folder = finish(out, cell, hash_="0" * 64)  # same folder name, another hash (options changed since)
    assert not C.is_finished(out, cell)
    shutil.rmtree(folder)
    finish(out, cell)
    assert C.is_finished(out, cell)
    other = make(replace(SPEC, args=("--height", "256")), d)
    assert other.name == cell.name and not C.is_finished(out, other)


def test_unfinished_states_are_not_finished(tmp_path):
    d = ckpt(tmp_path)
    out = tmp_path / "out"
    cell = make(SPEC, d)
    folder = finish(out, cell, files=False)  # the manifest names a file that is not there
    assert not C.is_finished(out, cell)
    shutil.rmtree(folder)
    folder = finish(out, cell, status="failed")
    assert not C.is_finished(out, cell)
    data = json.loads((folder / C.CELL_JSON).read_text())
    for code, reproducible in ((2, True), (3, True), (-9, False), (None, False)):
        (folder / C.CELL_JSON).write_text(json.dumps({**data, "exit_code": code}))
        assert C.is_reproducible_failure(out, cell) is reproducible
    shutil.rmtree(folder)
    # a staging folder left by a killed cell: hidden name, a complete-looking bundle inside, never a result
    staging = out / C.CELLS_DIR / "ck" / ".onnx-int8+vae_decoder=fp16.partial-abc"
    shutil.copytree(finish(tmp_path / "scratch", cell), staging)
    assert not C.is_finished(out, cell)
    assert remove_partials(out) == 1 and not staging.exists()


def test_folder_names_are_safe(tmp_path):
    spec = CellSpec(ModelEntry("m"), "tflite", "mixed:fc=int8,conv=fp16", ("vae_decoder=fp16",), ())
    assert C.folder_name(spec) == "m/tflite-mixed_fc=int8_conv=fp16+vae_decoder=fp16"
    assert spec.label == "m/tflite-mixed:fc=int8,conv=fp16+vae_decoder=fp16"
