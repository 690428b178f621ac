"""Compile saved .tflite models ahead of time for Snapdragon NPUs (LiteRT's AOT compiler + the QNN HTP backend).

One call per model: `compile_for_npu(path, socs, out_dir)` runs LiteRT's `apply_plugin_main` tool (shipped in the
ai-edge-litert wheel, the same step `ai_edge_litert.aot.aot_compile` runs) once per SoC with the Qualcomm compiler
plugin, and returns one `NpuResult` per SoC. A model the NPU rejects is not an exception: its result has
status "fallback" and the compiler's reason, and the app keeps using the uncompiled model for that SoC.

`write_ai_pack` lays the results out as LiteRT's AI Pack export does (`ai_edge_litert.aot.ai_pack.export_lib`):

    <pack_dir>/device_targeting_configuration.xml
    <pack_dir>/<model>/src/main/assets/model#group_Qualcomm_<SOC>/<model>.tflite   compiled (or the fallback)
    <pack_dir>/<model>/src/main/assets/model#group_other/<model>.tflite            the uncompiled fallback
    <pack_dir>/<model>/build.gradle.kts                                            the Gradle AI-pack module
    <pack_dir>/npu.json                                                            what was compiled, per model and SoC
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from md_export.core.manifest import read_manifest
from md_export.npu._errors import InputError, NpuSetupError
from md_export.npu.qnn_host import QnnHost, find_qnn_host, plugin_library_path
from md_export.npu.targets import QUALCOMM, NpuTarget, parse_npu_targets

COMPILED, PARTIAL, FALLBACK = "compiled", "partial", "fallback"
NPU_JSON = "npu.json"
TARGETING_XML = "device_targeting_configuration.xml"

_RE_STATS = re.compile(
    r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. resulted in (\d+) partitions\."
)
_RE_SDK = re.compile(r"Applying plugin with SDK version: v?([0-9][0-9.]*)")
_RE_QNN_ERROR = re.compile(r"<E>\s*(.+)$")
_RE_MESSAGE = re.compile(r"message:\s*([A-Z_]+)")


@dataclasses.dataclass
class NpuResult:
    """One model compiled for one SoC. `file` is where the compiled model is (None when it stayed on the fallback)."""

    model: str
    soc: str
    status: str  # compiled: every op on the NPU; partial: some ops left to the CPU; fallback: not compiled
    file: str | None
    sha256: str | None
    bytes: int | None
    ops_on_npu: int
    ops_total: int
    partitions: int
    qnn_version: str | None
    reason: str | None
    seconds: float
    log: str | None = None  # the compiler's full output, kept when it failed

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _litert_tools() -> tuple[Path, Path, str]:
    """(apply_plugin_main, the Qualcomm plugin's folder, LiteRT's own library path) from the ai-edge-litert wheel."""
    try:
        from ai_edge_litert.aot.core import common
        from ai_edge_litert.aot.vendors.qualcomm import qualcomm_backend
    except ImportError as e:
        raise NpuSetupError(
            f"ai_edge_litert's AOT compiler is not importable ({e}); install: pip install 'md-export[tflite]'"
        ) from None
    try:
        tool = common.get_resource(Path("tools/apply_plugin_main"))
        plugin = common.get_resource(qualcomm_backend.COMPILER_PLUGIN_LIB_PATH)
    except FileNotFoundError as e:
        raise NpuSetupError(
            f"ai-edge-litert has no AOT tool or Qualcomm plugin on this platform ({e}); it ships them for x86-64 Linux"
        ) from None
    return tool, plugin.parent, common.construct_ld_library_path()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def failure_reason(log: str, returncode: int) -> str:
    """The compiler's own words for why it failed, on one line: QNN's first `<E>` error, else LiteRT's last error."""
    qnn = [m.group(1).strip() for line in log.splitlines() if (m := _RE_QNN_ERROR.search(line))]
    specific = [e for e in qnn if not e.startswith("Failed to")]
    code = _RE_MESSAGE.search(log)
    if specific or qnn:
        reason = (specific or qnn)[0]
        if code:
            reason += f" ({code.group(1)})"
        return reason[:300]
    for needle in ("Could not load shared library", "cannot open shared object file"):
        for line in log.splitlines():
            if needle in line:
                return line.strip().lstrip("└ ").strip()[:300]
    errors = [line.strip() for line in log.splitlines() if "ERROR" in line or "Failed" in line]
    if errors:
        return errors[-1][:300]
    return f"apply_plugin_main exited with {returncode} and said nothing about why"


