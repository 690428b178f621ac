"""Run a sweep: every cell is `md-export <target> [CKPT] -o STAGING --quantize LEVEL --json --no-check`
then `md-export check STAGING/<target> --json ...`, as child processes, in a staging folder renamed
into `OUT/cells/<model>/<target>-<level>/` when the cell is over (finished or failed, with
cell.json written last). A killed cell leaves only a hidden `.<leaf>.partial-*` folder, which is
never read as a result and is removed by the next sweep of the same folder.

Cells run as Ray tasks (one CPU and a memory request each, from the weights' bytes) when Ray is
installed, on a local instance started for the run or on a cluster (`--ray auto`, `ray://host:port`;
the output folder must then be on storage every node shares); without Ray they run one after
another. A failed cell records its one-line error and exit code and the sweep goes on; a worker
lost mid-cell is run again once (Ray's max_retries).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import cells as C
from .errors import RAY_HINT, InputError
from .executor import choose_backend, map_tasks
from .spec import ModelEntry, SweepSpec

MODELS_DIR = "models"
PLAN_JSON = "plan.json"
LOCK = ".sweep.lock"
CELL_SCHEMA = 1
ERROR_CHARS = 400


# -- the md-export command line -----------------------------------------------------------------


def md_export_cli() -> list[str]:
    """How cells call md-export: MD_EXPORT_SWEEP_CLI if set, else the `md-export` script beside this
    interpreter, else on PATH, else `python -m md_export.cli.app`."""
    env = os.environ.get("MD_EXPORT_SWEEP_CLI")
    if env:
        return shlex.split(env)
    sibling = Path(sys.executable).parent / "md-export"
    if sibling.is_file():
        return [str(sibling)]
    found = shutil.which("md-export")
    return [found] if found else [sys.executable, "-m", "md_export.cli.app"]


def export_command(cell: C.Cell, out: Path, cli: list[str]) -> list[str]:
    cmd = [*cli, cell.target]
    if cell.checkpoint is not None:
        cmd.append(cell.checkpoint)
    cmd += ["-o", str(out), "--json", "--no-check", "-q"]
    if cell.level != "none":
        cmd += ["--quantize", cell.level]
    for k in cell.keep:
        cmd += ["--keep", k]
    return cmd + list(cell.args)


def check_command(cell: C.Cell, bundle: Path, report: Path, cli: list[str]) -> list[str]:
    c = cell.check
    cmd = [*cli, "check", str(bundle), "--json", str(report), "-q", "--samples", str(c["samples"]), "--seed", str(c["seed"])]
    if not c["end_to_end"]:
        cmd.append("--no-e2e")
    else:
        cmd += ["--e2e-steps", str(c["e2e_steps"])]
    for t in c["thresholds"]:
        cmd += ["--threshold", t]
    return cmd


# -- child processes ------------------------------------------------------------------------------

# The child runs under a small launcher: it forks the command and waits for it with os.wait4, so the
# peak RSS it reports is the command's own (a child forked straight from this process would count
# this process's resident pages too: the kernel keeps the pre-exec memory's high-water mark). Both
# get SIGKILL when their parent dies (Linux PR_SET_PDEATHSIG): a lost worker leaves no export
# running on into a staging folder.
_LAUNCHER = """
import ctypes, json, os, sys
def deathsig():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)
    except Exception:
        pass
parent, report, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
deathsig()
if os.getppid() != parent:
    sys.exit(137)
me = os.getpid()
pid = os.fork()
if pid == 0:
    deathsig()
    if os.getppid() != me:
        os._exit(137)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.stderr.write("md-export sweep: cannot start " + cmd[0] + ": " + str(e) + "\\n")
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"status": status, "maxrss": usage.ru_maxrss}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


@dataclass
class ChildResult:
    exit_code: int | None
    wall_s: float
    peak_rss_bytes: int | None
    timed_out: bool = False
    error: str | None = None

    def to_json(self) -> dict:
        return {"exit_code": self.exit_code, "wall_s": round(self.wall_s, 3), "peak_rss_bytes": self.peak_rss_bytes,
                "timed_out": self.timed_out}


