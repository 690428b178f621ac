"""map_tasks: the same results in the items' order serially and on Ray; fn's own exceptions are
handed back, not retried; a worker lost mid-task is run again once (max_retries=1)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from md_export.core.errors import InputError
from md_export.sweep.executor import choose_backend, map_tasks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
T = importlib.import_module("ray_tasks")  # beside this file; the Ray workers import it too


def test_serial_order_errors_and_callback():
    seen = []
    assert map_tasks(T.square, [3, 1, 2], backend="serial", on_result=lambda i, r: seen.append((i, r))) == [9, 1, 4]
    assert seen == [(0, 9), (1, 1), (2, 4)]
    out = map_tasks(T.fail_on_three, [1, 3, 5], backend="serial", return_exceptions=True)
    assert out[0] == 1 and out[2] == 5 and isinstance(out[1], ValueError)
    with pytest.raises(ValueError, match="three"):
        map_tasks(T.fail_on_three, [1, 3, 5], backend="serial")
    assert map_tasks(T.square, [], backend="serial") == []


def test_backend_choice(monkeypatch):
    assert choose_backend("serial", None) == "serial"
    with pytest.raises(InputError, match="backend 'gpu'"):
        choose_backend("gpu")
    monkeypatch.setitem(sys.modules, "ray", None)
    assert choose_backend("auto", None) == "serial"
    with pytest.raises(InputError, match=r"--ray ray://head:10001: Ray is not installed; install it with: pip install 'md-export\[ray\]'"):
        choose_backend("auto", "ray://head:10001")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))  # workers import ray_tasks
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def test_ray_same_results_as_serial(ray_local):
    items = list(range(7))
    seen = []
    got = map_tasks(T.square, items, resources_per_task={"num_cpus": 1}, on_result=lambda i, r: seen.append(i))
    assert got == map_tasks(T.square, items, backend="serial") and sorted(seen) == items
    out = map_tasks(T.fail_on_three, [1, 3, 5], return_exceptions=True)
    assert out[0] == 1 and out[2] == 5
    assert isinstance(out[1], ValueError) and "three is not allowed" in str(out[1])  # fn's own error, not retried
    assert ray_local.is_initialized()  # an instance someone else started is left up


def test_ray_retries_a_lost_worker_once(ray_local, tmp_path):
    value, pid = map_tasks(T.crash_once, [(str(tmp_path / "m1"), 4)], max_retries=1)[0]
    first = int((tmp_path / "m1").read_text())
    assert value == 40 and pid != first  # the second attempt ran in a new worker
    lost = map_tasks(T.crash_once, [(str(tmp_path / "m2"), 4)], max_retries=0, return_exceptions=True)[0]
    assert isinstance(lost, ray_local.exceptions.RayError) and (tmp_path / "m2").exists()


def test_ray_refuses_what_no_node_can_take(ray_local):
    out = map_tasks(T.square, [2, 3], resources_per_task=lambda x: {"num_cpus": 1, "memory": (1 << 50) if x == 3 else 2**20},
                    return_exceptions=True)
    assert out[0] == 4 and isinstance(out[1], InputError) and "no node can run it (memory" in str(out[1])
