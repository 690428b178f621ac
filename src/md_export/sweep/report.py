"""The merged report of a sweep: `sweep.json` (one row per cell), `sweep.md` (the table), and two
PNG plots: size vs quality per format with each format's Pareto front marked, and time per cell.
Drawn with matplotlib when it is installed, else with Pillow."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

from . import cells as C
from .errors import InputError

SCHEMA_VERSION = 1
PLOTS = ("size_vs_quality.png", "time_per_cell.png")
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
COLORS = {"coreml": (31, 119, 180), "tflite": (255, 127, 14), "onnx": (44, 160, 44)}
EVAL_NOTE = ("prompt accuracy (check.eval = true): `md-export eval` of each bundle against the fp32 reference (shapes "
             "vocabulary; \"not applicable\" for models not trained on it); it does not change a cell's status")


def _num(x) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x == "inf":
        return math.inf
    return None


def row(rec: dict) -> dict:
    """One cell's line of the merged table, from its cell.json record."""
    cell = rec.get("cell") or {}
    checks = ((rec.get("parity") or {}).get("checks")) or {}
    models = {}
    for name, m in (rec.get("models") or {}).items():
        c = checks.get(name) or {}
        models[name] = {"bytes": m.get("bytes"), "ideal_bytes": m.get("ideal_bytes"), "precision": m.get("precision"),
                        "compression": m.get("compression"), "psnr": c.get("psnr"), "floor": c.get("floor"), "parity": c.get("status")}
    e2e = checks.get("end_to_end") or {}
    e, k = rec.get("export") or {}, rec.get("check") or {}
    size, ideal = rec.get("bytes"), rec.get("ideal_bytes")
    return {
        "label": rec.get("label"), "name": rec.get("name"), "model": cell.get("model"), "target": cell.get("target"),
        "level": cell.get("level"), "keep": cell.get("keep", []), "status": rec.get("status"), "skipped": bool(rec.get("skipped")),
        "stage": rec.get("stage"), "exit_code": rec.get("exit_code"), "error": rec.get("error"),
        "bytes": size, "ideal_bytes": ideal, "ratio_to_ideal": round(size / ideal, 4) if size and ideal else None,
        "models": models, "psnr_end_to_end": e2e.get("psnr"), "end_to_end_floor": e2e.get("floor"),
        "parity": (rec.get("parity") or {}).get("status"),
        "export_s": e.get("wall_s"), "check_s": k.get("wall_s") if k else None,
        "export_peak_rss_bytes": e.get("peak_rss_bytes"), "check_peak_rss_bytes": k.get("peak_rss_bytes") if k else None,
        "eval": (rec.get("eval") or {}).get("status") if cell.get("check", {}).get("eval") else None,
        "prompt_accuracy": (rec.get("eval") or {}).get("accuracy"),
        "reference_prompt_accuracy": (rec.get("eval") or {}).get("reference_accuracy"),
        "hash": rec.get("hash"), "folder": f"{C.CELLS_DIR}/{rec.get('name')}",
    }