def run_child(cmd: list[str], stdout: Path, stderr: Path, env: dict, timeout_s: float | None = None) -> ChildResult:
    """Run cmd with stdout and stderr to files, in a session of its own; its wall time, exit code
    (negative: killed by that signal) and peak RSS (the launcher's os.wait4 rusage of the command)."""
    report = stderr.with_name(stderr.name + ".rusage.json")
    report.unlink(missing_ok=True)
    full = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(report), *cmd]
    t0 = time.monotonic()
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        try:
            p = subprocess.Popen(full, stdout=so, stderr=se, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            return ChildResult(None, 0.0, None, error=f"{cmd[0]}: cannot start: {e}")
        timed_out = False
        try:
            while True:
                pid, status = os.waitpid(p.pid, os.WNOHANG)
                if pid:
                    break
                if timeout_s and time.monotonic() - t0 > timeout_s and not timed_out:
                    timed_out = True
                    _kill_group(p.pid)
                time.sleep(0.1)
        except BaseException:  # interrupted (Ctrl-C in serial mode, a cancelled task): take the child down too
            _kill_group(p.pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, 0)
            p.returncode = -9
            raise
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    rss = None
    try:  # the command's own status and rusage, from the launcher
        got = json.loads(report.read_text())
        status, rss = int(got["status"]), int(got["maxrss"]) * RSS_UNIT
        report.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the launcher itself was killed (timeout, interrupt): its own status says how
    return ChildResult(os.waitstatus_to_exitcode(status), wall, rss, timed_out=timed_out)


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(1.0)


def error_line(log: Path, code: int | None, timed_out: bool = False, timeout_s: float | None = None) -> str:
    """The child's one-line error (md-export prints `md-export: error: ...`), else its last line."""
    if timed_out:
        return f"timed out after {timeout_s:.0f} s (resources.timeout_minutes) and was killed"
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    mine = [ln for ln in lines if ln.startswith("md-export:")]
    text = (mine or lines or [""])[-1]
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        text = f"killed by {name}" + (f" ({text})" if text else "")
    return (text or f"exit code {code}, no message")[:ERROR_CHARS]


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    n = str(max(1, int(threads)))
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = n
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RAY_ADDRESS", None)
    return env


# -- one cell -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellTask:
    cell: C.Cell
    out: str
    threads: int
    cli: tuple[str, ...]


def run_cell(task: CellTask) -> dict:
    """One cell, start to finish, in a staging folder renamed into place at the end. Returns what
    it wrote to cell.json. Module level and picklable: this is the Ray task."""
    cell, out = task.cell, Path(task.out)
    final = out / C.CELLS_DIR / cell.name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    started = time.time()
    record: dict = {"schema_version": CELL_SCHEMA, "name": cell.name, "label": cell.label, "hash": cell.hash,
                    "key": cell.key, "cell": cell.to_json(), "host": socket.gethostname(), "pid": os.getpid(),
                    "started": _utc(started), "bundle": cell.target}
    node = _ray_node()
    if node:
        record["ray_node"] = node
    (staging / "owner.json").write_text(json.dumps({"hash": cell.hash, "host": record["host"], "pid": os.getpid()}) + "\n")
    try:
        _run_cell_in(task, staging, final, record)
    except Exception as e:  # noqa: BLE001 - a bug in the runner itself: the cell fails, the sweep goes on
        # no exit code: not one of md-export's reproducible failures, so the next sweep runs it again
        record.update(status="failed", stage=record.get("stage", "runner"), exit_code=None,
                      error=f"sweep runner: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:ERROR_CHARS])
    record["finished"] = _utc(time.time())
    record["wall_s"] = round(time.time() - started, 3)
    _fix_paths(staging, final)
    record = json.loads(json.dumps(C.clean(record)).replace(str(staging), str(final)))
    (staging / C.CELL_JSON).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (staging / "owner.json").unlink(missing_ok=True)
    _replace_folder(staging, final)
    return record


def _run_cell_in(task: CellTask, staging: Path, final: Path, record: dict) -> None:
    cell, cli = task.cell, list(task.cli)
    from .cells import md_export_version

    mine = md_export_version()
    if cell.key.get("md_export_version") != mine:
        record.update(status="failed", stage="setup", exit_code=2,
                      error=f"this worker ({record['host']}) has md-export {mine}, the sweep was planned with "
                            f"{cell.key.get('md_export_version')}; install the same version on every node")
        return
    env = child_env(task.threads)
    cmd = export_command(cell, staging, cli)
    record["stage"] = "export"
    exp = run_child(cmd, staging / "export.json", staging / "export.log", env, cell.timeout_s)
    record["export"] = {**exp.to_json(), "command": shlex.join(cmd).replace(str(staging), str(final))}
    if exp.exit_code != 0:
        record.update(status="failed", exit_code=exp.exit_code,
                      error=exp.error or error_line(staging / "export.log", exp.exit_code, exp.timed_out, cell.timeout_s))
        return
    bundle = staging / cell.target
    record.update(_bundle_summary(bundle))
    record["check"] = None
    status = "exported"
    if cell.check["parity"]:
        record["stage"] = "check"
        cmd = check_command(cell, bundle, staging / "check.json", cli)
        chk = run_child(cmd, staging / "check.out", staging / "check.log", env, cell.timeout_s)
        record["check"] = {**chk.to_json(), "command": shlex.join(cmd).replace(str(staging), str(final))}
        parity = _parity_summary(staging / "check.json")
        if chk.exit_code in (0, 1) and parity is not None:
            record["parity"] = parity
            status = "pass" if chk.exit_code == 0 else "below-floor"
        else:
            record.update(status="failed", exit_code=chk.exit_code,
                          error=chk.error or error_line(staging / "check.log", chk.exit_code, chk.timed_out, cell.timeout_s))
            return
    if cell.check.get("eval"):
        record["stage"] = "eval"
        record["eval"] = _eval_cell(cell, bundle, staging, final, env, cli)
    record.update(status=status, exit_code=0, error=None)
    record.pop("stage", None)


def _eval_cell(cell: C.Cell, bundle: Path, staging: Path, final: Path, env: dict, cli: list[str]) -> dict:
    """`md-export eval` of the cell's bundle: prompt accuracy against the fp32 reference. A model not
    trained on the shapes vocabulary is refused by eval (exit 2): "not applicable", the cell stands."""
    cmd = [*cli, "eval", str(bundle), "--json", str(staging / "eval.json"), "-q",
           "--prompts", str(cell.check.get("eval_prompts", 24)), "--seeds", str(cell.check.get("eval_seeds", 2))]
    run = run_child(cmd, staging / "eval.out", staging / "eval.log", env, cell.timeout_s)
    out = {**run.to_json(), "command": shlex.join(cmd).replace(str(staging), str(final))}
    try:
        (rep,) = json.loads((staging / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rep = None
    if run.exit_code in (0, 1) and isinstance(rep, dict):
        b, r = rep.get("bundle") or {}, rep.get("reference") or {}
        status = "below-floor" if run.exit_code == 1 else b.get("status")
        return {**out, "status": status, "accuracy": b.get("accuracy"), "reference_accuracy": r.get("accuracy"),
                "pairs": b.get("pairs"), "level": rep.get("level")}
    why = run.error or error_line(staging / "eval.log", run.exit_code, run.timed_out, cell.timeout_s)
    return {**out, "status": "not applicable" if run.exit_code == 2 else "failed", "reason": why}


def _ray_node() -> str | None:
    """The Ray node id when this runs as a Ray task (None in serial mode)."""
    ray = sys.modules.get("ray")
    try:
        return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - informational only
        return None


def _bundle_summary(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    models = {}
    for name, m in manifest.get("models", {}).items():
        models[name] = {k: m.get(k) for k in ("file", "precision", "compression", "parameters", "bytes", "ideal_bytes")}
        if m.get("chunks"):
            models[name]["chunks"] = len(m["chunks"])
    total = sum(m["bytes"] or 0 for m in models.values())
    ideal = sum(m["ideal_bytes"] or 0 for m in models.values())
    return {"models": models, "bytes": total, "ideal_bytes": ideal or None, "versions": manifest.get("versions", {})}


def _parity_summary(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    report = data[0] if isinstance(data, list) and data else data if isinstance(data, dict) else None
    if not isinstance(report, dict) or "checks" not in report:
        return None
    checks = {}
    for c in report["checks"]:
        checks[c.get("model")] = {k: c.get(k) for k in ("status", "psnr", "cosine", "max_abs", "runtime", "precision", "reason")}
        checks[c.get("model")]["floor"] = (c.get("threshold") or {}).get("psnr")
    return {"status": report.get("status"), "samples": report.get("samples"), "seed": report.get("seed"), "checks": checks}


def _fix_paths(staging: Path, final: Path) -> None:
    """Reports written inside the staging folder name it; point them at the cell's final folder."""
    for name in ("export.json", "check.json"):
        p = staging / name
        if p.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                p.write_text(p.read_text(encoding="utf-8").replace(str(staging), str(final)), encoding="utf-8")


def _replace_folder(staging: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- the sweep ------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: Path
    records: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r.get("status") == "failed"]

    @property
    def below_floor(self) -> list[dict]:
        return [r for r in self.records if r.get("status") == "below-floor"]


@contextlib.contextmanager
def sweep_lock(out: Path):
    """One sweep per output folder at a time (flock on OUT/.sweep.lock)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")  # noqa: SIM115 - held open for the whole sweep
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise InputError(f"{out}: another sweep is running in this folder ({holder}); wait for it or use another -o") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def remove_partials(out: Path) -> int:
    """Staging folders of cells (or models) that never finished: a killed or lost cell's leftovers."""
    n = 0
    for base in (out / C.CELLS_DIR, out / MODELS_DIR):
        if not base.is_dir():
            continue
        for p in list(base.glob(".*.partial-*")) + list(base.glob("*/.*.partial-*")) + list(base.glob("*/.*.old-*")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def resolve_model(m: ModelEntry, out: Path, cli: list[str], say: Callable[[str], None]) -> Path | None:
    """The checkpoint folder of a model entry: its path, the bundled default (None), or a family's
    random-weight checkpoint made once with `md-export init` into OUT/models/<name>/."""
    if m.kind == "checkpoint":
        return m.checkpoint
    if m.kind == "default":
        return None
    final = out / MODELS_DIR / m.name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{m.name}.partial-", dir=final.parent))
    cmd = [*cli, "init", m.family, "--size", m.size, "--seed", str(m.seed), "-o", str(staging / "ckpt"), "--json"]
    say(f"init {m.name}: {shlex.join(cmd)}")
    res = run_child(cmd, staging / "init.json", staging / "init.log", child_env(os.cpu_count() or 1))
    if res.exit_code != 0:
        msg = error_line(staging / "init.log", res.exit_code)
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"models '{m.name}' (family {m.family}): md-export init failed (exit {res.exit_code}): {msg}")
    os.replace(staging / "ckpt", final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def plan_cells(spec: SweepSpec, out: Path, cli: list[str], say: Callable[[str], None]) -> list[C.Cell]:
    version = C.md_export_version()
    cells = []
    digests: dict[str, tuple[Path | None, C.Digest]] = {}
    for m in spec.models:
        ckpt = resolve_model(m, out, cli, say)
        digests[m.name] = (ckpt, C.digest(ckpt if ckpt is not None else C.default_model_path()))
    for cs in spec.cells():
        ckpt, dig = digests[cs.model.name]
        cells.append(C.plan(cs, ckpt, dig, spec.check, spec.resources, version))
    return cells


def run_sweep(spec: SweepSpec, out: Path, ray: str | None = None, *, num_cpus: int | None = None,
              retry_failed: bool = False, only: Callable[[C.Cell], bool] | None = None,
              say: Callable[[str], None] = lambda s: None) -> SweepResult:
    """Plan, skip what is finished, run the rest, write sweep.json/sweep.md/plots. `ray`: None =
    Ray if installed (a local instance) else one cell at a time; "off" = one at a time; "local" =
    a local Ray instance (error if Ray is missing); "auto" or "ray://host:port" = that cluster."""
    from .report import write_report

    out = Path(out)
    backend, address = ray_mode(ray)
    cli = md_export_cli()
    num_cpus = num_cpus or spec.resources.num_cpus or os.cpu_count() or 1
    with sweep_lock(out):
        stale = remove_partials(out)
        if stale:
            say(f"removed {stale} unfinished staging folder(s) of an earlier run")
        cells = plan_cells(spec, out, cli, say)
        if only is not None:
            cells = [c for c in cells if only(c)]
        if spec.path.resolve() != (out / "sweep.toml").resolve():
            shutil.copyfile(spec.path, out / "sweep.toml")
        _write_json(out / PLAN_JSON, {"schema_version": 1, "spec": str(spec.path.resolve()), "name": spec.name,
                                      "created": _utc(time.time()), "cells": [{"name": c.name, "hash": c.hash} for c in cells]})
        records: dict[int, dict] = {}
        todo: list[int] = []
        for i, c in enumerate(cells):
            if C.is_finished(out, c) or (C.is_reproducible_failure(out, c) and not retry_failed):
                records[i] = {**C.previous(out, c), "skipped": True}
            else:
                todo.append(i)
        for i in sorted(records):
            r = records[i]
            say(f"skip {cells[i].label}: {r['status']} with the same hash {cells[i].hash[:12]} in {C.CELLS_DIR}/{cells[i].name}"
                + (" (--retry-failed runs it again)" if r["status"] == "failed" else ""))
        mode = choose_backend(backend, address) if todo else "none"
        # every cell computes with the same thread count on Ray and serially: torch's CPU kernels do
        # not give bit-identical results across thread counts, and the count is part of the hash
        threads = C.threads_for(spec.resources)
        if mode != "ray" and todo and backend == "auto" and address is None:
            say(f"Ray is not installed: running {len(todo)} cell(s) one at a time ({RAY_HINT} runs them in parallel)")
        tasks = [CellTask(cells[i], str(out), threads, tuple(cli)) for i in todo]
        say(f"{len(cells)} cells: {len(records)} skipped, {len(todo)} to run"
            + (f" on Ray ({address or f'local, {num_cpus} CPUs'})" if mode == "ray" else " one at a time" if todo else ""))
        t0 = time.monotonic()
        load0 = os.getloadavg()
        done = [0]

        def arrived(k: int, r) -> None:
            i = todo[k]
            rec = r if isinstance(r, dict) else _lost(cells[i], r)
            records[i] = {**rec, "skipped": False}
            done[0] += 1
            say(f"[{done[0]}/{len(todo)}] {cells[i].label}: {_line(records[i])}")

        ray_info = {}
        if todo:
            resources = (lambda t: {"num_cpus": t.cell.num_cpus, "memory": t.cell.memory_bytes}) if mode == "ray" else None
            map_tasks(run_cell, tasks, ray_address=address, num_cpus=num_cpus, resources_per_task=resources, max_retries=1,
                      backend="ray" if mode == "ray" else "serial", return_exceptions=True, on_result=arrived)
            if mode == "ray":
                ray_info = {"address": address or "local", "num_cpus": num_cpus if address is None else None}
        wall = time.monotonic() - t0
        stale_end = remove_partials(out)
        ordered = [records[i] for i in range(len(cells))]
        meta = {"spec": str(spec.path.resolve()), "name": spec.name, "backend": mode, "ray": ray_info, "num_cpus": num_cpus,
                "threads_per_cell": threads, "wall_s": round(wall, 3), "ran": len(todo), "skipped": len(cells) - len(todo),
                "load_average_start": [round(x, 2) for x in load0], "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "partials_removed": stale + stale_end, "md_export_version": C.md_export_version(), "created": _utc(time.time()),
                "eval_requested": spec.check.eval}
        write_report(out, ordered, meta)
    return SweepResult(out, ordered, meta)


def ray_mode(ray: str | None) -> tuple[str, str | None]:
    if ray is None or ray == "":
        return "auto", None
    r = ray.strip()
    if r in ("off", "no", "serial", "none"):
        return "serial", None
    if r == "local":
        return "ray", None
    if r == "auto" or r.startswith("ray://") or ":" in r:
        return "ray", r
    raise InputError(f"--ray {ray}: use local, auto (RAY_ADDRESS or a cluster on this machine), ray://host:port, or off")


def _lost(cell: C.Cell, err: BaseException) -> dict:
    """A cell whose task did not come back (worker lost twice, node gone, no node fits)."""
    exit_code = getattr(err, "exit_code", None) if isinstance(err, InputError) else None
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return {"schema_version": CELL_SCHEMA, "name": cell.name, "label": cell.label, "hash": cell.hash, "key": cell.key,
            "cell": cell.to_json(), "status": "failed", "stage": "scheduler", "exit_code": exit_code,
            "error": f"{type(err).__name__}: {text}"[:ERROR_CHARS]}


def _line(r: dict) -> str:
    if r["status"] == "failed":
        return f"failed ({r.get('stage')}, exit {r.get('exit_code')}): {r.get('error')}"
    e, c = r.get("export") or {}, r.get("check") or {}
    e2e = ((r.get("parity") or {}).get("checks") or {}).get("end_to_end", {}).get("psnr")
    return (f"{r['status']}  {(r.get('bytes') or 0) / 1e6:.2f} MB"
            + (f", end to end {e2e:.1f} dB" if isinstance(e2e, (int, float)) else "")
            + f"  (export {e.get('wall_s', 0):.0f} s" + (f", check {c.get('wall_s', 0):.0f} s" if c else "") + ")")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["CellTask", "SweepResult", "md_export_cli", "run_cell", "run_child", "run_sweep"]
