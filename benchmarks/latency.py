"""Latency of each exported model against its PyTorch reference, as a ratio measured in one run.

Speed targets are ratios (artifact latency / PyTorch latency on the same machine, in the same
process, with the same inputs and thread count), never absolute timings asserted in tests: a
ratio carries over between machines far better than a number of milliseconds. It still moves with
the machine's other load (torch's per-op thread barriers suffer most), so the JSON records the load
average, the CPU time per call and the warm-up (first-call) times beside the wall times.

    python benchmarks/latency.py bundles out/                          # every bundle under out/
    python benchmarks/latency.py bundles out/ --checkpoint ./ckpt --json lat.json
    python benchmarks/latency.py bundles out/ --quick                  # 1 run, no warm-up (tests)
    python benchmarks/latency.py sd15-unet --work /tmp/sd15_bench      # full-size UNet from int8_full_unet.py

Per component (text_encoder, unet, vae_decoder) and runtime: median wall time of `--runs` calls
after `--warmup` calls, for
  - PyTorch: the fp32 eager wrapper md-export exports (components.attach_modules), torch threads = N;
  - TFLite: ai-edge-litert's signature runner on CPU, num_threads = N (its default XNNPACK delegate);
  - ONNX: onnxruntime CPUExecutionProvider, intra_op_num_threads = N, inter_op 1;
  - Core ML: no latency on Linux. Core ML itself only runs on Apple hardware; md-export's `milrun`
    is a numpy reference evaluator of the saved MIL program, so its time is reported as
    `evaluator_ms`, never as a latency or a ratio.
Each runtime's output is compared with PyTorch's (PSNR, cosine) so a fast wrong model shows.
Memory: the process's peak RSS, and per runtime the peak RSS while it was loaded and run
(Linux: /proc/self/clear_refs resets the high-water mark between runtimes).

Inputs are those `md-export check` uses (parity/check.py InputFactory): token ids of a bundled
prompt through the bundle's tokenizer, its text embedding from the reference encoder, latents
~ N(0, 1), a mid-schedule timestep. The reference checkpoint is the one the manifest names
(verified by weight hashes) unless --checkpoint is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

COREML_NOTE = ("Core ML latency cannot be measured on Linux: Core ML runs only on Apple hardware, and milrun is "
               "md-export's numpy reference evaluator of the MIL program, not a runtime; evaluator_ms is its time, "
               "not a latency")


# -- memory -----------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryMeter:
    """Peak RSS per phase and for the whole process. Resetting the kernel's high-water mark also
    lowers ru_maxrss, so the process peak is kept here as the max over phases."""

    def __init__(self):
        self.process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    def _high_water(self) -> int:
        hwm = _status_bytes("VmHWM")
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @contextmanager
    def phase(self):
        """Yields a dict that holds, after the block, `peak_rss_bytes` (None if it cannot be
        isolated from earlier phases) and `rss_before_bytes`."""
        self.process_peak = max(self.process_peak, self._high_water())
        try:
            Path("/proc/self/clear_refs").write_text("5")
            isolated = True
        except OSError:
            isolated = False
        out = {"rss_before_bytes": _status_bytes("VmRSS")}
        try:
            yield out
        finally:
            hwm = self._high_water()
            self.process_peak = max(self.process_peak, hwm)
            out["peak_rss_bytes"] = hwm if isolated else None

    def peak(self) -> int:
        return max(self.process_peak, self._high_water())


# -- timing -----------------------------------------------------------------------------------------


def time_calls(fn, warmup: int, runs: int):
    """Median/min wall time of `runs` calls after `warmup` calls; returns (stats, last output)."""
    warm = []
    for _ in range(warmup):  # the first call includes one-time work (XNNPACK packs weights, ORT allocates)
        t0 = time.perf_counter()
        fn()
        warm.append(round((time.perf_counter() - t0) * 1000.0, 3))
    times, cpu, out = [], [], None
    for _ in range(max(runs, 1)):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    # CPU time of all the process's threads: a hint of how much the machine's other load stretched
    # the wall time (wall ~ cpu / threads when nothing else runs; thread pools that spin count too)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs_ms": [round(t, 3) for t in times],
            "cpu_ms_median": statistics.median(cpu), "warmup_ms": warm}, out


def agreement(ref: np.ndarray | None, out) -> dict | None:
    if ref is None:
        return None
    from md_export.core.metrics import compare

    m = compare(ref, np.asarray(out, dtype=np.float32))
    return {"psnr_db": round(m["psnr"], 2), "cosine": round(m["cosine"], 6), "max_abs": m["max_abs"]}


def measure_runtime(meter: MemoryMeter, load, warmup: int, runs: int, ref: np.ndarray | None):
    """Load one model (load() -> zero-argument callable returning the output), time it, compare
    its output with the reference, and free it before the next runtime. Returns (stats, output)."""
    with meter.phase() as mem:
        t0 = time.perf_counter()
        run = load()
        load_s = time.perf_counter() - t0
        stats, out = time_calls(run, warmup, runs)
        del run
        gc.collect()
    return {**stats, "load_seconds": round(load_s, 3), "agreement": agreement(ref, out), **mem}, out


# -- runtimes: each loader takes the feeds once (cast outside the timed call) ---------------------------


def torch_loader(module, feeds: dict[str, np.ndarray], names: list[str]):
    import torch

    def load():
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)

        def run():
            with torch.inference_mode():
                return module(*args).numpy()

        return run

    return load


def tflite_loader(path: Path, signature: str | None, feeds: dict[str, np.ndarray], out_name: str, threads: int):
    def load():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        runner = interpreter.get_signature_runner(signature or next(iter(interpreter.get_signature_list())))
        details = runner.get_input_details()
        cast = {k: np.ascontiguousarray(v, dtype=details[k]["dtype"]) for k, v in feeds.items()}

        def run(_keep=interpreter):
            return runner(**cast)[out_name]

        return run

    return load


def onnx_loader(path: Path, feeds: dict[str, np.ndarray], out_name: str, threads: int):
    def load():
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        np_types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
                    "tensor(int64)": np.int64}
        cast = {i.name: np.ascontiguousarray(feeds[i.name], dtype=np_types[i.type]) for i in session.get_inputs()}

        def run():
            return session.run([out_name], cast)[0]

        return run

    return load


def milrun_loader(path: Path, feeds: dict[str, np.ndarray], out_name: str):
    def load():
        from md_export.milrun import MilEvaluator

        evaluator = MilEvaluator(path)
        return lambda: evaluator.predict(feeds)[out_name]

    return load


# -- the two modes ----------------------------------------------------------------------------------


def _file_bytes(path: Path) -> int:
    from md_export.core.io import path_bytes

    return path_bytes(path)


def _artifact_entry(meter, target, loader, warmup, runs, evaluator_runs, ref, base) -> dict:
    if target == "coreml":
        r, _ = measure_runtime(meter, loader, 0, evaluator_runs, ref)
        return {**base, "runtime": "milrun", "latency_ms": None, "ratio": None, "note": COREML_NOTE,
                "evaluator_ms": r.pop("median_ms"), "evaluator_runs_ms": r.pop("runs_ms"),
                **{k: v for k, v in r.items() if k != "min_ms"}}
    r, _ = measure_runtime(meter, loader, warmup, runs, ref)
    return {**base, "runtime": {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}[target], **r}


def bench_bundles(a) -> dict:
    import torch

    from md_export.core.manifest import find_bundles, read_manifest
    from md_export.core.names import COMPONENTS
    from md_export.components.plan import attach_modules, count_parameters, make_plan
    from md_export.core.errors import InputError
    from md_export.verify.check import InputFactory, reference_checkpoint

    bundles = [(b, read_manifest(b)) for b in find_bundles(a.path)]
    first, manifest = bundles[0]
    shape_keys = ("height", "width", "unet_batch", "with_encoder")

    def shapes(m):
        return tuple(m.get("options", {}).get(k) for k in shape_keys)

    for b, m in bundles[1:]:
        if shapes(m) != shapes(manifest) or (m.get("source", {}).get("weights_sha256") != manifest.get("source", {}).get("weights_sha256")):
            raise InputError(f"{b}: exported from other weights or shapes than {first}; run latency.py on each bundle separately")
    opts = manifest.get("options", {})
    ckpt = reference_checkpoint(manifest, a.checkpoint, first)
    plan = make_plan(ckpt, height=opts.get("height"), width=opts.get("width"), unet_batch=opts.get("unet_batch"),
                     with_encoder=bool(opts.get("with_encoder")))
    attach_modules(plan, ckpt)
    factory = InputFactory(first, manifest, plan, seed=0, samples=3)  # sample 1: a real prompt, timestep 500
    meter = MemoryMeter()
    names = [n for n in COMPONENTS if any(n in m["models"] for _, m in bundles)]
    result = {"components": {}}
    for name in names:
        comp = plan.components[name]
        feeds = factory.make(name, 1)
        out_name = comp.outputs[0].name
        for b, m in bundles:
            entry = m["models"].get(name)
            if entry and [(i["name"], list(i["shape"])) for i in entry["inputs"]] != [(s.name, list(s.shape)) for s in comp.inputs]:
                raise InputError(f"{b / 'manifest.json'}: {name} inputs {entry['inputs']} differ from the reference plan's; "
                                 "pass --checkpoint with the checkpoint this bundle came from")
        torch_r, ref = measure_runtime(meter, torch_loader(comp.module, feeds, [s.name for s in comp.inputs]), a.warmup, a.runs, None)
        row = {"inputs": {k: list(v.shape) for k, v in feeds.items()},
               "pytorch": {"runtime": f"torch {torch.__version__} eager fp32", "parameters": count_parameters(comp.module), **torch_r}}
        for b, m in bundles:
            entry = m["models"].get(name)
            if not entry:
                continue
            path, target = b / entry["file"], m["target"]
            if target == "tflite":
                loader = tflite_loader(path, entry.get("signature"), feeds, out_name, a.threads)
            elif target == "onnx":
                loader = onnx_loader(path, feeds, out_name, a.threads)
            else:
                loader = milrun_loader(path, feeds, out_name)
            base = {"target": target, "file": str(path), "bytes": _file_bytes(path), "precision": entry.get("precision"),
                    "compression": entry.get("compression")}
            row[b.name] = _artifact_entry(meter, target, loader, a.warmup, a.runs, a.evaluator_runs, ref, base)
        result["components"][name] = row
    result["bundles"] = [str(b) for b, _ in bundles]
    result["reference"] = ckpt.describe()
    return finish(result, meter, a)


def bench_sd15_unet(a) -> dict:
    """The full-size SD 1.5 UNet of int8_full_unet.py: rebuilt the same way (SD 1.5 config, torch
    seed 0, batch 2), run once per step; the torch module is freed before the artifacts load."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from int8_full_unet import _component

    from md_export.components.plan import count_parameters

    meter = MemoryMeter()
    with meter.phase() as build_mem:
        t0 = time.perf_counter()
        comp = _component()
        build_s = time.perf_counter() - t0
    feeds = {s.name: t.numpy() for s, t in zip(comp.inputs, comp.example_inputs(seed=0))}
    out_name = comp.outputs[0].name
    torch_r, ref = measure_runtime(meter, torch_loader(comp.module, feeds, [s.name for s in comp.inputs]), a.warmup, a.runs, None)
    row = {"inputs": {k: list(v.shape) for k, v in feeds.items()},
           "pytorch": {"runtime": f"torch {torch.__version__} eager fp32", "parameters": count_parameters(comp.module),
                       "build_seconds": round(build_s, 1), "build_peak_rss_bytes": build_mem["peak_rss_bytes"], **torch_r}}
    del comp
    gc.collect()
    for key, folder, precision in (("tflite_int8", "int8_tflite", "int8 weights, DEQUANTIZE to fp32 compute"), ("tflite_fp32", "fp_tflite", "fp32")):
        path = a.work / folder / "unet.tflite"
        if not path.is_file():
            row[key] = {"file": str(path), "skipped": "not found; run benchmarks/int8_full_unet.py first"}
            continue
        base = {"target": "tflite", "file": str(path), "bytes": _file_bytes(path), "precision": precision}
        row[key] = _artifact_entry(meter, "tflite", tflite_loader(path, "unet", feeds, out_name, a.threads),
                                   a.warmup, a.runs, 0, ref, base)
    for folder in ("fp_coreml", "int8_coreml"):
        path = a.work / folder / "unet.mlpackage"
        if path.exists():
            row[folder] = {"target": "coreml", "file": str(path), "bytes": _file_bytes(path), "latency_ms": None,
                           "ratio": None, "note": COREML_NOTE + "; not evaluated here (a full-size UNet in numpy)"}
    return finish({"components": {"unet": row}, "work": str(a.work)}, meter, a)


