"""Markdown table from exported bundles: format x level -> bytes, ideal bytes, ratio, PSNR per
component (from the bundle's parity.json, i.e. `md-export check`) and end-to-end image PSNR.

    python benchmarks/collect_levels.py /tmp/levels/*/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(paths):
    for p in paths:
        for manifest in sorted(Path(p).glob("*/manifest.json")):
            m = json.loads(manifest.read_text())
            parity = manifest.parent / "parity.json"
            psnr = {}
            if parity.is_file():
                for c in json.loads(parity.read_text())["checks"]:
                    psnr[c["model"]] = (c.get("psnr"), c["status"])
            levels = sorted({e.get("compression", "none") for e in m["models"].values()})
            total = sum(e["bytes"] for e in m["models"].values())
            ideal = sum(e.get("ideal_bytes") or 0 for e in m["models"].values())
            yield m["target"], "+".join(levels), m["models"], total, ideal, psnr


def main(argv):
    print("| format | level | model | bytes | ideal bytes | ratio | within budget | PSNR dB (check) |")
    print("|---|---|---|---|---|---|---|---|")
    for target, level, models, total, ideal, psnr in rows(argv):
        for name, e in models.items():
            p, st = psnr.get(name, (None, "-"))
            size = e.get("size", {})
            print(f"| {target} | {e.get('compression', 'none')} | {name} | {e['bytes']} | {e.get('ideal_bytes')} | "
                  f"{e['bytes'] / max(e.get('ideal_bytes') or 1, 1):.2f} | {size.get('within_budget', '-')} | "
                  f"{p if p is None else round(float(p), 1)} {st} |")
        p, st = psnr.get("end_to_end", (None, "-"))
        print(f"| {target} | {level} | **all (end to end)** | {total} | {ideal} | {total / max(ideal, 1):.2f} | | "
              f"{p if p is None else round(float(p), 1)} {st} |")


if __name__ == "__main__":
    main(sys.argv[1:])
