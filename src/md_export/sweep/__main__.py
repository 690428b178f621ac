"""python -m md_export.sweep SPEC -o OUT [--ray auto] | --report OUT (until `md-export sweep` is registered)."""

from __future__ import annotations

import argparse
import sys

from .cli import HELP, sweep_command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m md_export.sweep", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="the sweep file (TOML, schema_version = 1)")
    p.add_argument("-o", "--out", help="output folder (cells/, sweep.json, sweep.md, plots/)")
    p.add_argument("--ray", default=None, help="local (default when Ray is installed), auto, ray://host:port, or off")
    p.add_argument("--report", metavar="OUT", help="only merge OUT's cells into sweep.json, sweep.md and plots again")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: the sweep file's, else all)")
    p.add_argument("--retry-failed", action="store_true", help="run cells that failed with md-export's own error again")
    p.add_argument("--strict", action="store_true", help="exit 1 when any cell is below its parity floor")
    p.add_argument("--json", action="store_true", help="print sweep.json on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    if a.report:
        return sweep_command(None, a.report, None, True, json_out=a.json, quiet=a.quiet)
    return sweep_command(a.spec, a.out, a.ray, False, num_cpus=a.num_cpus, retry_failed=a.retry_failed, strict=a.strict,
                         json_out=a.json, quiet=a.quiet)


if __name__ == "__main__":
    sys.exit(main())
