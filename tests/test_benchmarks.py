"""benchmarks/latency.py in its quickest mode on the default model: the JSON it writes has a
latency, a ratio and a size per runtime, and no latency for Core ML on Linux. No timing asserts:
speed targets are ratios read from the benchmark's output, not test failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LATENCY = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


def test_latency_quick_mode_writes_ratios_and_sizes(default_export, tmp_path):
    out = default_export["tflite"].bundle.parent
    report = tmp_path / "latency.json"
    # its own process: the benchmark sets torch's thread count and resets the RSS high-water mark
    proc = subprocess.run([sys.executable, str(LATENCY), "bundles", str(out), "--quick", "--json", str(report)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(report.read_text())
    assert set(r["components"]) == {"text_encoder", "unet", "vae_decoder"}
    for name, row in r["components"].items():
        assert row["pytorch"]["median_ms"] > 0, name
        for target in ("tflite", "onnx"):
            e = row[target]
            assert e["median_ms"] > 0 and e["ratio"] > 0 and e["bytes"] > 0, (name, target)
            # the timed fp32 artifact computes what the timed reference computes
            assert e["agreement"]["psnr_db"] > 60, (name, target, e["agreement"])
        coreml = row["coreml"]
        assert coreml["latency_ms"] is None and coreml["ratio"] is None, name
        assert coreml["evaluator_ms"] > 0 and "cannot be measured on Linux" in coreml["note"], name
    assert r["peak_rss_bytes"] > 0
    assert r["threads"] == 2 and r["runs"] == 1
    assert "| unet |" in proc.stdout
