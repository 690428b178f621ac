"""Snapdragon NPU table: per exported tflite bundle, model and SoC, what LiteRT's AOT compiler placed on the HTP and how
the HTP simulator's output compares with the uncompiled model on the CPU.

    md-export tflite -o /tmp/npu_fp32 --no-check            # and --quantize fp16 / w8a8 / int8 into /tmp/npu_<level>
    python benchmarks/npu_table.py /tmp/npu_fp32/tflite /tmp/npu_fp16/tflite ... --socs SM8750,SM8650 [--json out.json]

Each bundle is copied first (the AI pack is written into the copy). Columns: ops on the NPU / total, compile seconds,
fallback and compiled sizes, PSNR (20*log10(max|ref|/RMSE), worst output, seeded inputs, ai_edge_litert CPU as the
reference), simulator wall time of one call (child process start + load + run) and its run time alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--socs", default="SM8750,SM8650")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-sim", action="store_true", help="compile only")
    args = ap.parse_args(argv)

    from md_export.npu.check import check_npu_pack
    from md_export.verify.floors import npu_floor
    from md_export.npu.compile import export_npu

    rows = []
    with tempfile.TemporaryDirectory(prefix="npu-table-") as tmp:
        for b in args.bundles:
            manifest = json.loads((b / "manifest.json").read_text())
            label = "/".join(
                sorted(
                    {
                        m.get("compression", "?") if m.get("compression") != "none" else m.get("precision", "?")
                        for m in manifest["models"].values()
                    }
                )
            )
            work = Path(tmp) / f"{len(rows)}_{b.parent.name}"
            shutil.copytree(b, work)
            placed = export_npu(work, f"qualcomm:{args.socs}", progress=lambda s: print(s, file=sys.stderr))
            parity = {} if args.no_sim else {(p.model, p.soc): p for p in check_npu_pack(work, floor_of=npu_floor, seed=args.seed)}
            for r in placed:
                p = parity.get((r.model, r.soc))
                rows.append(
                    {
                        "level": label,
                        "model": r.model,
                        "soc": r.soc,
                        "status": r.status,
                        "ops": f"{r.ops_on_npu}/{r.ops_total}",
                        "compile_s": r.seconds,
                        "fallback_bytes": (work / manifest["models"][r.model]["file"]).stat().st_size,
                        "compiled_bytes": r.bytes,
                        "psnr": None if p is None else p.psnr,
                        "floor": None if p is None else p.floor,
                        "sim_wall_s": None if p is None else p.sim_wall_seconds,
                        "sim_run_s": None if p is None else p.sim_run_seconds,
                        "qnn": r.qnn_version,
                        "reason": r.reason,
                    }
                )
    cols = [
        "level",
        "model",
        "soc",
        "status",
        "ops",
        "compile_s",
        "fallback_bytes",
        "compiled_bytes",
        "psnr",
        "floor",
        "sim_wall_s",
        "sim_run_s",
        "reason",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join("" if row[c] is None else str(row[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
