"""Full-size export and check: time and peak RSS per stage, each command its own process under
/usr/bin/time -v, on random-weight pipelines built from the published configs.

    python benchmarks/full_size.py --work /tmp/full -o benchmarks/full_size.json               # SD 1.5 and MobileDiffusion
    python benchmarks/full_size.py --work /tmp/full --families sd15 --stages export-coreml
    python benchmarks/full_size.py --work /tmp/full --peer "python -m python_coreml_stable_diffusion.torch2coreml \\
        --model-version {checkpoint} --convert-unet --convert-text-encoder --convert-vae-decoder -o {work}/peer"
    python benchmarks/full_size.py --table benchmarks/full_size.json --chart benchmarks/full_size.png

Stages (per family): init (md-export init FAMILY --size full), export-coreml, export-tflite,
export (both targets in one command, the issue's target), check (both bundles, 2 samples, end to end
at the family's default steps). --peer runs a second command on the same checkpoint in the same run
and prints the ratio of times and peaks. One heavy job at a time: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("init", "export-coreml", "export-tflite", "export", "check")
TARGETS = {"sd15": {"rss_gb": 6.0, "export_s": 360.0, "check_s": 600.0}, "mobilediffusion": {"rss_gb": 4.0}}


def md_export() -> list[str]:
    exe = Path(sys.executable).with_name("md-export")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from md_export.cli.app import main; sys.exit(main(sys.argv[1:]))"]


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _tree_pss(pid: int) -> tuple[int, int]:
    """Proportional set size of a process and all its descendants, bytes: pages shared between a
    parent and its forked child count once, so the sum is what the tree holds in RAM. Second, the
    anonymous part of it: what is left when clean pages of mapped files (a LiteRT model's weights),
    which the kernel can drop and read again, are not counted."""
    total = anon = 0
    for p in _descendants(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        a = re.search(r"^Pss_Anon:\s+(\d+) kB", text, re.M)
        total += int(m.group(1)) * 1024 if m else 0
        anon += int(a.group(1)) * 1024 if a else 0
    return total, anon


def timed(cmd: list[str], log: Path) -> dict:
    """Run under /usr/bin/time -v: wall, user, sys seconds, peak RSS bytes (of the largest single
    process), the peak of the whole process tree's PSS (sampled every second or
    slower, so the sampler stays under ~5 % of a core), exit code."""
    t0 = time.perf_counter()
    tree_peak = anon_peak = 0
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            t = time.perf_counter()
            pss, anon = _tree_pss(proc.pid)
            tree_peak, anon_peak = max(tree_peak, pss), max(anon_peak, anon)
            # smaps_rollup walks the page tables (~0.1 s per GB): keep the sampler under ~5 % of a core
            time.sleep(max(1.0, 20 * (time.perf_counter() - t)))
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    tail = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")][-3:]
    return {"command": shlex.join(cmd), "exit": proc.returncode, "wall_s": round(wall, 1), "tree_pss_peak_bytes": tree_peak,
            "tree_anon_peak_bytes": anon_peak,
            "user_s": float(user.group(1)) if user else None, "sys_s": float(sys_.group(1)) if sys_ else None,
            "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None, "tail": tail, "log": str(log)}


def run_family(family: str, work: Path, stages: list[str], peer: str | None) -> list[dict]:
    ckpt = work / f"{family}-full"
    rows = []

    def stage(name: str, cmd: list[str]):
        print(f"[{family}] {name}: {shlex.join(cmd)}", flush=True)
        r = {"family": family, "stage": name, **timed(cmd, work / f"{family}-{name}.log")}
        rows.append(r)
        print(f"[{family}] {name}: exit {r['exit']}, {r['wall_s']} s, peak {(r['peak_rss_bytes'] or 0) / 2**30:.2f} GiB", flush=True)
        return r

    base = md_export()
    if "init" in stages or not ckpt.exists():
        stage("init", [*base, "init", family, "--size", "full", "-o", str(ckpt), "--force"])
    for target in ("coreml", "tflite"):
        if f"export-{target}" in stages:
            out = work / f"{family}-{target}"
            shutil.rmtree(out, ignore_errors=True)
            stage(f"export-{target}", [*base, target, str(ckpt), "-o", str(out), "--no-check", "--force", "-q"])
    out = work / f"{family}-both"
    if "export" in stages:
        shutil.rmtree(out, ignore_errors=True)
        stage("export", [*base, "export", str(ckpt), "-o", str(out), "--targets", "coreml,tflite", "--no-check", "--force", "-q"])
    if "check" in stages and out.exists():
        stage("check", [*base, "check", str(out), "--samples", "2", "-q", "--json", str(work / f"{family}-check.json")])
    if peer:
        cmd = shlex.split(peer.format(checkpoint=ckpt, work=work))
        r = stage("peer", cmd)
        mine = next((x for x in rows if x["stage"] == "export-coreml"), None)
        if mine and r["exit"] == 0 and mine["exit"] == 0:
            r["ratio_vs_export_coreml"] = {"wall": round(mine["wall_s"] / r["wall_s"], 3),
                                           "peak_rss": round((mine["peak_rss_bytes"] or 0) / (r["peak_rss_bytes"] or 1), 3)}
            print(f"[{family}] md-export / peer: time x{r['ratio_vs_export_coreml']['wall']}, "
                  f"peak x{r['ratio_vs_export_coreml']['peak_rss']}", flush=True)
    return rows


def verdict(r: dict) -> str:
    t = TARGETS.get(r["family"], {})
    if r["exit"] != 0:
        return f"exit {r['exit']}"
    notes = []
    gb = max(r["peak_rss_bytes"] or 0, r.get("tree_pss_peak_bytes") or 0) / 1e9  # a forked child's peak is not the tree's
    if "rss_gb" in t and r["stage"] in ("export", "check", "export-coreml", "export-tflite"):
        want = t["rss_gb"]
        miss = f"missed by {gb - want:.2f} GB" if gb - want < 0.1 else f"missed by {gb - want:.1f} GB"
        notes.append(f"peak {'met' if gb <= want else miss} (<= {want:g} GB)")
    limit = t.get("export_s") if r["stage"] == "export" else t.get("check_s") if r["stage"] == "check" else None
    if limit:
        wall = r["wall_s"]
        notes.append(f"time {'met' if wall <= limit else f'missed by {wall - limit:.0f} s'} (<= {limit:g} s)")
    return "; ".join(notes)


def table(rows: list[dict]) -> str:
    lines = ["| family | stage | exit | wall s | user s | peak RSS GB | tree PSS peak GB | anonymous PSS peak GB | against the target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tree, anon = r.get("tree_pss_peak_bytes"), r.get("tree_anon_peak_bytes")
        lines.append(f"| {r['family']} | {r.get('variant') or r['stage']} | {r['exit']} | {r['wall_s']} | {r.get('user_s')} | "
                     f"{(r['peak_rss_bytes'] or 0) / 1e9:.2f} | {f'{tree / 1e9:.2f}' if tree else 'not sampled'} | "
                     f"{f'{anon / 1e9:.2f}' if anon else 'not sampled'} | {verdict(r)} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> None:
    """Horizontal bars, one row per command (variant labels are long): wall time and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["stage"] != "init"][::-1]  # first run at the top
    labels = [f"{r['family']}: {r.get('variant') or r['stage']}" for r in rows]
    y = list(range(len(rows)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 1.8), sharey=True)
    a.barh(y, [r["wall_s"] / 60 for r in rows], color="tab:blue")
    a.set_yticks(y, labels, fontsize=8)
    a.set_xlabel("wall time, min")
    b.barh([i + 0.2 for i in y], [(r["peak_rss_bytes"] or 0) / 1e9 for r in rows], height=0.4, color="tab:orange",
           label="largest process (time -v)")
    b.barh([i - 0.2 for i in y], [(r.get("tree_pss_peak_bytes") or 0) / 1e9 for r in rows], height=0.4, color="tab:red",
           label="process tree PSS (0 = not sampled)")
    b.set_xlabel("peak memory, GB")
    for fam, t in TARGETS.items():
        if "rss_gb" in t:
            b.axvline(t["rss_gb"], linestyle="--", color="grey" if fam == "sd15" else "red", label=f"{fam} target {t['rss_gb']:g} GB")
    if "check_s" in TARGETS["sd15"]:
        a.axvline(TARGETS["sd15"]["check_s"] / 60, linestyle=":", color="grey", label="sd15 check target 10 min")
        a.axvline(TARGETS["sd15"]["export_s"] / 60, linestyle="--", color="grey", label="sd15 export target 6 min")
        a.legend(fontsize=7, loc="lower right")
    b.legend(fontsize=7, loc="lower right")
    for ax in (a, b):
        ax.grid(axis="x", alpha=0.3)
    a.set_title("Full size: wall time per command")
    b.set_title("Full size: peak memory per command")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--families", default="sd15,mobilediffusion")
    ap.add_argument("--stages", default=",".join(STAGES[1:]), help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--peer", help="a second command, {checkpoint} and {work} filled in, run in the same session")
    ap.add_argument("-o", "--out", type=Path, help="JSON results (appended to when it exists)")
    ap.add_argument("--table", type=Path)
    ap.add_argument("--chart", type=Path)
    args = ap.parse_args(argv)
    if args.table:
        rows = json.loads(args.table.read_text())["rows"]
        print(table(rows))
        if args.chart:
            chart(rows, args.chart)
        return 0
    if not args.work:
        ap.error("give --work (or --table)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for fam in args.families.split(","):
        rows += run_family(fam, args.work, args.stages.split(","), args.peer if fam == "sd15" else None)
    if args.out:
        old = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
        args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%d"),
                                        "rows": old + rows}, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
