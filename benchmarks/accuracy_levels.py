"""Prompt accuracy per compression level and format, on the trained default model.

Each (format, level) cell is one export of the bundled default model (`md-export <target> -o DIR
--quantize LEVEL --no-check`), `md-export check --samples 1 --no-e2e` on it (every component's PSNR
into parity.json), then `md-export eval` (24 prompts x 2 seeds, the bundle's default steps, judged by the rule-based
shapes judge, against the fp32 PyTorch reference). Results go to a JSON file; --table turns it into
the markdown table and the PNG chart of benchmarks/README.md.

    python benchmarks/accuracy_levels.py --work /tmp/acc -o benchmarks/accuracy_levels.json
    python benchmarks/accuracy_levels.py --table benchmarks/accuracy_levels.json --chart benchmarks/accuracy_levels.png

Heavy: about 3 minutes per cell on 2 cores (Core ML cells most: milrun runs 960 UNet calls for the
evaluation); `--levels` picks some. One heavy job at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

LEVELS = {
    "coreml": ["fp16", "int8", "w8a8", "palettize-8", "palettize-6", "palettize-4", "palettize-2", "mixed-bit:4.5"],
    "tflite": ["fp32", "fp16", "int8", "w8a8", "int4-block32", "mixed:fc=int8,conv=fp16"],
    "onnx": ["fp32", "fp16", "int8", "w8a8"],
}
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def md_export(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("md-export")
    return subprocess.run([str(exe), *args], capture_output=True, text=True)


def measure(work: Path, targets: list[str], levels: set[str] | None = None, seeds: int = 2) -> list[dict]:
    rows = []
    for target in targets:
        for level in LEVELS[target]:
            out = work / f"{target}_{level.replace(':', '_').replace(',', '_').replace('=', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if levels and level not in levels:
                continue
            args = [target, "-o", str(out), "--force", "-q", "--no-check"] + (["--quantize", level] if level != "fp32" else ["--precision", "fp32"])
            exported = md_export(*args)
            export_s = time.perf_counter() - t0
            row = {"target": target, "level": level, "export_exit": exported.returncode, "export_seconds": round(export_s, 1)}
            bundle = out / target
            if not (bundle / "manifest.json").is_file():
                row["error"] = (exported.stderr.strip().splitlines() or ["?"])[-1]
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            t0 = time.perf_counter()
            checked = md_export("check", str(bundle), "--samples", "1", "--no-e2e", "-q")
            row["check_exit"], row["check_seconds"] = checked.returncode, round(time.perf_counter() - t0, 1)
            manifest = json.loads((bundle / "manifest.json").read_text())
            row["unet_bytes"] = manifest["models"]["unet"]["bytes"]
            row["bundle_bytes"] = sum(e["bytes"] for e in manifest["models"].values())
            parity = json.loads((bundle / "parity.json").read_text()) if (bundle / "parity.json").is_file() else {}
            row["psnr"] = {c["model"]: c.get("psnr") for c in parity.get("checks", [])}
            row["parity_status"] = {c["model"]: c["status"] for c in parity.get("checks", [])}
            t0 = time.perf_counter()
            evaluated = md_export("eval", str(bundle), "-q", "--seeds", str(seeds), "--json", str(out / "eval.json"))
            row["eval_exit"], row["eval_seconds"] = evaluated.returncode, round(time.perf_counter() - t0, 1)
            if (out / "eval.json").is_file():
                (rep,) = json.loads((out / "eval.json").read_text())
                row |= {"accuracy": rep["bundle"]["accuracy"], "reference_accuracy": rep["reference"]["accuracy"],
                        "eval_status": rep["bundle"]["status"], "wrong": rep["wrong"]["bundle"], "steps": rep["steps"],
                        "pairs": rep["bundle"]["pairs"]}
            else:
                row["error"] = (evaluated.stderr.strip().splitlines() or ["?"])[-1]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "wrong"}), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| format | level | prompt accuracy (reference) | eval | UNet bytes | bundle bytes | PSNR dB TE / UNet / VAE dec (check, 1 sample) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "accuracy" not in r:
            lines.append(f"| {r['target']} | `{r['level']}` | error: {r.get('error', '?')} | | | | |")
            continue
        psnr = " / ".join(f"{r['psnr'][c]:.1f}" if r["psnr"].get(c) is not None else "-" for c in COMPONENTS)
        lines.append(f"| {r['target']} | `{r['level']}` | {r['accuracy'] * 100:.1f} % ({r['reference_accuracy'] * 100:.1f} %) | "
                     f"{r['eval_status']} | {r['unet_bytes']:,} | {r['bundle_bytes']:,} | {psnr} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {"coreml": "tab:blue", "tflite": "tab:orange", "onnx": "tab:green"}
    order = ["fp32", "fp16", "int8", "w8a8", "int4-block32", "mixed:fc=int8,conv=fp16", "palettize-8", "palettize-6",
             "palettize-4", "palettize-2", "mixed-bit:4.5"]
    done = [r for r in rows if "accuracy" in r]
    levels = [lv for lv in order if any(r["level"] == lv for r in done)]
    width = 0.8 / len(LEVELS)
    for k, target in enumerate(LEVELS):  # grouped bars: one group per level, one bar per format
        rs = {r["level"]: r for r in done if r["target"] == target}
        xs = [i + (k - 1) * width for i, lv in enumerate(levels) if lv in rs]
        accs = [rs[lv]["accuracy"] * 100 for lv in levels if lv in rs]
        ax_acc.bar(xs, accs, width, color=colours[target], label=target)
        for x, a in zip(xs, accs):  # the value on every bar: a 0 % bar is otherwise invisible
            ax_acc.text(x, a + 1, f"{a:.0f}", ha="center", fontsize=6)
        ax_bytes.bar(xs, [rs[lv]["unet_bytes"] / 1e6 for lv in levels if lv in rs], width, color=colours[target], label=target)
    for ax in (ax_acc, ax_bytes):
        ax.set_xticks(range(len(levels)), levels)
    ref = next((r["reference_accuracy"] for r in rows if "reference_accuracy" in r), None)
    if ref is not None:
        ax_acc.axhline(ref * 100, color="grey", linestyle="--", label="fp32 PyTorch reference")
        ax_acc.axhline(90, color="red", linestyle=":", label="reference floor (90 %)")
    pairs = next((r.get("pairs") for r in rows if r.get("pairs")), None)
    ax_acc.set_ylabel(f"prompt accuracy, % of {pairs or '?'} (prompt, seed) pairs")
    ax_acc.set_ylim(0, 105)
    ax_bytes.set_ylabel("UNet file, MB")
    for ax in (ax_acc, ax_bytes):
        ax.tick_params(axis="x", rotation=60, labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_title("Prompt accuracy per compression level (trained default model)")
    ax_bytes.set_title("UNet bytes per level")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="folder for the exported bundles")
    ap.add_argument("--targets", default="coreml,tflite,onnx")
    ap.add_argument("--levels", help="comma list: only these levels")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt for md-export eval (24 prompts)")
    ap.add_argument("-o", "--out", type=Path, help="JSON results to write")
    ap.add_argument("--table", type=Path, help="print the markdown table of this JSON results file")
    ap.add_argument("--chart", type=Path, help="with --table: also draw the PNG chart here")
    args = ap.parse_args(argv)
    if args.table:
        rows = json.loads(args.table.read_text())["rows"]
        print(table(rows))
        if args.chart:
            chart(rows, args.chart)
        return 0
    if not args.work or not args.out:
        ap.error("give --work and -o (or --table)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = measure(args.work, args.targets.split(","), set(args.levels.split(",")) if args.levels else None, args.seeds)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