def compile_for_npu(
    tflite_path: str | Path,
    socs: Sequence[str | NpuTarget],
    out_dir: str | Path,
    *,
    model: str | None = None,
    timeout: float = 3600.0,
) -> list[NpuResult]:
    """Compile one saved .tflite for each SoC into out_dir/<stem>_Qualcomm_<SOC>.tflite (LiteRT's naming).

    socs: NpuTarget objects or Qualcomm SoC names ("SM8750"). A SoC the model fails on gets a FALLBACK result with
    the reason (and `log`, the compiler output, written beside it); setup problems (no QNN host libraries, no AOT
    tool) raise NpuSetupError before anything runs.
    """
    src = Path(tflite_path)
    if not src.is_file():
        raise InputError(f"{src}: no such .tflite file")
    targets = [s if isinstance(s, NpuTarget) else parse_npu_targets(f"{QUALCOMM}:{s}")[0] for s in socs]
    if not targets:
        raise InputError("compile_for_npu: no SoC given")
    name = model or src.stem
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tool, plugin_dir, litert_path = _litert_tools()
    host = find_qnn_host()
    results = []
    with plugin_library_path(host) as qnn_path:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (qnn_path, litert_path) if p)
        for target in targets:
            results.append(_compile_one(src, name, target, out, tool, plugin_dir, env, host, timeout))
    return results


def _compile_one(
    src: Path, name: str, target: NpuTarget, out: Path, tool: Path, plugin_dir: Path, env: dict, host: QnnHost, timeout: float
) -> NpuResult:
    dest = out / f"{src.stem}_{target.group}.tflite"
    partial_dest = dest.with_name(dest.name + ".part.tflite")  # the tool insists on a .tflite suffix
    for p in (dest, partial_dest):
        p.unlink(missing_ok=True)
    args = [
        str(tool),
        "--cmd=apply",
        f"--model={src}",
        f"--o={partial_dest}",
        "--soc_manufacturer=Qualcomm",
        f"--soc_model={target.soc}",
        "--err=--",
        f"--libs={plugin_dir}",
    ]
    t0 = time.perf_counter()
    try:
        # two pipes: QNN (stdout) and LiteRT (stderr) would otherwise interleave mid-line
        proc = subprocess.run(args, check=False, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
        log, rc = f"{proc.stdout}\n[md-export] stderr:\n{proc.stderr}", proc.returncode
    except subprocess.TimeoutExpired as e:
        streams = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)]
        log, rc = "\n".join(streams) + f"\n[md-export] timed out after {timeout:.0f} s", -1
    seconds = round(time.perf_counter() - t0, 3)
    stats = [tuple(int(x) for x in m) for m in _RE_STATS.findall(log)]
    on_npu = sum(s[1] for s in stats)
    total = sum(s[2] for s in stats)
    parts = sum(s[3] for s in stats)
    sdk = _RE_SDK.search(log)
    qnn_version = sdk.group(1) if sdk else host.version
    ok = rc == 0 and partial_dest.is_file() and on_npu > 0
    if not ok:
        partial_dest.unlink(missing_ok=True)
        if rc == 0 and on_npu == 0:
            reason = f"no op of {total} was placed on the NPU" if total else "the compiler placed no op on the NPU"
        elif rc == 0:
            reason = "apply_plugin_main exited 0 but wrote no model"
        else:
            reason = failure_reason(log, rc)
        log_path = dest.with_suffix(".compile.log")
        log_path.write_text(log)
        return NpuResult(
            name, target.soc, FALLBACK, None, None, None, on_npu, total, parts, qnn_version, reason, seconds, str(log_path)
        )
    os.replace(partial_dest, dest)
    status = COMPILED if on_npu == total else PARTIAL
    reason = None if status == COMPILED else f"{total - on_npu} of {total} ops stay on the CPU"
    return NpuResult(
        name,
        target.soc,
        status,
        str(dest),
        _sha256(dest),
        dest.stat().st_size,
        on_npu,
        total,
        parts,
        qnn_version,
        reason,
        seconds,
    )


