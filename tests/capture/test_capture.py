"""Capture: one torch.export of a component, failures named by component (capture.torch_export)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from md_export.capture.torch_export import capture, op_origin
from md_export.components.plan import ComponentPlan
from md_export.core.errors import ConversionError
from md_export.core.spec import TensorSpec


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.gelu(self.proj(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return self.block(x) * 2


def _plan(module) -> ComponentPlan:
    return ComponentPlan("unet", [TensorSpec("sample", (2, 8), "float32", "BT")], [TensorSpec("noise_pred", (2, 8), "float32", "BT")],
                         module.eval())


def test_capture_computes_what_the_module_computes():
    plan = _plan(Outer())
    ep = capture(plan)
    (x,) = plan.example_inputs(seed=0)
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), plan.module(x))


def test_op_origin_names_the_module():
    ep = capture(_plan(Outer()))
    assert op_origin(ep, "gelu") == "block"
    assert op_origin(ep, "no_such_op") is None


def test_a_failed_capture_names_the_component():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[: int(x.sum().item() > 0) + 1]

    with pytest.raises(ConversionError, match="capture of 'unet' failed in torch.export"):
        capture(_plan(DataDependent()))
