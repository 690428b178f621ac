"""Work in a forked child: the result comes back, errors keep their class, a killed child is named,
and what the child allocates does not stay in the parent."""

from __future__ import annotations

import os
import resource
import signal

import pytest

from md_export.core import isolate
from md_export.core.errors import InputError
from md_export.core.isolate import ChildKilled, run_in_child, wants_child

pytestmark = pytest.mark.skipif(not isolate.fork_available(), reason="fork isolation is Linux only")


def _add(a, b=0):
    return {"sum": a + b, "pid": os.getpid()}


def _refuse():
    raise InputError("unet: something the user must fix")


class _Unrebuildable(Exception):
    def __init__(self, a, *, b):  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{a} {b}")


def _raise_unrebuildable():
    raise _Unrebuildable("x", b="y")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_quietly():
    os._exit(5)


def _allocate_and_touch(mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_the_result_comes_back_from_another_process():
    out = run_in_child("add", _add, 2, b=3)
    assert out["sum"] == 5 and out["pid"] != os.getpid()


def test_an_error_keeps_its_class_and_text():
    with pytest.raises(InputError, match="something the user must fix"):
        run_in_child("refuse", _refuse)


def test_an_error_that_cannot_be_rebuilt_still_arrives_with_its_text():
    with pytest.raises(RuntimeError, match="_Unrebuildable: x y"):
        run_in_child("odd", _raise_unrebuildable)


def test_a_killed_child_is_a_conversion_error_naming_the_work_and_signal():
    with pytest.raises(ChildKilled, match=r"tflite unet: lower: .*killed by SIGKILL \(out of memory\?\)"):
        run_in_child("tflite unet: lower", _die)


def test_a_child_that_exits_without_a_result_is_reported():
    with pytest.raises(ChildKilled, match="exited with code 5 and no result"):
        run_in_child("quiet", _exit_quietly)


def test_memory_the_child_touches_is_not_the_parents():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_peak_kb = run_in_child("allocate", _allocate_and_touch, 400)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert child_peak_kb >= 400 * 1024  # the child really held it
    assert after - before < 100 * 1024  # and this process never did


@pytest.mark.parametrize(("mode", "large", "expected"), [
    ("auto", False, False), ("auto", True, True), ("always", False, True), ("never", True, False)])
def test_the_setting_decides_which_runs_go_to_a_child(monkeypatch, mode, large, expected):
    monkeypatch.setenv(isolate.ENV, mode)
    assert wants_child(large) is expected


def test_a_bad_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(isolate.ENV, "sometimes")
    with pytest.raises(ValueError, match="MD_EXPORT_LOWER_IN_CHILD='sometimes'"):
        wants_child(False)


FORK_AFTER_OPENMP = """
import torch
from md_export.core.isolate import run_in_child
from md_export.export import _single_threaded_torch
torch.set_num_threads(2)
x = torch.randn(4_000_000)
x.clamp_(-1, 1)  # a parallel region: the parent's OpenMP team now exists

def work():
    return float(torch.randn(4_000_000).clamp_(-1, 1).abs().sum())

print(run_in_child("clamp", work, in_child_first=_single_threaded_torch) > 0)
"""


def test_a_child_forked_after_torch_used_openmp_does_not_deadlock():
    """At full size torch's ops run parallel regions; a forked child entering one waits for ever on
    the parent's OpenMP threads unless export's child setup makes it single-threaded."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FORK_AFTER_OPENMP], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("True"), proc.stderr[-2000:]


def test_children_are_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(isolate.ENV, raising=False)
    assert wants_child(True) is False  # measured: more total memory at full size, see DEFAULT_MODE