# ---------------------------------------------------------------------------------------------------------------------
# AI Pack layout

_XML_HEAD = '<config:device-targeting-config\n    xmlns:config="http://schemas.android.com/apk/config">\n'
_XML_TAIL = "\n</config:device-targeting-config>"


def targeting_xml(targets: Sequence[NpuTarget]) -> str:
    """device_targeting_configuration.xml as LiteRT writes it: one device group per phone SoC, matched under both
    manufacturer names Play reports for Snapdragon phones (Qualcomm and QTI)."""
    groups = []
    for t in targets:
        if not t.phone:
            continue
        selectors = "\n".join(
            "        <config:device-selector>\n"
            f'            <config:system-on-chip manufacturer="{man}" model="{t.soc}"/>\n'
            "        </config:device-selector>"
            for man in ("Qualcomm", "QTI")
        )
        groups.append(f'    <config:device-group name="{t.group}">\n{selectors}\n    </config:device-group>')
    return _XML_HEAD + "\n".join(groups) + _XML_TAIL


def _gradle_module(pack: str) -> str:
    return (
        "// Written by md-export: the Gradle module of one AI pack (Play for On-device AI).\n"
        "// Include it from settings.gradle.kts and list it in the app's android { assetPacks }.\n"
        'plugins { id("com.android.ai-pack") }\n\n'
        "aiPack {\n"
        f'    packName = "{pack}"\n'
        '    dynamicDelivery { deliveryType = "on-demand" }\n'
        "}\n"
    )


