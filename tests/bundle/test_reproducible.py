"""Bundles ship inside apps: two exports of the same input are byte-identical in every format, and
no file of a bundle holds an absolute path of the exporting machine."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from md_export.checkpoint.folder import Checkpoint
from md_export.config.options import ExportOptions
from md_export.export import export

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_exports_are_byte_identical(default_export, tmp_path):
    assert os.environ.get("SOURCE_DATE_EPOCH"), "conftest sets SOURCE_DATE_EPOCH for reproducible exports"
    again = export(Checkpoint.open(None), ExportOptions(out=tmp_path / "again", command="pytest"))
    for result in again:
        first, second = _files(default_export[result.target].bundle), _files(result.bundle)
        assert sorted(first) == sorted(second), result.target
        differing = [name for name in first if first[name] != second[name]]
        assert not differing, f"{result.target}: {differing}"


def test_no_absolute_path_of_this_machine_in_a_bundle(default_export):
    needles = {str(REPO), str(Path(tempfile.gettempdir())), str(Path.home())}
    needles |= {str(r.bundle.parent) for r in default_export.values()}
    pattern = re.compile(b"|".join(re.escape(n).encode() for n in sorted(needles, key=len, reverse=True)))
    for result in default_export.values():
        for name, data in _files(result.bundle).items():
            found = pattern.search(data)
            assert found is None, f"{result.target}/{name} holds {found.group().decode()!r}"


def test_bundle_files_have_normal_permissions(default_export):
    mask = os.umask(0)
    os.umask(mask)
    for result in default_export.values():
        for p in [result.bundle, *result.bundle.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o777 if p.is_dir() else 0o666) & ~mask, (p, oct(mode))


def test_reading_a_core_ml_package_leaves_its_bytes_alone(default_export, tmp_path):
    """coremltools rewrites Manifest.json when it opens a package (ct.utils.load_spec): md-export
    writes it the same way, so opening a package never changes the sha256 the manifest records."""
    import shutil

    import coremltools as ct

    from md_export.core.io import path_sha256

    package = tmp_path / "unet.mlpackage"
    shutil.copytree(default_export["coreml"].bundle / "unet.mlpackage", package)
    before = path_sha256(package)
    ct.utils.load_spec(str(package))
    assert path_sha256(package) == before
