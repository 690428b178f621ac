"""Integrity: every model file of a bundle has the bytes and sha256 its manifest records, checked
before any parity run, so a corrupted or swapped file fails by name instead of being measured."""

from __future__ import annotations

from pathlib import Path

from md_export.core.io import path_bytes, path_sha256


def verify_files(bundle: Path, manifest: dict) -> list[str]:
    """One line per file whose size or sha256 differs from the manifest's (empty: all match)."""
    problems = []
    pieces_of = {name: entry.get("chunks") or [entry] for name, entry in manifest["models"].items()}
    for npu in manifest.get("npu", []):
        if npu.get("file"):
            pieces_of.setdefault(f"{npu['model']} on {npu['soc']}", []).append(npu)
    for name, pieces in pieces_of.items():
        for piece in pieces:
            rel = piece["file"]
            path = Path(bundle) / rel
            recorded_bytes, recorded_sha = piece.get("bytes"), piece.get("sha256")
            if recorded_sha is None:
                problems.append(f"{rel} ({name}): the manifest records no sha256")
                continue
            actual = path_bytes(path)
            if recorded_bytes is not None and actual != recorded_bytes:
                problems.append(f"{rel} ({name}): {actual} bytes, the manifest records {recorded_bytes}")
            elif path_sha256(path) != recorded_sha:
                problems.append(f"{rel} ({name}): sha256 differs from the manifest's")
    return problems