def _place(src: Path, dest: Path, *, move: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    if move:
        shutil.move(str(src), dest)
        return
    try:
        os.link(src, dest)  # the fallback is the bundle's own model file: a hard link costs no space
    except OSError:
        shutil.copy2(src, dest)


def write_ai_pack(
    pack_dir: str | Path,
    fallbacks: Mapping[str, str | Path],
    results: Sequence[NpuResult],
    targets: Sequence[NpuTarget],
    *,
    extra: Mapping[str, Mapping] | None = None,
    gradle: bool = True,
) -> list[NpuResult]:
    """Lay compiled models out as LiteRT's AI Pack export does; return the results with `file` relative to pack_dir.

    fallbacks: model name -> its uncompiled .tflite (group "other", and every SoC group where it did not compile, so
    every group holds every model). Compiled files are moved into place. extra: per-model fields for npu.json
    (e.g. precision). The targeting config lists every phone SoC asked for, whether or not each model compiled.
    """
    root = Path(pack_dir)
    root.mkdir(parents=True, exist_ok=True)
    by_key = {(r.model, r.soc): r for r in results}
    groups = [t for t in targets if t.phone]
    placed: list[NpuResult] = []
    for name, fallback_path in fallbacks.items():
        fallback = Path(fallback_path)
        assets = root / name / "src" / "main" / "assets"
        for t in groups:
            r = by_key.get((name, t.soc))
            dest = assets / f"model#group_{t.group}" / f"{name}.tflite"
            if r is not None and r.file and r.status in (COMPILED, PARTIAL):
                _place(Path(r.file), dest, move=True)
                r = dataclasses.replace(r, file=dest.relative_to(root).as_posix())
            else:
                _place(fallback, dest, move=False)
                if r is not None:
                    r = dataclasses.replace(r, file=None)
            if r is not None:
                placed.append(r)
        _place(fallback, assets / "model#group_other" / f"{name}.tflite", move=False)
        if gradle:
            (root / name / "build.gradle.kts").write_text(_gradle_module(name))
    (root / TARGETING_XML).write_text(targeting_xml(groups))
    # results for non-phone SoCs (no AI-pack group) keep their compiled file where it was
    placed += [r for r in results if r.soc not in {t.soc for t in groups}]
    write_npu_json(root, fallbacks, placed, groups, extra)
    return placed


def write_npu_json(
    root: Path, fallbacks: Mapping[str, str | Path], results: Sequence[NpuResult], groups: Sequence[NpuTarget], extra=None
) -> Path:
    qnn = sorted({r.qnn_version for r in results if r.qnn_version})
    doc = {
        "schema_version": 1,
        "vendor": QUALCOMM,
        "compiler": "LiteRT AOT (apply_plugin_main + Qualcomm plugin)",
        "qnn_versions": qnn,
        "targeting_config": TARGETING_XML,
        "groups": [t.group for t in groups],
        "models": {
            name: {
                "pack": name,
                "asset_path": f"model/{name}.tflite",
                "fallback": Path(fb).name,
                **(dict(extra[name]) if extra and name in extra else {}),
                "targets": {
                    r.soc: {k: v for k, v in r.to_json().items() if k not in ("model", "soc")} for r in results if r.model == name
                },
            }
            for name, fb in fallbacks.items()
        },
    }
    path = root / NPU_JSON
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_npu_json(pack_dir: str | Path) -> dict:
    path = Path(pack_dir) / NPU_JSON
    if not path.is_file():
        raise InputError(f"{path}: no npu.json; export with --npu first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# A whole bundle


def bundle_tflite_models(bundle_dir: str | Path) -> dict[str, tuple[Path, dict]]:
    """Model name -> (its .tflite, manifest fields) in a tflite bundle, read through the validating reader."""
    bundle = Path(bundle_dir)
    models = read_manifest(bundle)["models"]
    out = {}
    for name, entry in models.items():
        path = bundle / entry.get("file", "")
        if path.suffix == ".tflite" and path.is_file():
            out[name] = (path, {k: entry[k] for k in ("precision", "compression") if k in entry})
    if not out:
        raise InputError(f"{bundle / 'manifest.json'}: lists no .tflite model")
    return out


def export_npu(
    bundle_dir: str | Path,
    targets: str | Sequence[str] | Sequence[NpuTarget],
    *,
    models: Sequence[str] | None = None,
    pack_name: str = "ai_pack",
    keep_logs: str | Path | None = None,
    progress=None,
) -> list[NpuResult]:
    """Compile every .tflite model of a bundle for each target and write <bundle>/<pack_name>/ (AI Pack + npu.json).

    targets: "qualcomm:SM8650,SM8750", a list of such strings, or NpuTarget objects. progress: optional
    callable(str) told before each compile. keep_logs: a folder to keep the compiler output of failed compiles in
    (otherwise only the one-line reason is kept, in npu.json). Returns the placed results (file relative to the pack).
    """
    if isinstance(targets, str) or (targets and isinstance(targets[0], str)):
        targets = parse_npu_targets(targets)  # type: ignore[arg-type]
    targets = list(targets)  # type: ignore[arg-type]
    bundle = Path(bundle_dir)
    found = bundle_tflite_models(bundle)
    names = list(models) if models else list(found)
    for n in names:
        if n not in found:
            raise InputError(f"{bundle}: no tflite model '{n}'; it has: {', '.join(found)}")
    pack = bundle / pack_name
    work = pack / ".compile"
    results: list[NpuResult] = []
    for n in names:
        if progress:
            progress(f"NPU compile {n} for {', '.join(t.soc for t in targets)}")
        results += compile_for_npu(found[n][0], targets, work, model=n)
    for i, r in enumerate(results):
        if r.log:
            kept = None
            if keep_logs is not None:
                Path(keep_logs).mkdir(parents=True, exist_ok=True)
                kept = str(shutil.copy2(r.log, Path(keep_logs) / Path(r.log).name))
            results[i] = dataclasses.replace(r, log=kept)
    placed = write_ai_pack(pack, {n: found[n][0] for n in names}, results, targets, extra={n: found[n][1] for n in names})
    shutil.rmtree(work, ignore_errors=True)
    return placed


def _main(argv: Sequence[str]) -> int:  # python -m md_export.npu.compile BUNDLE qualcomm:SM8750 (debug aid)
    res = export_npu(argv[0], argv[1:] or ["qualcomm:SM8750"], progress=lambda s: print(s, file=sys.stderr))
    print(json.dumps([r.to_json() for r in res], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
