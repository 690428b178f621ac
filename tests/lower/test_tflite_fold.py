"""Folding constant-only ops of a lightweight-converted .tflite one at a time (lower.tflite_fold), and
the streamed table/buffer writer it uses (lower.tflite_file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from md_export.lower import tflite_fold
from md_export.lower.tflite_file import TableModel, schema
from md_export.lower.tflite_fold import constant_only_ops, fold_constants


class _Block(torch.nn.Module):
    """A conv (its weight is transposed to OHWI), a scaled linear and a stored table: the three kinds
    of constant-only op litert-torch leaves when constants stay lazy."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(8, 32, 3, padding=1)
        self.proj = torch.nn.Linear(32, 64)
        self.register_buffer("table", torch.randn(64, 16, 16))

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.proj(y * 0.125).permute(0, 3, 1, 2) + self.table


def _convert(path, **kw):
    import litert_torch

    x = torch.randn(1, 8, 16, 16)
    litert_torch.convert(_Block().eval(), (x,), **kw).export(str(path))
    return path


def _run(path):
    from ai_edge_litert import interpreter as litert

    it = litert.Interpreter(model_path=str(path))
    runner = it.get_signature_runner()
    x = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32)
    (name,) = runner.get_input_details()
    return next(iter(runner(**{name: x}).values()))


@pytest.fixture(scope="module")
def lazy_models(tmp_path_factory):
    """The block converted with lazy constants (threshold 1 KiB instead of litert-torch's 1 MB), with
    litert-torch's own runtime folding and without any."""
    d = tmp_path_factory.mktemp("fold")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESOURCE_CONSTANT_NUMEL_THRESHOLD", "1024")
    try:
        runtime = _convert(d / "runtime.tflite", lightweight_conversion=True)
        lazy = _convert(d / "lazy.tflite", lightweight_conversion=True, runtime_constant_folding=False)
    finally:
        mp.undo()
    return runtime, lazy


def _copy(src, tmp_path, name="m.tflite"):
    dest = tmp_path / name
    dest.write_bytes(src.read_bytes())
    return dest


def test_folding_leaves_no_constant_only_op_and_matches_litert_runtime_folding(lazy_models, tmp_path):
    runtime, lazy = lazy_models
    before = constant_only_ops(lazy)
    assert before.get("TRANSPOSE", 0) >= 1, before  # the case exists: litert-torch left the conv weight's transpose
    path = _copy(lazy, tmp_path)
    report = fold_constants(path)
    assert report.count == sum(before.values()) and not report.left
    assert constant_only_ops(path) == {}
    folded, reference = TableModel(path), TableModel(runtime)
    # litert-torch's own folding may leave a constant-only op of its own; never fewer ops than ours
    assert len(folded.model.subgraphs[0].operators) <= len(reference.model.subgraphs[0].operators)
    np.testing.assert_allclose(_run(path), _run(runtime), rtol=0, atol=1e-5)
    # what folding consumed is gone from the file, not just unreferenced
    assert len(folded.model.subgraphs[0].tensors) <= len(reference.model.subgraphs[0].tensors)
    assert path.stat().st_size < lazy.stat().st_size + 4096
    assert not list(tmp_path.glob("*.folded")) and not list(tmp_path.glob("*.writing"))


def test_the_written_model_keeps_its_weights_outside_the_table(lazy_models, tmp_path):
    path = _copy(lazy_models[1], tmp_path)
    fold_constants(path)
    raw = schema().ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    outside = [b for b in raw.buffers if b.offset > 1]
    assert outside and all(b.offset % 16 == 0 for b in outside)
    assert max(b.offset + b.size for b in outside) <= path.stat().st_size


def test_rewriting_an_inline_model_changes_no_number(lazy_models, tmp_path):
    """A model written by the converter with its buffers inside the table, read and written again
    by TableModel, runs the same."""
    src = _copy(lazy_models[0], tmp_path, "in.tflite")
    dest = tmp_path / "out.tflite"
    TableModel(src).write(dest)
    np.testing.assert_array_equal(_run(dest), _run(src))


def test_an_op_md_export_does_not_fold_stays_and_is_reported(lazy_models, tmp_path, monkeypatch):
    monkeypatch.setattr(tflite_fold, "FOLDABLE", tflite_fold.FOLDABLE - {"TRANSPOSE"})
    path = _copy(lazy_models[1], tmp_path)
    report = fold_constants(path)
    assert report.left.get("TRANSPOSE", 0) >= 1
    assert constant_only_ops(path).get("TRANSPOSE", 0) == report.left["TRANSPOSE"]
    np.testing.assert_allclose(_run(path), _run(lazy_models[0]), rtol=0, atol=1e-5)


def test_a_failed_fold_leaves_the_file_as_it_was(lazy_models, tmp_path, monkeypatch):
    path = _copy(lazy_models[1], tmp_path)
    before = path.read_bytes()

    def broken(*_a, **_k):
        raise RuntimeError("interpreter failed")

    monkeypatch.setattr(tflite_fold, "_run_alone", broken)
    with pytest.raises(RuntimeError):
        fold_constants(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
