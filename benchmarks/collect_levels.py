"""Markdown table from exported bundles: format x level -> bytes, ideal bytes, ratio, PSNR per
component (from the bundle's parity.json, i.e. `md-export check`) and end-to-end image PSNR.

    python benchmarks/collect_levels.py /tmp/levels/*/
    python benchmarks/collect_levels.py --compact /tmp/levels/*/   # one row per format x level
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


COMPONENTS = ("text_encoder", "unet", "vae_decoder", "end_to_end")


def _worst_checks(bundle: Path) -> tuple[dict, str]:
    """Per model the check with the lowest PSNR (a model may be checked in more than one runtime),
    and the bundle's overall parity status."""
    parity = bundle / "parity.json"
    if not parity.is_file():
        return {}, "no parity.json"
    report = json.loads(parity.read_text())
    worst = {}
    for c in report["checks"]:
        p = c.get("psnr")
        value = float(p) if p is not None else None
        old = worst.get(c["model"])
        if old is None or (value is not None and (old[0] is None or value < old[0])):
            worst[c["model"]] = (value, c["status"], c.get("threshold", {}).get("psnr"))
    return worst, report["status"]


def _db(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def compact(argv):
    """One row per bundle: sizes summed over its models, worst PSNR per component, parity vs floor."""
    print("| format | level | bytes / ideal / ratio | within budget | PSNR dB TE / UNet / VAE dec / end to end | parity vs floor |")
    print("|---|---|---|---|---|---|")
    for p in argv:
        for manifest in sorted(Path(p).glob("*/manifest.json")):
            m = json.loads(manifest.read_text())
            models = m["models"].values()
            levels = "+".join(sorted({e.get("compression", "none") for e in models}))
            total = sum(e["bytes"] for e in models)
            ideal = sum(e.get("ideal_bytes") or 0 for e in models)
            over = [name for name, e in m["models"].items() if e.get("size", {}).get("within_budget") is False]
            known = all("within_budget" in e.get("size", {}) for e in models)
            budget_text = f"no ({', '.join(over)})" if over else ("yes" if known else "-")
            worst, status = _worst_checks(manifest.parent)
            psnr = " / ".join(_db(worst.get(c, (None,))[0]) for c in COMPONENTS)
            below = [f"{c} {_db(v)} < {floor:g}" for c, (v, st, floor) in worst.items() if st == "fail"]
            verdict = status + (f" ({'; '.join(below)})" if below else "")
            print(f"| {m['target']} | {levels} | {total} / {ideal} / {total / max(ideal, 1):.2f} | {budget_text} | "
                  f"{psnr} | {verdict} |")


def main(argv):
    if argv and argv[0] == "--compact":
        return compact(argv[1:])
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
