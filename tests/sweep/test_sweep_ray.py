"""Sweeps on Ray: a local instance running real exports and checks of the default model (one cell
made to fail), then the same sweep skipped whole; and a two-node local cluster that loses the node
running a cell, which Ray runs again on the other node."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from md_export.sweep.run import run_sweep
from md_export.sweep.spec import load_spec

pytest.importorskip("ray")

FAKE = Path(__file__).with_name("fake_md_export.py")

FOUR_CELLS = """schema_version = 1
name = "four cheap cells"
[targets.onnx]
levels = ["none", "fp16", "int8"]
[targets.tflite]
levels = ["mixed:fc=int9"]          # passes the sweep file's check (a mixed level), the exporter refuses it: exit 2
[check]
samples = 1
e2e_steps = 2
[resources]
cpus_per_cell = 1
"""


@pytest.mark.slow
def test_local_ray_sweep_of_the_default_model(tmp_path):
    spec_path = tmp_path / "four.toml"
    spec_path.write_text(FOUR_CELLS)
    out = tmp_path / "run"
    lines: list[str] = []
    t0 = time.monotonic()
    res = run_sweep(load_spec(spec_path), out, "local", num_cpus=2, say=lines.append)
    wall = time.monotonic() - t0
    assert res.meta["backend"] == "ray" and res.meta["ray"]["num_cpus"] == 2
    r = {rec["cell"]["target"] + "-" + rec["cell"]["level"]: rec for rec in res.records}
    assert [r[k]["status"] for k in ("onnx-none", "onnx-fp16", "onnx-int8")] == ["pass"] * 3, [x.get("error") for x in r.values()]
    bad = r["tflite-mixed:fc=int9"]
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and bad["stage"] == "export"
    assert bad["error"].startswith("md-export: error: --quantize mixed:fc=int9")
    # the cells ran as Ray tasks (worker processes on the instance's node), not in this process
    assert all(rec["pid"] != os.getpid() and rec.get("ray_node") for rec in res.records)
    # measured, not copied: size falls and quality falls with the level
    size = [r[k]["bytes"] for k in ("onnx-none", "onnx-fp16", "onnx-int8")]
    e2e = [r[k]["parity"]["checks"]["end_to_end"]["psnr"] for k in ("onnx-none", "onnx-fp16", "onnx-int8")]
    assert size[0] > size[1] > size[2] and e2e[0] > e2e[1] > e2e[2] > 25, (size, e2e)
    for k in ("onnx-none", "onnx-fp16", "onnx-int8"):
        assert r[k]["export"]["peak_rss_bytes"] > 100e6 and r[k]["check"]["wall_s"] > 0
        assert (out / "cells" / "default" / k / "onnx" / "manifest.json").is_file()
        assert set(r[k]["parity"]["checks"]) == {"text_encoder", "unet", "vae_decoder", "end_to_end"}
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["cells"]) == 4 and data["counts"]["failed"] == 1 and data["counts"]["pass"] == 3
    assert all((out / "plots" / p).stat().st_size > 10_000 for p in ("size_vs_quality.png", "time_per_cell.png"))
    assert "md-export: error: --quantize mixed:fc=int9" in (out / "sweep.md").read_text()
    # the second run skips all four by hash (the failure is md-export's own exit 2) and starts no Ray
    t1 = time.monotonic()
    again = run_sweep(load_spec(spec_path), out, "local", num_cpus=2)
    assert again.meta["ran"] == 0 and again.meta["skipped"] == 4 and again.meta["backend"] == "none"
    assert time.monotonic() - t1 < wall / 4
    assert [x["hash"] for x in again.records] == [x["hash"] for x in res.records]
    assert [x["status"] for x in again.records] == [x["status"] for x in res.records]


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


@pytest.mark.slow
def test_two_node_cluster_loses_a_node_mid_cell(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    pidfile = tmp_path / "hang.pid"
    # the nodes inherit this environment: the stand-in CLI, and its knob that hangs the first fp16 export
    monkeypatch.setenv("MD_EXPORT_SWEEP_CLI", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("FAKE_HANG_ONCE", "fp16")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
        cluster.wait_for_nodes()
        spec_path = tmp_path / "two.toml"
        spec_path.write_text('schema_version = 1\n[targets.tflite]\nlevels = ["fp16", "int8", "int4"]\n[check]\nsamples = 1\n')
        box: dict = {}
        worker = threading.Thread(target=lambda: box.update(res=run_sweep(load_spec(spec_path), tmp_path / "out", cluster.address)))
        worker.start()
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        hung = int(pidfile.read_text())
        chain = _ancestors(hung)
        victim = [n for n in nodes if n.all_processes["raylet"][0].process.pid in chain]
        assert len(victim) == 1, "the hanging cell's raylet is one of the two worker nodes"
        cluster.remove_node(victim[0])  # the node and its workers die mid-cell
        worker.join(timeout=300)
        assert not worker.is_alive()
    finally:
        cluster.shutdown()
    res = box["res"]
    r = {rec["cell"]["level"]: rec for rec in res.records}
    assert all(r[k]["status"] == "pass" for k in ("fp16", "int8", "int4")), [x.get("error") for x in r.values()]
    survivor = next(n for n in nodes if n is not victim[0])
    assert r["fp16"]["ray_node"] == survivor.node_id  # the retry ran on the node that was left
    assert res.meta["partials_removed"] >= 1  # the lost attempt's staging folder, never counted as finished
    assert not any(p.name.startswith(".") for p in (tmp_path / "out" / "cells" / "default").iterdir())
