"""What every lowerer provides, and the registry that finds one by target name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from md_export.components.plan import ComponentPlan
from md_export.core.errors import UnknownNameError
from md_export.core.names import TARGETS

MODULES = {t: f"md_export.lower.{t}" for t in TARGETS}


@dataclass
class LowerOptions:
    """Options that reach a lowerer. Lowerers ignore what does not apply to them."""

    precision: str = "fp32"  # fp32 | fp16: the compute precision export.py chose for this component
    minimum_deployment_target: str = "iOS17"
    compute_units: str = "ALL"
    extra: dict = field(default_factory=dict)
    # a full-size pipeline: converters trade graph-level constant folding for memory where they can
    # (litert-torch's lightweight conversion); off at tiny sizes so those bytes stay as they were
    large: bool = False


@dataclass
class LoweredModel:
    """What a lowerer wrote for one component; compression may replace the file, the bundle adds
    sha256 and size."""

    component: str
    path: Path  # file or (.mlpackage) folder inside the bundle being written
    precision: str
    compression: str = "none"
    signature: str | None = None
    notes: list[str] = field(default_factory=list)
    size: dict = field(default_factory=dict)  # compression size report (md_export.compress.size)


class Lowerer(Protocol):
    name: str
    extension: str
    default_precision: str
    # the precisions the converter itself computes in; others come from compression after lowering
    native_precisions: tuple[str, ...]

    def lower(self, component: ComponentPlan, ep: torch.export.ExportedProgram, out_dir: Path,
              options: LowerOptions) -> LoweredModel: ...

    def versions(self) -> dict[str, str | None]: ...


def get_lowerer(target: str) -> Lowerer:
    if target not in MODULES:
        raise UnknownNameError("target", target, MODULES)
    return importlib.import_module(MODULES[target]).LOWERER
