"""A bundle is untrusted input to `check`: tampered files, lowered floors, paths and symlinks that
lead out of it must not get past the gate (verify.integrity, verify.floors, core.manifest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from md_export.cli.app import main
from md_export.core.io import path_bytes, path_sha256


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _save_manifest(bundle: Path, m: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(m))


def _check(bundle: Path, capsys, *extra) -> tuple[int, dict | None, str]:
    code = main(["check", str(bundle), "--samples", "1", "--no-e2e", "-q", *extra])
    err = capsys.readouterr().err
    report = json.loads((bundle / "parity.json").read_text()) if (bundle / "parity.json").is_file() else None
    return code, report, err


def _negate_largest_weight(path: Path) -> None:
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == onnx.TensorProto.FLOAT else 0)
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(path))


def test_a_changed_model_file_fails_by_name(bundle_copy, capsys):
    bundle = bundle_copy("onnx")
    data = bytearray((bundle / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    (bundle / "unet.onnx").write_bytes(bytes(data))
    code, report, _ = _check(bundle, capsys)
    assert code == 1 and report["integrity"]["status"] == "fail"
    assert report["integrity"]["files"] == ["unet.onnx (unet): sha256 differs from the manifest's"]


def test_a_bundle_cannot_lower_its_own_floors(bundle_copy, capsys):
    """A corrupted UNet whose manifest was rewritten to match it (sha256, bytes) and to set every
    floor to 0 still fails: recorded floors only raise md-export's."""
    bundle = bundle_copy("onnx")
    _negate_largest_weight(bundle / "unet.onnx")
    m = _manifest(bundle)
    m["models"]["unet"].update(sha256=path_sha256(bundle / "unet.onnx"), bytes=path_bytes(bundle / "unet.onnx"))
    m["parity_floors"] = {"all": 0.0, "unet": 0.0}
    _save_manifest(bundle, m)
    code, report, _ = _check(bundle, capsys)
    unet = next(c for c in report["checks"] if c["model"] == "unet")
    assert report["integrity"]["status"] == "pass"
    assert code == 1 and unet["status"] == "fail" and unet["threshold"]["psnr"] == 80.0 and unet["psnr"] < 80


def test_recorded_floors_raise_and_the_command_line_sets(bundle_copy, capsys):
    bundle = bundle_copy("onnx")
    m = _manifest(bundle)
    m["parity_floors"] = {"vae_decoder": 500.0}
    _save_manifest(bundle, m)
    code, report, _ = _check(bundle, capsys)
    floors = {c["model"]: c["threshold"]["psnr"] for c in report["checks"]}
    assert code == 1 and floors == {"text_encoder": 80.0, "unet": 80.0, "vae_decoder": 500.0}
    code, report, _ = _check(bundle, capsys, "--threshold", "all=20")
    assert {c["model"]: c["threshold"]["psnr"] for c in report["checks"]}["unet"] == 20.0


def test_no_verify_is_reported_as_skipped(bundle_copy, capsys):
    bundle = bundle_copy("onnx")
    code, report, _ = _check(bundle, capsys, "--no-verify")
    assert code == 0 and report["integrity"] == {"status": "skipped", "reason": "--no-verify"}


@pytest.mark.parametrize("file", ["/etc/passwd", "../../unet.onnx", "sub/../../unet.onnx"])
def test_model_paths_outside_the_bundle_are_refused(bundle_copy, capsys, file):
    bundle = bundle_copy("onnx")
    m = _manifest(bundle)
    m["models"]["unet"]["file"] = file
    _save_manifest(bundle, m)
    code, report, err = _check(bundle, capsys)
    assert code == 2 and report is None
    assert "is not a path inside the bundle" in err and len(err.strip().splitlines()) == 1


def test_another_bundles_absolute_path_is_refused(bundle_copy, default_export, capsys):
    bundle = bundle_copy("onnx")
    m = _manifest(bundle)
    m["models"]["unet"]["file"] = str(default_export["onnx"].bundle / "unet.onnx")
    _save_manifest(bundle, m)
    code, _, err = _check(bundle, capsys)
    assert code == 2 and "is not a path inside the bundle" in err


def test_a_symlinked_model_leading_out_is_refused(bundle_copy, default_export, capsys):
    bundle = bundle_copy("onnx")
    (bundle / "unet.onnx").unlink()
    os.symlink(default_export["onnx"].bundle / "unet.onnx", bundle / "unet.onnx")
    code, _, err = _check(bundle, capsys)
    assert code == 2 and "leads outside the bundle" in err


def test_outputs_are_not_written_through_planted_symlinks(bundle_copy, tmp_path, capsys):
    bundle = bundle_copy("onnx")
    victims = {}
    for name in ("parity.json", "parity.md"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("keep me")
        os.symlink(victim, bundle / name)
        victims[name] = victim
    code, report, _ = _check(bundle, capsys)
    assert code == 0 and report["status"] == "pass"
    for name, victim in victims.items():
        assert victim.read_text() == "keep me"
        assert not (bundle / name).is_symlink() and (bundle / name).is_file()


def test_a_read_only_bundle_is_refused_before_the_run(bundle_copy, capsys, monkeypatch):
    """As root every folder is writable, so the read-only bundle is simulated where check probes it."""
    bundle = bundle_copy("onnx")
    real = Path.write_bytes

    def read_only(self, data):
        if self.parent == bundle:
            raise PermissionError(13, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, report, err = _check(bundle, capsys)
    assert code == 2 and report is None
    assert err.strip() == f"md-export: error: {bundle}: cannot write the parity report into the bundle (Read-only file system); check a writable copy of it"
