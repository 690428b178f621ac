"""Full size in bounded memory: the MobileDiffusion UNet at paper size (random weights from its
config) exported to Core ML in a child process whose data segment is capped with
resource.setrlimit(RLIMIT_DATA): an export that needs more than the bound dies in the child and
the test fails. Slow (minutes, GBs): run with -m slow, nothing else heavy at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

BOUND_GB = 4.0  # the MobileDiffusion target

CHILD = textwrap.dedent("""
    import json, resource, sys
    bound = int(float(sys.argv[2]) * 1e9)
    resource.setrlimit(resource.RLIMIT_DATA, (bound, bound))
    from pathlib import Path
    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import attach_modules, make_plan
    from md_export.capture.torch_export import capture
    from md_export.export import lower_at
    from md_export.lower.base import LowerOptions
    ckpt = Checkpoint.open(sys.argv[1])
    plan = make_plan(ckpt)
    attach_modules(plan, ckpt, only=("unet",))
    comp = plan.components["unet"]
    out = Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    lowered = lower_at("coreml", comp, capture(comp), out, LowerOptions("fp16", "iOS17", "ALL"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"file": str(lowered.path), "peak_rss_bytes": peak}))
""")


@pytest.mark.slow
def test_mobilediffusion_unet_exports_under_the_bound(tmp_path):
    from md_export.checkpoint.init import init_checkpoint

    ckpt = init_checkpoint("mobilediffusion", tmp_path / "md-full", size="full", seed=0)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(BOUND_GB), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"export under RLIMIT_DATA={BOUND_GB} GB failed:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peak_rss_bytes"] <= BOUND_GB * 1e9
    assert (tmp_path / "out" / "unet.mlpackage").is_dir()
