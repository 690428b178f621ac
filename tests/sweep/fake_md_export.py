"""A stand-in for the md-export CLI that writes a minimal bundle and check report at once, so the
sweep runner's mechanics (staging, skipping, failures, kills) are tested in seconds. The real
CLI is exercised by test_sweep_ray.py.

Knobs (environment): FAKE_FAIL=<level> exits 2 with a one-line error for that level;
FAKE_HANG=<level> writes its pid to $FAKE_PIDFILE and sleeps (FAKE_HANG_ONCE: only while there
is no pid file yet); FAKE_BELOW=<level> makes its check
fall short (exit 1); FAKE_RSS_MB=<n> touches n MB before exporting.
"""

import json
import os
import sys
import time
from pathlib import Path

SIZES = {"none": 4000, "fp16": 2000, "int8": 1000, "int4": 500}
PSNR = {"none": 120.0, "fp16": 60.0, "int8": 40.0, "int4": 20.0}


def export(argv):
    target = argv[0]
    out = Path(argv[argv.index("-o") + 1])
    level = argv[argv.index("--quantize") + 1] if "--quantize" in argv else "none"
    if os.environ.get("FAKE_FAIL") == level:
        print("md-export: error: --quantize " + level + ": forced failure", file=sys.stderr)
        return 2
    once = Path(os.environ.get("FAKE_PIDFILE", "-")).exists() and os.environ.get("FAKE_HANG_ONCE") == level
    if os.environ.get("FAKE_HANG") == level or (os.environ.get("FAKE_HANG_ONCE") == level and not once):
        Path(os.environ["FAKE_PIDFILE"]).write_text(str(os.getpid()))
        time.sleep(120)
    if os.environ.get("FAKE_RSS_MB"):
        block = bytearray(int(os.environ["FAKE_RSS_MB"]) * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])
    bundle = out / target
    bundle.mkdir(parents=True)
    size = SIZES.get(level, 3000)
    (bundle / "unet.bin").write_bytes(b"\0" * size)
    manifest = {"schema_version": 1, "target": target, "pipeline": {}, "versions": {"md-export": "fake"},
                "models": {"unet": {"file": "unet.bin", "precision": level, "compression": level, "parameters": 1000,
                                    "bytes": size, "ideal_bytes": size // 2}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    print(json.dumps({"bundles": [{"target": target, "path": str(bundle)}]}))
    return 0


def check(argv):
    bundle = Path(argv[0])
    report = Path(argv[argv.index("--json") + 1])
    level = json.loads((bundle / "manifest.json").read_text())["models"]["unet"]["precision"]
    below = os.environ.get("FAKE_BELOW") == level
    psnr = PSNR.get(level, 30.0)
    checks = [{"model": "unet", "status": "fail" if below else "pass", "psnr": psnr, "threshold": {"psnr": 35.0}},
              {"model": "end_to_end", "status": "pass", "psnr": psnr - 5, "threshold": {"psnr": 25.0}}]
    report.write_text(json.dumps([{"bundle": str(bundle), "status": "fail" if below else "pass", "samples": 1, "seed": 0,
                                   "checks": checks}]))
    return 1 if below else 0


def evaluate(argv):
    """Prompt accuracy by level: none/fp16 keep the reference's 1.0, int8 0.75; int4 is refused as a
    model of another vocabulary would be (exit 2)."""
    bundle = Path(argv[0])
    level = json.loads((bundle / "manifest.json").read_text())["models"]["unet"]["precision"]
    if level == "int4":
        print(f"md-export: error: {bundle}: its reference checkpoint declares no training vocabulary", file=sys.stderr)
        return 2
    acc = {"none": 1.0, "fp16": 1.0}.get(level, 0.75)
    report = Path(argv[argv.index("--json") + 1])
    report.write_text(json.dumps([{"target": "tflite", "level": level, "bundle": {"accuracy": acc, "pairs": 48, "status": "pass" if acc == 1.0 else "measured"},
                                   "reference": {"accuracy": 1.0}}]))
    return 0


def init(argv):
    out = Path(argv[argv.index("-o") + 1])
    (out / "unet").mkdir(parents=True)
    seed = argv[argv.index("--seed") + 1]
    (out / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(f"{argv[0]} seed {seed}".encode() * 100)
    if os.environ.get("FAKE_INIT_LOG"):
        with open(os.environ["FAKE_INIT_LOG"], "a") as f:
            f.write(argv[0] + "\n")
    return 0


def main():
    argv = sys.argv[1:]
    if argv[0] == "init":
        return init(argv[1:])
    if argv[0] == "eval":
        return evaluate(argv[1:])
    return check(argv[1:]) if argv[0] == "check" else export(argv)


if __name__ == "__main__":
    sys.exit(main())
