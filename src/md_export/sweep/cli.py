"""`md-export sweep`: the command's body, for the typer app to register.

    md-export sweep sweep.toml -o sweeps/run1                 # a local Ray instance for the run (or one cell at a time)
    md-export sweep sweep.toml -o sweeps/run1 --ray auto      # an existing cluster (RAY_ADDRESS or ray://host:port)
    md-export sweep --report sweeps/run1                      # the merged table and plots again

Exit codes: 0 every cell finished (parity below a floor is a result, shown per cell; --strict makes
it 1); 3 one or more cells failed (each with its one-line error in sweep.md); 2 bad input (the
sweep file, --ray without Ray installed); 4 a bug.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from .errors import InputError, MdExportError

HELP = __doc__


def sweep_command(spec_path: Path | str | None, out: Path | str | None, ray: str | None = None, report_only: bool = False, *,
                  num_cpus: int | None = None, retry_failed: bool = False, strict: bool = False,
                  json_out: bool = False, quiet: bool = False) -> int:
    """Run (or with report_only, re-merge) a sweep; returns the exit code. Errors are printed as one
    line on stderr (MD_EXPORT_DEBUG=1 adds the traceback)."""
    debug = os.environ.get("MD_EXPORT_DEBUG", "") not in ("", "0")

    def say(msg: str) -> None:
        if not quiet:
            print(f"sweep: {msg}", file=sys.stderr, flush=True)

    try:
        return _sweep(spec_path, out, ray, report_only, num_cpus, retry_failed, strict, json_out, say)
    except MdExportError as e:
        if debug:
            traceback.print_exc()
        print(f"md-export: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("md-export: interrupted (finished cells are kept; running ones left no finished folder)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, traceback on demand
        if debug:
            traceback.print_exc()
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"md-export: internal error: {type(e).__name__}: {detail} (set MD_EXPORT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 4


def _sweep(spec_path, out, ray, report_only, num_cpus, retry_failed, strict, json_out, say) -> int:
    from .report import read_records, write_report

    if report_only:
        folder = Path(out if out is not None else spec_path) if (out or spec_path) else None
        if folder is None:
            raise InputError("--report: give the sweep's output folder, e.g. md-export sweep --report sweeps/run1")
        records, meta = read_records(folder)
        data = write_report(folder, records, meta)
        say(f"wrote {folder / 'sweep.md'}, {folder / 'sweep.json'} and {folder / 'plots'}/ ({len(records)} cells)")
        if json_out:
            print(json.dumps(data, indent=2))
        return 0
    if spec_path is None:
        raise InputError("give a sweep file (TOML, schema_version = 1), e.g. md-export sweep sweeps/default.toml -o run/")
    if out is None:
        raise InputError("-o/--out: give the sweep's output folder, e.g. -o sweeps/run1")
    if num_cpus is not None and num_cpus < 1:
        raise InputError(f"--num-cpus {num_cpus}: give at least 1")
    from .run import run_sweep
    from .spec import load_spec

    spec = load_spec(spec_path)
    res = run_sweep(spec, Path(out), ray, num_cpus=num_cpus, retry_failed=retry_failed, say=say)
    c = {s: sum(r.get("status") == s for r in res.records) for s in ("pass", "below-floor", "exported", "failed")}
    say(f"{len(res.records)} cells in {res.meta['wall_s']:.0f} s (ran {res.meta['ran']}, skipped {res.meta['skipped']}): "
        + ", ".join(f"{v} {k}" for k, v in c.items() if v) + f"; report: {Path(out) / 'sweep.md'}")
    if json_out:
        print((Path(out) / "sweep.json").read_text(encoding="utf-8"))
    if res.failed:
        return 3
    if strict and res.below_floor:
        return 1
    return 0
