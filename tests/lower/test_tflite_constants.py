"""litert-torch clamps constants to the finite range in place; md-export's lowering has it clamp a
copy, so a module's weights are only read (memory-mapped weights stay shared, not copied)."""

from __future__ import annotations

import numpy as np
import torch

from md_export.lower.tflite import _constants_read_only


class _WithInf(torch.nn.Module):
    def __init__(self):
        super().__init__()
        table = torch.arange(4096, dtype=torch.float32).reshape(64, 64) / 4096
        table[3, 5] = float("inf")
        self.register_buffer("table", table)
        self.proj = torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.proj(x) + self.table


def _convert(module, path):
    import litert_torch

    litert_torch.convert(module, (torch.zeros(1, 64, 64),)).export(str(path))
    from ai_edge_litert import interpreter as litert

    runner = litert.Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    return next(iter(runner(**{name: np.zeros((1, 64, 64), np.float32)}).values()))


def test_lowering_reads_weights_and_still_clamps_infinities(tmp_path):
    module = _WithInf().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with _constants_read_only():
        out = _convert(module, tmp_path / "m.tflite")
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k  # the infinity is still in the module: nothing was written
    assert np.isfinite(out).all() and out[0, 3, 5] > 1e38  # the converter got the clamped value
    bias = module.proj.bias.detach().numpy()
    np.testing.assert_allclose(out[0, 0, :8], module.table[0, :8].numpy() + bias[:8], rtol=1e-6)
