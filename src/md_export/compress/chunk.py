"""Split a Core ML UNet into chunks under a size limit (iOS maps each .mlpackage's weights; pieces
under 1 GB load where a 1.7 GB UNet does not), and check the chained chunks against the whole.

Splitting uses coremltools' bisect_model (halves a program at the op where the weight bytes on
either side are closest, the tensors alive across the cut becoming the first chunk's outputs and
the second chunk's inputs), applied again to any half still over the limit. Its own correctness
check calls predict (macOS only), so here the chain runs in milrun instead.

In the bundle a chunked model has no "file"; its manifest entry lists "chunks" in run order, each
with its own file, inputs, outputs, sha256 and bytes (docs/bundle-format.md).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from md_export.core.errors import ConversionError
from md_export.core.io import path_bytes, path_sha256
from md_export.core.metrics import compare
from md_export.milrun import MilEvaluator
from md_export.lower.coreml_package import normalize_mlpackage
from md_export.runtime.chain import chain

CHUNK_LIMIT_MB = 1000
CHUNK_LIMIT_BYTES = CHUNK_LIMIT_MB * 1_000_000
CHAIN_FLOOR_DB = 80.0  # the chain runs the same ops as the whole: anything short of (near) exact is a bad cut


def split(path: Path, out_dir: Path, limit: int = CHUNK_LIMIT_BYTES, name: str = "UnetChunk", min_chunks: int = 1,
          max_chunks: int | None = None) -> list[Path]:
    """Chunks of `path` (in order) written to out_dir as <name>1.mlpackage, <name>2..., each under
    limit; with min_chunks=2 the model is split at least once even when it is already under; with
    max_chunks a piece still over the limit when that many exist is an error."""
    from coremltools.models.utils import bisect_model

    work = out_dir / ".chunks"
    work.mkdir(parents=True, exist_ok=True)
    pending = [path]
    done: list[Path] = []
    n = 0
    while pending:
        p = pending.pop(0)
        if path_bytes(p) <= limit and len(done) + len(pending) + 1 >= min_chunks:
            done.append(p)
            continue
        if max_chunks is not None and len(done) + len(pending) + 2 > max_chunks:
            raise ConversionError(f"coreml: this layout takes at most {max_chunks} UNet chunks and one would be {path_bytes(p) / 1e6:.1f} MB, "
                                  f"over --chunk-limit-mb {limit / 1e6:g}; raise the limit or compress the UNet more")
        n += 1
        d = work / f"split{n}"
        bisect_model(str(p), str(d), merge_chunks_to_pipeline=False, check_output_correctness=False)
        parts = [d / f"{p.stem}_chunk1.mlpackage", d / f"{p.stem}_chunk2.mlpackage"]
        if not all(x.is_dir() for x in parts) or any(path_bytes(x) >= path_bytes(p) for x in parts):
            raise ConversionError(f"coreml: cannot split {p.name} under {limit / 1e6:.0f} MB (a single op's weights are larger?); "
                                  "raise --chunk-limit-mb or compress the UNet more")
        pending = parts + pending
    out = []
    for i, p in enumerate(done, 1):
        dest = out_dir / f"{name}{i}.mlpackage"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(p, dest)
        normalize_mlpackage(dest)
        out.append(dest)
    shutil.rmtree(work, ignore_errors=True)
    return out


def run_chain(chunks: list[Path], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run chunks in order with milrun; each takes what it needs from the inputs and earlier outputs.
    One chunk's weights are in memory at a time (a full-size UNet's halves are ~1 GB each)."""
    names = [[i["name"] for i in package_io(c)[0]] for c in chunks]
    return chain([lambda f, c=c: MilEvaluator(c).predict(f) for c in chunks], names)(feeds)


def check_chain(whole: Path, chunks: list[Path], feeds: list[dict[str, np.ndarray]], output: str) -> float:
    """Worst PSNR of the chained chunks' output against the whole model's, both in milrun."""
    ev = MilEvaluator(whole)
    refs = [ev.predict(f)[output] for f in feeds]
    del ev  # the whole model and its chunks are never in memory together
    worst = math.inf
    for f, ref in zip(feeds, refs):
        got = run_chain(chunks, f)[output]
        worst = min(worst, compare(np.asarray(ref, np.float32), np.asarray(got, np.float32))["psnr"])
    return worst


def package_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of a saved .mlpackage as manifest tensor entries (name, shape, dtype)."""
    import coremltools as ct

    kinds = {ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32: "float32",
             ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16: "float16",
             ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32: "int32"}
    spec = ct.utils.load_spec(str(path))

    def entry(f):
        a = f.type.multiArrayType
        return {"name": f.name, "shape": [int(d) for d in a.shape], "dtype": kinds.get(a.dataType, str(a.dataType))}

    return [entry(f) for f in spec.description.input], [entry(f) for f in spec.description.output]


def chunk_in_bundle(whole: Path, component, limit: int, min_chunks: int, seed: int = 0, max_chunks: int | None = None) -> dict:
    """Replace `whole` (a .mlpackage inside a bundle being written) by chunks beside it; check the
    chain against the whole on seeded inputs; return the manifest fields of the chunked model."""
    name = {"unet": "UnetChunk"}.get(component.name, component.name.title().replace("_", "") + "Chunk")
    chunks = split(whole, whole.parent, limit, name, min_chunks, max_chunks)
    feeds = {s.name: t.numpy() for s, t in zip(component.inputs, component.example_inputs(seed))}
    psnr = check_chain(whole, chunks, [feeds], component.outputs[0].name)
    if psnr < CHAIN_FLOOR_DB:
        raise ConversionError(f"coreml: the {len(chunks)} chunks of '{component.name}' chained give {psnr:.1f} dB against "
                              f"the whole model (floor {CHAIN_FLOOR_DB:.0f} dB); export without chunking and report this")
    shutil.rmtree(whole)
    entries = []
    for c in chunks:
        inputs, outputs = package_io(c)
        entries.append({"file": c.name, "inputs": inputs, "outputs": outputs, "sha256": path_sha256(c), "bytes": path_bytes(c)})
    return {"chunks": entries, "chunk_check": {"runtime": "milrun", "psnr_vs_whole": None if math.isinf(psnr) else round(psnr, 2),
                                               "identical": math.isinf(psnr), "limit_bytes": limit}}
