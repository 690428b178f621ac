"""A tensor as the artifact contract names it: name, static shape, dtype, layout."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # float32 | int32 | float16
    layout: str  # NCHW | BSD | BS | B | BT

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "int32": torch.int32, "float16": torch.float16}[self.dtype]
