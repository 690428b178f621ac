"""Bundles are written atomically and replaced only with force."""

from __future__ import annotations

import pytest

from md_export.core.io import atomic_folder, path_sha256
from md_export.core.errors import InputError


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "onnx"
    with pytest.raises(RuntimeError):
        with atomic_folder(target, force=False) as tmp:
            (tmp / "half.onnx").write_bytes(b"partial")
            raise RuntimeError("conversion died")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_success_renames_into_place_and_force_replaces(tmp_path):
    target = tmp_path / "onnx"
    with atomic_folder(target, force=False) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(InputError, match="--force"):
        with atomic_folder(target, force=False):
            pass
    with atomic_folder(target, force=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def test_folder_hash_sees_any_change(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "weight.bin").write_bytes(b"\x00\x01")
    (pkg / "Manifest.json").write_text("{}")
    h1 = path_sha256(pkg)
    (pkg / "Data" / "weight.bin").write_bytes(b"\x00\x02")
    assert path_sha256(pkg) != h1
