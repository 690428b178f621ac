"""Size accounting: a compressed model's bytes against its ideal (parameters x bits / 8), with
the overhead, kept tensors and side data each measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from md_export.components.plan import count_parameters
from md_export.core.io import path_bytes

SIZE_TOLERANCE = 0.02


def inventory(target: str, path: Path) -> list[tuple[str, int, float, int]]:
    if target == "coreml":
        from md_export.compress.coreml import inventory as inv
    elif target == "tflite":
        from md_export.compress.tflite import inventory as inv
    else:
        from md_export.compress.onnx import inventory as inv
    return inv(path)


@dataclass
class SizeReport:
    parameters: int
    bits: float
    bytes: int
    ideal_bytes: int
    overhead_bytes: int
    kept_excess_bytes: int
    kept_tensors: int
    kept_parameters: int
    side_bytes: int = 0  # per-channel scales, zero points, palettes

    @property
    def budget_bytes(self) -> int:
        return int(self.ideal_bytes * (1 + SIZE_TOLERANCE) + self.overhead_bytes + self.kept_excess_bytes + self.side_bytes)

    def to_json(self) -> dict:
        return {
            "parameters": self.parameters, "bits": self.bits, "bytes": self.bytes, "ideal_bytes": self.ideal_bytes,
            "ratio_to_ideal": round(self.bytes / max(self.ideal_bytes, 1), 4),
            "overhead_bytes": self.overhead_bytes, "kept_excess_bytes": self.kept_excess_bytes,
            "kept_tensors": self.kept_tensors, "kept_parameters": self.kept_parameters, "side_bytes": self.side_bytes,
            "budget_bytes": self.budget_bytes, "within_budget": self.bytes <= self.budget_bytes,
        }


def size_report(target: str, path: Path, parameters: int, bits: float, base_bytes: int, base_bits: float) -> SizeReport:
    """bytes vs ideal = parameters x bits / 8. The budget adds, each measured and reported: the
    overhead = what the uncompressed file held beyond parameters x base_bits / 8 (graph, names,
    non-parameter constants); kept excess = tensors stored wider than `bits` (norms, biases,
    embeddings a level leaves out, layers kept float); side bytes = per-channel scales, zero points
    and palettes. Over budget means something is stored that should not be (a float copy left
    behind, tensors skipped) or, on tiny models, that new tensor names outweigh 2% of the weights."""
    size = path_bytes(path)
    excess = 0
    kept = kept_params = side = 0
    for _name, n, stored, side_bytes in inventory(target, path):
        side += side_bytes
        if stored > bits + 0.5:
            excess += n * (stored - bits) / 8
            kept += 1
            kept_params += n
    return SizeReport(parameters, bits, size, int(parameters * bits / 8), max(0, int(base_bytes - parameters * base_bits / 8)),
                      int(excess), kept, kept_params, int(side))


def ideal_bytes(module, precision: str) -> int:
    """An uncompressed model's ideal size: parameters x (32 or 16) / 8."""
    return int(count_parameters(module) * (16 if precision == "fp16" else 32) / 8) if module is not None else 0