def finish(result: dict, meter: MemoryMeter, a) -> dict:
    for row in result["components"].values():
        base = row["pytorch"]["median_ms"]
        for key, r in row.items():
            if isinstance(r, dict) and r.get("median_ms") and key != "pytorch":
                r["ratio"] = round(r["median_ms"] / base, 3)
                r["ratio_of_min"] = round(r["min_ms"] / row["pytorch"]["min_ms"], 3)  # less sensitive to a busy machine
    result.update({
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "threads": a.threads, "warmup": a.warmup, "runs": a.runs,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": a.loadavg_start, "loadavg_end": list(os.getloadavg()),
                    "nice": os.nice(0)},
        "versions": _versions(),
        "peak_rss_bytes": meter.peak(),
    })
    return result


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in ("torch", "ai-edge-litert", "onnxruntime", "numpy"):
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = None
    return out


def table(result: dict) -> str:
    gib = 1024**3
    lines = ["| component | runtime | artifact | size MB | median ms | ratio vs PyTorch | CPU ms / call | PSNR vs PyTorch dB | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["components"].items():
        for key, r in row.items():
            if not isinstance(r, dict) or key == "inputs":
                continue
            if "skipped" in r:
                lines.append(f"| {name} | | {key} | | {r['skipped']} | | | | |")
                continue
            size = f"{r['bytes'] / 1e6:.1f}" if r.get("bytes") else ""
            if r.get("evaluator_ms") is not None:
                ms, ratio = f"no latency on Linux (evaluator {r['evaluator_ms']:.0f} ms)", "n/a"
            elif r.get("median_ms") is not None:
                ms, ratio = f"{r['median_ms']:.1f}", "1 (reference)" if key == "pytorch" else f"{r['ratio']:.3g}"
            else:
                ms, ratio = "no latency on Linux (not evaluated)", "n/a"
            kind = r.get("compression") if r.get("compression") not in (None, "none") else r.get("precision")
            label = key if key == "pytorch" or not kind else f"{key} ({kind})"
            psnr = (r.get("agreement") or {}).get("psnr_db")
            peak = r.get("peak_rss_bytes")
            cpu = r.get("cpu_ms_median")
            lines.append(f"| {name} | {r.get('runtime', '')} | {label} | {size} | {ms} | {ratio} | {'' if cpu is None else f'{cpu:.0f}'} | "
                         f"{'' if psnr is None else psnr} | {'' if peak is None else f'{peak / gib:.2f}'} |")
    lines.append(f"\nprocess peak RSS {result['peak_rss_bytes'] / gib:.2f} GiB; threads {result['threads']}; "
                 f"warm-up {result['warmup']}, runs {result['runs']}; load average {result['machine']['loadavg_start'][0]:.2f} -> "
                 f"{result['machine']['loadavg_end'][0]:.2f}; {result['date']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    pb = sub.add_parser("bundles", help="bundles exported by md-export (a bundle or a folder of bundles)")
    pb.add_argument("path", type=Path)
    pb.add_argument("--checkpoint", type=Path, default=None, help="reference checkpoint (default: the one the manifest names)")
    pb.add_argument("--runs", type=int, default=10)
    pb.add_argument("--warmup", type=int, default=2)
    pb.add_argument("--evaluator-runs", type=int, default=1, help="milrun calls (Core ML bundles; evaluator time only)")
    ps = sub.add_parser("sd15-unet", help="full-size SD 1.5 UNet artifacts written by int8_full_unet.py")
    ps.add_argument("--work", type=Path, default=Path("/tmp/sd15_bench"), help="the folder int8_full_unet.py wrote (fp_tflite/, int8_tflite/, ...)")
    ps.add_argument("--runs", type=int, default=3)
    ps.add_argument("--warmup", type=int, default=1)
    for sp in (pb, ps):
        sp.add_argument("--threads", type=int, default=2, help="torch, TFLite and onnxruntime threads")
        sp.add_argument("--quick", action="store_true", help="1 run, no warm-up (smoke test; numbers are not latencies)")
        sp.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.warmup = 1, 0
        a.evaluator_runs = 1
    a.loadavg_start = list(os.getloadavg())

    import torch

    from md_export.core.errors import MdExportError

    torch.set_num_threads(a.threads)
    try:
        result = bench_bundles(a) if a.mode == "bundles" else bench_sd15_unet(a)
    except MdExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if a.json:  # first, so a table bug cannot lose a long run
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
