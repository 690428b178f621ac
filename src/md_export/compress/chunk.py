"""Split a Core ML UNet into chunks under a size limit (iOS maps each .mlpackage's weights; pieces
under 1 GB load where a 1.7 GB UNet does not), and check the chained chunks against the whole.

Splitting uses coremltools' bisect_model (halves a program at the op where the weight bytes on
either side are closest, the tensors alive across the cut becoming the first chunk's outputs and
the second chunk's inputs), applied again to any half still over the limit. Its own correctness
check calls predict (macOS only), so here the chain runs in milrun instead.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

CHUNK_LIMIT_BYTES = 1_000_000_000


def _bytes(path: Path) -> int:
    from ..bundle import path_bytes

    return path_bytes(path)


def split(path: Path, out_dir: Path, limit: int = CHUNK_LIMIT_BYTES, name: str = "UnetChunk") -> list[Path]:
    """Chunks of `path` (in order) written to out_dir as <name>1.mlpackage, <name>2..., each under limit."""
    from coremltools.models.utils import bisect_model

    work = out_dir / ".chunks"
    work.mkdir(parents=True, exist_ok=True)
    pending = [path]
    done: list[Path] = []
    n = 0
    while pending:
        p = pending.pop(0)
        if _bytes(p) <= limit:
            done.append(p)
            continue
        n += 1
        d = work / f"split{n}"
        bisect_model(str(p), str(d), merge_chunks_to_pipeline=False, check_output_correctness=False)
        parts = [d / f"{p.stem}_chunk1.mlpackage", d / f"{p.stem}_chunk2.mlpackage"]
        if not all(x.is_dir() for x in parts) or any(_bytes(x) >= _bytes(p) for x in parts):
            raise RuntimeError(f"coreml: cannot split {p.name} further (a single op's weights exceed {limit} bytes?)")
        pending = parts + pending
    out = []
    for i, p in enumerate(done, 1):
        dest = out_dir / f"{name}{i}.mlpackage"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(p, dest)
        out.append(dest)
    shutil.rmtree(work, ignore_errors=True)
    return out


def run_chain(chunks: list[Path], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run chunks in order with milrun; each takes what it needs from the inputs and earlier outputs."""
    from ..milrun import MilEvaluator

    env = dict(feeds)
    out: dict[str, np.ndarray] = {}
    for c in chunks:
        ev = MilEvaluator(c)
        out = ev.predict({k: env[k] for k in ev.input_names})
        env.update(out)
    return out


def check_chain(whole: Path, chunks: list[Path], feeds: list[dict[str, np.ndarray]], output: str) -> float:
    """Worst PSNR of the chained chunks' output against the whole model's, both in milrun."""
    from ..milrun import MilEvaluator
    from ..parity.metrics import compare

    ev = MilEvaluator(whole)
    worst = math.inf
    for f in feeds:
        ref = ev.predict(f)[output]
        got = run_chain(chunks, f)[output]
        worst = min(worst, compare(np.asarray(ref, np.float32), np.asarray(got, np.float32))["psnr"])
    return worst
