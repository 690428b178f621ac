"""The iOS app cannot be built here (no Swift toolchain): check what can be checked — the Xcode
project's structure and the Swift algorithms' Python mirror against the goldens. (The Android
core's Kotlin tests run on the JVM from scripts/test.sh.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["check_pbxproj.py", "swift_port_check.py"])
def test_ios_tool(script):
    path = ROOT / "ios_demo" / "tools" / script
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
