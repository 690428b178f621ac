"""The `md-export rewrites` table."""

from __future__ import annotations


def render_rewrites(output, data: list[dict]) -> None:
    from rich.table import Table

    t = Table(title="md-export rewrites (--rewrite NAME; defaults apply unless --no-default-rewrites)")
    t.add_column("name", no_wrap=True)
    for col in ("targets", "numerics", "default for", "matches", "what it does"):
        t.add_column(col, overflow="fold")
    for r in data:
        numerics = "[green]kept[/]" if r["keeps_numerics"] else "[yellow]changed (opt-in)[/]"
        t.add_row(r["name"], ", ".join(r["targets"]), numerics, ", ".join(r["default_for"]) or "-", r["matches"], r["description"])
    output.print(t)
