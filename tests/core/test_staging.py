"""The staging folder: a lock per target, the existence check repeated at the rename, and SIGTERM
or Ctrl-C cleaning up every staging file (core.io.atomic_folder, cli.app.main)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from md_export.core.errors import InputError
from md_export.core.io import atomic_folder


def test_a_live_lock_refuses_with_the_holder_pid(tmp_path):
    target = tmp_path / "out" / "onnx"
    target.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (target.parent / ".onnx.lock").write_text(f"{holder.pid}\n")
        with pytest.raises(InputError, match=rf"another md-export \(pid {holder.pid}\) is writing it"):
            with atomic_folder(target, force=False):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not target.exists()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    target = tmp_path / "out" / "onnx"
    target.parent.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (target.parent / ".onnx.lock").write_text(f"{dead.pid}\n")
    with atomic_folder(target, force=False) as tmp:
        (tmp / "x").write_text("x")
    assert (target / "x").read_text() == "x" and not (target.parent / ".onnx.lock").exists()


def test_a_target_that_appears_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / "out" / "onnx"
    with pytest.raises(InputError, match="appeared while exporting; pass --force"):
        with atomic_folder(target, force=False) as tmp:
            (tmp / "mine").write_text("new")
            target.mkdir(parents=True)
            (target / "theirs").write_text("old")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["onnx"]  # no staging folder, no lock


def test_an_unwritable_output_is_bad_input(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="cannot write here"):
        with atomic_folder(tmp_path / "file" / "onnx", force=False):
            pass


def test_sigterm_cleans_up_and_says_so(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "md_export.cli.app", "onnx", "-o", str(out), "--no-check"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob(".onnx.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the export ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == f"md-export: interrupted; nothing written to {out / 'onnx'}"
    assert not out.exists()  # the export made out/ and takes it away again: the tree is as it was