def quality(r: dict) -> tuple[float | None, str]:
    """(PSNR, what it is): end to end when measured, else the worst model's."""
    e2e = _num(r.get("psnr_end_to_end"))
    if e2e is not None:
        return e2e, "end to end"
    vals = [v for v in (_num(m.get("psnr")) for m in r["models"].values()) if v is not None]
    return (min(vals), "worst model") if vals else (None, "")


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size (smaller) and PSNR (larger), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_report(out: Path, records: list[dict], meta: dict, *, use_matplotlib: bool | None = None) -> dict:
    out = Path(out)
    rows = [row(r) for r in records]
    notes = [EVAL_NOTE] if meta.get("eval_requested") or any(r["eval"] for r in rows) else []
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "below-floor", "exported", "failed")}
    data = C.clean({"schema_version": SCHEMA_VERSION, **meta, "counts": counts, "notes": notes, "cells": rows,
                  "plots": [f"plots/{p}" for p in PLOTS]})
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    drawn_with = plot(rows, plots, use_matplotlib=use_matplotlib)
    data["plots_drawn_with"] = drawn_with
    _atomic_write(out / "sweep.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "sweep.md", markdown(data))
    return data


def read_records(out: Path) -> tuple[list[dict], dict]:
    """The records of the last sweep in OUT (its plan.json), for `md-export sweep --report OUT`."""
    out = Path(out)
    plan_path = out / "plan.json"
    if not plan_path.is_file():
        raise InputError(f"{out}: no sweep here (no plan.json); run `md-export sweep SPEC -o {out}` first")
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        names = [(c["name"], c["hash"]) for c in plan["cells"]]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{plan_path}: not a sweep plan (expected cells with name and hash)") from None
    old = {}
    with_meta = out / "sweep.json"
    if with_meta.is_file():
        try:
            old = json.loads(with_meta.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
    records = []
    for name, h in names:
        rec = C.read_cell(out / C.CELLS_DIR / name)
        if rec is None or rec.get("hash") != h:
            rec = {"name": name, "label": name, "hash": h, "status": "not run",
                   "error": "no finished cell with this hash (the sweep was stopped before it?)"}
        records.append(rec)
    meta = {k: old[k] for k in ("spec", "name", "backend", "ray", "num_cpus", "threads_per_cell", "wall_s", "ran", "skipped",
                                "load_average_start", "load_average_end", "md_export_version", "created", "eval_requested") if k in old}
    meta.setdefault("spec", plan.get("spec"))
    meta.setdefault("name", plan.get("name"))
    return records, meta


def _mb(b) -> str:
    return f"{b / 1e6:.2f}" if isinstance(b, (int, float)) else ""


def _db(x) -> str:
    v = _num(x)
    return "" if v is None else "inf" if math.isinf(v) else f"{v:.1f}"


def _s(x) -> str:
    return f"{x:.0f}" if isinstance(x, (int, float)) else ""


def markdown(data: dict) -> str:
    rows = data["cells"]
    comps = [c for c in COMPONENTS if any(c in r["models"] for r in rows)]
    lines = [f"# Sweep: {data.get('name', '')}", ""]
    ray = data.get("ray") or {}
    lines.append(f"- spec: `{data.get('spec')}`; md-export {data.get('md_export_version')}; created {data.get('created')}")
    lines.append(f"- {len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in data["counts"].items() if v)
                 + f"; this run ran {data.get('ran', '?')} and skipped {data.get('skipped', '?')} (same hash, already done)")
    lines.append(f"- backend: {data.get('backend')}" + (f" ({ray.get('address')})" if ray else "")
                 + f", {data.get('num_cpus')} CPUs, {data.get('threads_per_cell')} thread(s) per cell; wall {_s(data.get('wall_s'))} s;"
                 + f" load average {data.get('load_average_start')} -> {data.get('load_average_end')}")
    lines += ["", ("Sizes in MB (1e6 bytes); PSNR in dB against the fp32 PyTorch reference; times in seconds;"
                   " peak RSS of the export child in MB."), ""]
    evals = any(r.get("eval") for r in rows)
    head = (["cell", "status", "MB", "ideal MB", "ratio"] + [f"{c} dB" for c in comps] + ["e2e dB"]
            + (["prompt accuracy (ref)"] if evals else []) + ["export s", "check s", "RSS MB", "hash"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        status = r["status"] + (" (skipped)" if r["skipped"] else "")
        cells = [r["label"] or r["name"], status, _mb(r["bytes"]), _mb(r["ideal_bytes"]),
                 f"{r['ratio_to_ideal']:.2f}" if r["ratio_to_ideal"] else ""]
        cells += [_db((r["models"].get(c) or {}).get("psnr")) for c in comps]
        cells += [_db(r["psnr_end_to_end"])] + ([_accuracy(r)] if evals else []) + [_s(r["export_s"]), _s(r["check_s"]),
                  _s(r["export_peak_rss_bytes"] / 1e6) if r["export_peak_rss_bytes"] else "", (r["hash"] or "")[:10]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    failed = [r for r in rows if r["status"] in ("failed", "not run")]
    if failed:
        lines += ["", "## Failed cells", ""]
        for r in failed:
            lines.append(f"- {r['label'] or r['name']}: {r['status']} at {r.get('stage') or '?'}, exit {r.get('exit_code')}: "
                         f"{r.get('error')} (logs in `{r['folder']}/`)")
    for n in data.get("notes", []):
        lines += ["", f"Note: {n}."]
    lines += ["", "![size vs quality](plots/size_vs_quality.png)", "", "![time per cell](plots/time_per_cell.png)", ""]
    return "\n".join(lines)


def _accuracy(r: dict) -> str:
    acc, ref = r.get("prompt_accuracy"), r.get("reference_prompt_accuracy")
    if acc is None:
        return r.get("eval") or ""
    return f"{acc * 100:.1f} %" + (f" ({ref * 100:.1f} %)" if ref is not None else "") + (" below" if r.get("eval") == "below-floor" else "")


# -- plots ----------------------------------------------------------------------------------------


def _points(rows: list[dict]):
    pts = [(r, r["bytes"] / 1e6, *quality(r)) for r in rows if r["status"] in C.FINISHED and r["bytes"]]
    pts = [p for p in pts if p[2] is not None]
    finite = [p[2] for p in pts if math.isfinite(p[2])]
    cap = (max(finite) + 10) if finite else 100.0
    what = {p[3] for p in pts}
    return [(r, mb, q if math.isfinite(q) else cap) for r, mb, q, _ in pts], ("end to end" if what == {"end to end"} else
                                                                             " / ".join(sorted(what)) or "none")


def plot(rows: list[dict], folder: Path, use_matplotlib: bool | None = None) -> str:
    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401

            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        _plot_matplotlib(rows, folder)
        return "matplotlib"
    _plot_pillow(rows, folder)
    return "pillow"


def _plot_matplotlib(rows: list[dict], folder: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts, what = _points(rows)
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for target in sorted({r["target"] for r, _, _ in pts}):
        mine = [(r, x, y) for r, x, y in pts if r["target"] == target]
        color = tuple(c / 255 for c in COLORS.get(target, (90, 90, 90)))
        ax.scatter([x for _, x, _ in mine], [y for _, _, y in mine], color=color, label=target, s=36, zorder=3)
        front = [mine[i] for i in pareto([(x, y) for _, x, y in mine])]
        ax.plot([x for _, x, _ in front], [y for _, _, y in front], color=color, lw=1.5, ls="--", zorder=2)
        ax.scatter([x for _, x, _ in front], [y for _, _, y in front], facecolors="none", edgecolors=color, s=140, lw=1.5, zorder=4)
        for r, x, y in mine:
            ax.annotate(r["level"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("bundle size (MB)")
    ax.set_ylabel(f"PSNR, {what} (dB)")
    ax.set_title("size vs quality per format (circled, dashed: Pareto front)")
    ax.grid(True, alpha=0.3)
    if pts:
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / PLOTS[0])

    shown = [r for r in rows if r["export_s"] is not None]
    fig = Figure(figsize=(8, max(2.5, 0.32 * len(shown) + 1.2)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(shown)))
    ex = [r["export_s"] or 0 for r in shown]
    ch = [r["check_s"] or 0 for r in shown]
    ax.barh(ys, ex, color=(0.35, 0.55, 0.8), label="export")
    ax.barh(ys, ch, left=ex, color=(0.95, 0.6, 0.25), label="check")
    ax.set_yticks(ys, [(r["label"] or r["name"]) + (" (failed)" if r["status"] == "failed" else "") for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    ax.set_title("time per cell (as recorded when the cell ran)")
    if shown:
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / PLOTS[1])


def _plot_pillow(rows: list[dict], folder: Path) -> None:
    from PIL import Image, ImageDraw

    pts, what = _points(rows)
    W, H, L, R, T, B = 900, 600, 70, 30, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [x for _, x, _ in pts] or [0.0, 1.0]
    ys = [y for _, _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05 + (1e-6 if max(xs) == min(xs) else 0)
    y0, y1 = math.floor(min(ys) / 5) * 5 - 5, math.ceil(max(ys) / 5) * 5 + 5

    def xy(x, y):
        return L + (W - L - R) * (x - x0) / (x1 - x0), T + (H - T - B) * (1 - (y - y0) / (y1 - y0))

    d.rectangle([L, T, W - R, H - B], outline="black")
    for k in range(int(y0), int(y1) + 1, 5 if y1 - y0 <= 60 else 10):
        _, y = xy(x0, k)
        d.line([L, y, W - R, y], fill=(230, 230, 230))
        d.text((8, y - 6), f"{k} dB", fill="black")
    for j in range(6):
        xv = x0 + (x1 - x0) * j / 5
        x, _ = xy(xv, y0)
        d.text((x - 12, H - B + 6), f"{xv:.1f}", fill="black")
    d.text((L, H - B + 26), f"bundle size (MB); y: PSNR {what} (dB); ringed + dashed: Pareto front per format", fill="black")
    d.text((L, 12), "size vs quality per format", fill="black")
    for ti, target in enumerate(sorted({r["target"] for r, _, _ in pts})):
        color = COLORS.get(target, (90, 90, 90))
        mine = [(r, x, y) for r, x, y in pts if r["target"] == target]
        front = [xy(mine[i][1], mine[i][2]) for i in pareto([(x, y) for _, x, y in mine])]
        for a, b in itertools.pairwise(front):
            _dashed(d, a, b, color)
        for px, py in front:
            d.ellipse([px - 9, py - 9, px + 9, py + 9], outline=color, width=2)
        for r, x, y in mine:
            px, py = xy(x, y)
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
            d.text((px + 6, py - 12), r["level"], fill=(60, 60, 60))
        d.text((W - R - 90, T + 8 + 16 * ti), f"o {target}", fill=color)
    img.save(folder / PLOTS[0])

    shown = [r for r in rows if r["export_s"] is not None]
    H2 = max(160, 24 * len(shown) + 80)
    img = Image.new("RGB", (W, H2), "white")
    d = ImageDraw.Draw(img)
    L2 = 300
    top = max([(r["export_s"] or 0) + (r["check_s"] or 0) for r in shown] or [1.0]) or 1.0
    scale = (W - L2 - R) / top
    d.text((10, 10), "time per cell: export (blue) + check (orange), seconds", fill="black")
    for i, r in enumerate(shown):
        y = 40 + 24 * i
        e, c = (r["export_s"] or 0) * scale, (r["check_s"] or 0) * scale
        d.text((10, y + 2), ((r["label"] or r["name"]) + (" (failed)" if r["status"] == "failed" else ""))[:44], fill="black")
        d.rectangle([L2, y, L2 + e, y + 16], fill=(89, 140, 204))
        d.rectangle([L2 + e, y, L2 + e + c, y + 16], fill=(242, 153, 64))
        d.text((L2 + e + c + 4, y + 2), f"{(r['export_s'] or 0) + (r['check_s'] or 0):.0f}", fill="black")
    img.save(folder / PLOTS[1])


def _dashed(d, a, b, color, dash: float = 6.0) -> None:
    (ax, ay), (bx, by) = a, b
    n = max(1, int(math.hypot(bx - ax, by - ay) / dash))
    for k in range(0, n, 2):
        t0, t1 = k / n, min(1.0, (k + 1) / n)
        d.line([ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1], fill=color, width=2)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
