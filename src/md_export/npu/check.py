"""Parity of NPU-compiled models: the HTP simulator's outputs vs the uncompiled .tflite run in ai_edge_litert.

`check_compiled(fallback, compiled)` runs both on the same seeded inputs and reports PSNR per output
(20*log10(max|ref| / RMSE), the worst output counts). `check_npu_pack(bundle)` does it for every compiled file
listed in <bundle>/ai_pack/npu.json and compares each against the floor for its model's precision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from md_export.core.manifest import inside_bundle
from md_export.core.metrics import psnr
from md_export.npu._errors import InputError
from md_export.npu.compile import COMPILED, read_npu_json
from md_export.npu.simulate import IoTensor, read_dispatch, run_simulator

# PSNR floors (dB) for the simulator vs the uncompiled CPU model, by the model's precision/compression label.
# The HTP computes fp32 models in fp16. Measured on the default tiny model (benchmarks/npu in the report):
# fp32/fp16 >= 55 dB, w8a8 >= 30 dB; the floors leave a margin under the worst model.


@dataclasses.dataclass
class NpuParity:
    model: str
    soc: str
    psnr: float  # the worst output's
    per_output: dict[str, float]
    max_abs: float
    floor: float | None
    passed: bool | None  # None: no floor
    sim_load_seconds: float
    sim_run_seconds: float
    sim_wall_seconds: float
    ref_seconds: float

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("psnr",):
            if math.isinf(d[k]):
                d[k] = "inf"
        d["per_output"] = {k: ("inf" if math.isinf(v) else v) for k, v in d["per_output"].items()}
        return d


def seeded_feeds(inputs: Sequence[IoTensor], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs by name: token ids in [0, 1000), timesteps in [0, 1000), everything else standard normal."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in inputs:
        dt = np.dtype(t.dtype)
        if dt.kind in "iu":
            out[t.name] = rng.integers(0, 1000, size=t.shape).astype(dt)
        elif t.name == "timestep":
            out[t.name] = rng.uniform(0, 999, size=t.shape).astype(dt)
        elif dt.kind == "b":
            out[t.name] = rng.integers(0, 2, size=t.shape).astype(bool)
        else:
            out[t.name] = rng.standard_normal(t.shape).astype(dt)
    return out


def run_reference(tflite: str | Path, signature: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The uncompiled model in ai_edge_litert's interpreter (Android's CPU kernels)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite), num_threads=1)
    keys = list(interp.get_signature_list())
    if signature not in keys:
        raise InputError(f"{tflite}: has no signature '{signature}' (it has {', '.join(keys)})")
    runner = interp.get_signature_runner(signature)
    return {k: np.array(v) for k, v in runner(**{k: np.asarray(v) for k, v in feeds.items()}).items()}


def check_compiled(
    fallback: str | Path,
    compiled: str | Path,
    *,
    model: str | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    floor: float | None = None,
    python=None,
) -> NpuParity:
    import time

    d = read_dispatch(compiled)
    feeds = dict(feeds) if feeds is not None else seeded_feeds(d.inputs, seed)
    t0 = time.perf_counter()
    ref = run_reference(fallback, d.signature, feeds)
    ref_s = time.perf_counter() - t0
    sim = run_simulator(compiled, feeds, python=python)
    per = {}
    max_abs = 0.0
    for name, r in ref.items():
        if name not in sim.outputs:
            raise InputError(f"{compiled}: has no output '{name}' that {fallback} has")
        g = sim.outputs[name]
        if g.shape != r.shape:
            raise InputError(f"{compiled}: output '{name}' is {g.shape}, the fallback's is {r.shape}")
        per[name] = round(psnr(r, g), 2)
        max_abs = max(max_abs, float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))))
    worst = min(per.values())
    return NpuParity(
        model or Path(fallback).stem,
        d.soc or "?",
        worst,
        per,
        max_abs,
        floor,
        None if floor is None else bool(worst >= floor),
        sim.load_seconds,
        sim.run_seconds,
        sim.wall_seconds,
        round(ref_s, 3),
    )


def check_npu_pack(
    bundle_dir: str | Path,
    *,
    pack_name: str = "ai_pack",
    floor_of: Callable[[str | None, str | None], float],
    seed: int = 0,
    models: Sequence[str] | None = None,
    python=None,
    progress=None,
) -> list[NpuParity]:
    """Simulate every fully compiled model of <bundle>/<pack_name> and compare it with the bundle's fallback."""
    bundle = Path(bundle_dir)
    pack = bundle / pack_name
    doc = read_npu_json(pack)
    out = []
    for name, entry in doc["models"].items():
        if models and name not in models:
            continue
        fallback = inside_bundle(bundle, entry["fallback"], f"NPU fallback for '{name}'")
        fl = floor_of(entry.get("precision"), entry.get("compression"))
        for soc, r in entry["targets"].items():
            if r["status"] != COMPILED or not r.get("file"):
                continue
            if progress:
                progress(f"HTP simulator: {name} for {soc}")
            compiled = inside_bundle(bundle, f"{pack_name}/{r['file']}", f"NPU model for '{name}' on {soc}")
            out.append(check_compiled(fallback, compiled, model=name, seed=seed, floor=fl, python=python))
    return out
