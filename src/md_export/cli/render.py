"""Human-readable tables for inspect and env."""

from __future__ import annotations

from rich.table import Table

from md_export.cli.output import Output


def _io(specs: list[dict]) -> str:
    return "\n".join(f"{s['name']} {s['dtype']} {list(s['shape'])}" for s in specs)


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _params(n) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} M"


def render_checkpoint(output: Output, data: dict) -> None:
    t = Table(title=f"checkpoint {data['source']} ({data['layout']})")
    for col in ("component", "class", "parameters", "weights"):
        t.add_column(col)
    for name, c in data["components"].items():
        t.add_row(name, c["class"], _params(c["parameters"]), c["weights"])
    output.print(t)
    e = Table(title="what will be exported")
    for col in ("model", "inputs", "outputs"):
        e.add_column(col)
    for name, m in data["exports"].items():
        e.add_row(name, _io(m["inputs"]), _io(m["outputs"]))
    output.print(e)
    p = data["pipeline"]
    output.print(
        f"image {p['image_height']}x{p['image_width']}, latent {p['latent_channels']}x{p['latent_height']}x{p['latent_width']}, "
        f"guidance {p['guidance']} (UNet batch {p['unet_batch']}), scheduler {p['scheduler']}, {p['default_steps']} steps"
    )


def render_bundle(output: Output, data: dict) -> None:
    t = Table(title=f"{data['target']} bundle {data['path']}")
    for col in ("model", "file", "inputs", "outputs", "precision", "size"):
        t.add_column(col)
    for name, m in data["models"].items():
        prec = m["precision"] + ("" if m.get("compression", "none") == "none" else f" / {m['compression']}")
        t.add_row(name, m.get("file") or " + ".join(c["file"] for c in m.get("chunks", [])), _io(m["inputs"]), _io(m["outputs"]), prec, _mb(m.get("bytes")))
    output.print(t)
    parity = data.get("parity") or {}
    output.print(f"parity: {parity.get('status', 'not-run')}" + (f" ({parity['report']})" if parity.get("report") else ""))


def render_env(output: Output, data: dict) -> None:
    t = Table(title=f"md-export environment ({data['platform']})")
    t.add_column("package")
    t.add_column("version")
    for k, v in data["versions"].items():
        t.add_row(k, v or "[dim]not installed[/]")
    output.print(t)
    colors = {"error": "red", "warn": "yellow", "note": "cyan"}
    for f in data["findings"]:
        output.print(f"[{colors[f['level']]}]{f['level']}[/]: {f['message']}")
