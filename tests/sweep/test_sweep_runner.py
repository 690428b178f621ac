"""The sweep runner's mechanics with a stand-in md-export (fake_md_export.py): statuses, one-line
errors and exit codes, skipping by hash, a killed cell leaving nothing counted as finished, the
report and its plots. Real exports run in test_sweep_ray.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from md_export.core.errors import InputError
from md_export.sweep import cells as C
from md_export.sweep.cli import sweep_command
from md_export.sweep.report import pareto, write_report
from md_export.sweep.run import error_line, run_child, run_sweep, sweep_lock
from md_export.sweep.spec import load_spec

FAKE = Path(__file__).with_name("fake_md_export.py")
SRC = Path(__file__).resolve().parents[2] / "src"

SPEC = """schema_version = 1
[targets.tflite]
levels = ["none", "fp16", "int8", "int4"]
[check]
samples = 1
eval = true
"""


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("MD_EXPORT_SWEEP_CLI", f"{sys.executable} {FAKE}")
    for k in ("FAKE_FAIL", "FAKE_HANG", "FAKE_BELOW", "FAKE_RSS_MB"):
        monkeypatch.delenv(k, raising=False)
    p = tmp_path / "sweep.toml"
    p.write_text(SPEC)
    return p


def by_level(records):
    return {r["cell"]["level"]: r for r in records}


def test_statuses_errors_and_skips(fake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", "int8")
    monkeypatch.setenv("FAKE_BELOW", "int4")
    assert sweep_command(fake, out, "off") == 3  # a failed cell: exit 3, the others still ran
    data = json.loads((out / "sweep.json").read_text())
    rows = {r["level"]: r for r in data["cells"]}
    assert [rows[k]["status"] for k in ("none", "fp16", "int8", "int4")] == ["pass", "pass", "failed", "below-floor"]
    assert rows["int8"]["exit_code"] == 2 and rows["int8"]["error"] == "md-export: error: --quantize int8: forced failure"
    assert rows["none"]["bytes"] == 4000 and rows["fp16"]["ideal_bytes"] == 1000 and rows["fp16"]["models"]["unet"]["psnr"] == 60.0
    assert rows["none"]["psnr_end_to_end"] == 115.0 and rows["none"]["eval"] == "pass"
    assert rows["fp16"]["prompt_accuracy"] == 1.0 and rows["none"]["reference_prompt_accuracy"] == 1.0
    assert rows["int4"]["eval"] == "not applicable" and rows["int4"]["status"] == "below-floor"  # eval does not change a status
    assert rows["none"]["export_peak_rss_bytes"] > 1e6 and rows["none"]["export_s"] > 0 and rows["none"]["check_s"] > 0
    assert data["counts"] == {"pass": 2, "below-floor": 1, "exported": 0, "failed": 1}
    md = (out / "sweep.md").read_text()
    assert "forced failure" in md and "not applicable" in md and "100.0 % (100.0 %)" in md and "| default/tflite-fp16 | pass | 0.00 |" in md
    for p in ("size_vs_quality.png", "time_per_cell.png"):
        assert (out / "plots" / p).stat().st_size > 1000
    # the bundle is in place, and every path recorded names the final folder, not the staging one
    cell = out / "cells" / "default" / "tflite-fp16"
    assert (cell / "tflite" / "unet.bin").stat().st_size == 2000
    assert ".partial-" not in (cell / "cell.json").read_text() + (cell / "check.json").read_text()
    assert not list((out / "cells" / "default").glob(".*"))

    # the same sweep again: nothing runs (the failure is md-export's own exit 2: same inputs, same failure)
    monkeypatch.delenv("FAKE_FAIL")
    capsys.readouterr()
    assert sweep_command(fake, out, "off") == 3
    err = capsys.readouterr().err
    assert "4 skipped, 0 to run" in err and "--retry-failed runs it again" in err
    assert json.loads((out / "sweep.json").read_text())["ran"] == 0
    # --retry-failed runs the failed cell only; it passes now
    res = run_sweep(load_spec(fake), out, "off", retry_failed=True)
    assert res.meta["ran"] == 1 and by_level(res.records)["int8"]["status"] == "pass"
    # a check option changes every cell's hash: all run again
    fake.write_text(SPEC.replace("samples = 1", "samples = 2"))
    res = run_sweep(load_spec(fake), out, "off")
    assert res.meta["ran"] == 4 and res.meta["skipped"] == 0
    # --report merges again from the cells on disk
    (out / "sweep.md").unlink()
    assert sweep_command(None, out, None, True) == 0
    assert "below-floor" in (out / "sweep.md").read_text()


def test_killed_sweep_leaves_no_finished_cell(fake, tmp_path):
    out, pidfile = tmp_path / "out", tmp_path / "child.pid"
    env = {**os.environ, "FAKE_HANG": "fp16", "FAKE_PIDFILE": str(pidfile), "PYTHONPATH": str(SRC)}
    fake.write_text(SPEC.replace('"none", "fp16", "int8", "int4"', '"fp16"'))
    p = subprocess.Popen([sys.executable, "-m", "md_export.sweep", str(fake), "-o", str(out), "--ray", "off", "-q"], env=env)
    try:
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        child = int(pidfile.read_text())
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    for _ in range(50):  # the export child dies with its parent (PR_SET_PDEATHSIG), it does not write on
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the export child outlived the killed sweep")
    cells = out / "cells" / "default"
    assert [q.name.split(".partial-")[0] for q in cells.iterdir()] == [".tflite-fp16"]
    spec = load_spec(fake)
    res = run_sweep(spec, out, "off")  # no hang now: the leftover is removed, the cell runs and finishes
    assert res.meta["partials_removed"] == 1 and res.meta["ran"] == 1 and res.records[0]["status"] == "pass"
    assert [q.name for q in cells.iterdir()] == ["tflite-fp16"]


def test_timeout_kills_the_cell(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_HANG", "fp16")
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "pid"))
    fake.write_text(SPEC.replace('"none", "fp16", "int8", "int4"', '"fp16", "int8"') + "[resources]\ntimeout_minutes = 0.05\n")
    t0 = time.monotonic()
    res = run_sweep(load_spec(fake), tmp_path / "out", "off")
    assert time.monotonic() - t0 < 60
    r = by_level(res.records)
    assert r["fp16"]["status"] == "failed" and "timed out after 3 s" in r["fp16"]["error"] and r["fp16"]["exit_code"] < 0
    assert r["int8"]["status"] == "pass"
    assert not C.is_reproducible_failure(tmp_path / "out", C.Cell(**{**r["fp16"]["cell"], "keep": (), "args": ()}))


def test_family_models_are_made_once(fake, tmp_path, monkeypatch):
    log = tmp_path / "init.log"
    monkeypatch.setenv("FAKE_INIT_LOG", str(log))
    fake.write_text(SPEC.replace('"none", "fp16", "int8", "int4"', '"fp16"')
                    + "[[models]]\nfamily = 'mobilediffusion'\n[[models]]\nfamily = 'sd15'\nseed = 2\n")
    out = tmp_path / "out"
    res = run_sweep(load_spec(fake), out, "off")
    assert [r["status"] for r in res.records] == ["pass", "pass"]
    assert res.records[0]["cell"]["checkpoint"] == str(out / "models" / "mobilediffusion-tiny")
    assert res.records[0]["key"]["weights_sha256"] != res.records[1]["key"]["weights_sha256"]
    run_sweep(load_spec(fake), out, "off")
    assert log.read_text().split() == ["mobilediffusion", "sd15"]  # not again on the second run


def test_run_child_measures_the_child(tmp_path):
    code = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import sys; sys.exit(7)"
    r = run_child([sys.executable, "-c", code], tmp_path / "o", tmp_path / "e", dict(os.environ))
    assert r.exit_code == 7 and r.peak_rss_bytes > 300 * 2**20 and r.wall_s > 0
    ballast = bytearray(400 * 2**20)  # this process grows: a child must not be charged for it
    ballast[::4096] = b"y" * len(ballast[::4096])
    small = run_child([sys.executable, "-c", "pass"], tmp_path / "o", tmp_path / "e", dict(os.environ))
    del ballast
    assert small.exit_code == 0 and small.peak_rss_bytes < 100 * 2**20
    log = tmp_path / "log"
    log.write_text("Traceback...\nmd-export: error: unet: conversion failed at op conv\nwarning later\n")
    assert error_line(log, 3) == "md-export: error: unet: conversion failed at op conv"
    assert error_line(log, -9).startswith("killed by SIGKILL")


def test_one_sweep_per_folder(tmp_path):
    with sweep_lock(tmp_path / "out"), pytest.raises(InputError, match="another sweep is running"), sweep_lock(tmp_path / "out"):
        pass


def test_ray_asked_for_but_missing(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert sweep_command(fake, tmp_path / "a", "local") == 2
    err = capsys.readouterr().err.strip()
    assert err == "md-export: error: --ray: Ray is not installed; install it with: pip install 'md-export[ray]'"
    assert sweep_command(fake, tmp_path / "b", "auto") == 2
    assert "--ray auto: Ray is not installed" in capsys.readouterr().err
    fake.write_text(SPEC.replace('"none", "fp16", "int8", "int4"', '"fp16"'))
    assert sweep_command(fake, tmp_path / "c", None) == 0  # no --ray: one cell at a time, and it says how to get Ray
    assert "Ray is not installed: running 1 cell(s) one at a time (pip install 'md-export[ray]'" in capsys.readouterr().err


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "s.toml"
    bad.write_text("schema_version = 1\n[targets.onnx]\nlevels = ['int3']\n")
    assert sweep_command(bad, tmp_path / "o", None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"md-export: error: {bad}: targets.onnx.levels[0]: 'int3' is not a onnx compression level; known: none, fp16, int8, w8a8"]
    assert sweep_command(None, tmp_path / "nothing", None, True) == 2
    assert "no sweep here" in capsys.readouterr().err
    assert sweep_command(bad, tmp_path / "o", "carrier-pigeon") == 2


def test_pareto_front():
    pts = [(10.0, 60.0), (5.0, 40.0), (7.0, 35.0), (2.5, 20.0), (10.0, 50.0), (12.0, 58.0)]
    assert pareto(pts) == [3, 1, 0]


def test_pillow_plots_without_matplotlib(tmp_path):
    rec = {"status": "pass", "cell": {"target": "onnx", "level": "int8", "model": "m", "check": {}}, "bytes": 2_000_000,
           "ideal_bytes": 1_000_000, "models": {"unet": {"bytes": 2_000_000}}, "export": {"wall_s": 30.0}, "check": {"wall_s": 9.0},
           "parity": {"checks": {"unet": {"psnr": 40.0}, "end_to_end": {"psnr": float("inf")}}}, "name": "m/onnx-int8", "label": "m/onnx-int8"}
    data = write_report(tmp_path, [rec, {**rec, "bytes": 4_000_000, "cell": {**rec["cell"], "level": "fp16"}}], {}, use_matplotlib=False)
    assert data["plots_drawn_with"] == "pillow"
    from PIL import Image

    for p in ("size_vs_quality.png", "time_per_cell.png"):
        with Image.open(tmp_path / "plots" / p) as im:
            assert im.size[0] == 900 and len(set(im.getdata())) > 3
    assert json.loads((tmp_path / "sweep.json").read_text())["cells"][0]["psnr_end_to_end"] == "inf"
