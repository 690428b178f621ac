"""NPU compile + HTP simulator on a tiny litert_torch model (seconds), and on the default model (slow).

Skipped, with the reason, when the QNN host libraries (pip install onnxruntime-qnn==2.6.0) are absent."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from md_export.core.metrics import psnr
from md_export.npu.check import check_compiled, check_npu_pack, run_reference
from md_export.verify.floors import npu_floor
from md_export.npu.compile import COMPILED, FALLBACK, compile_for_npu, export_npu
from md_export.npu.simulate import read_dispatch, run_simulator, simulate


def _ops(path: Path) -> int:
    from ai_edge_litert import schema_py_generated as schema

    m = schema.Model.GetRootAs(path.read_bytes(), 0)
    return sum(m.Subgraphs(i).OperatorsLength() for i in range(m.SubgraphsLength()))


@pytest.fixture(scope="module")
def compiled(qnn_host, tiny_tflite, tmp_path_factory):
    out = tmp_path_factory.mktemp("npu")
    return compile_for_npu(tiny_tflite, ["SM8750", "SM8650"], out), out


def test_compile_places_every_op_on_the_npu(compiled, tiny_tflite):
    results, out = compiled
    assert [r.soc for r in results] == ["SM8750", "SM8650"]
    for r in results:
        f = Path(r.file)
        assert r.status == COMPILED and r.reason is None
        assert f == out / f"tiny_Qualcomm_{r.soc}.tflite"
        assert r.ops_total == _ops(tiny_tflite) and r.ops_on_npu == r.ops_total and r.partitions == 1
        assert r.sha256 == hashlib.sha256(f.read_bytes()).hexdigest() and r.bytes == f.stat().st_size
        assert r.qnn_version and r.qnn_version.startswith("2.")
        d = read_dispatch(f)
        assert d.soc == r.soc and d.vendor == "Qualcomm" and d.signature == "tiny"
        assert [t.name for t in d.inputs] == ["x", "y"] and {t.name for t in d.outputs} == {"p", "q"}
        assert d.bytecode_offset + d.bytecode_size == f.stat().st_size  # the context binary is appended
    assert results[0].sha256 != results[1].sha256  # one context binary per SoC


def test_simulator_matches_the_uncompiled_model_by_name(compiled, tiny_tflite):
    results, _ = compiled
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "y": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    ref = run_reference(tiny_tflite, "tiny", feeds)
    run = run_simulator(results[0].file, feeds)
    assert set(run.outputs) == {"p", "q"} and run.run_seconds > 0 and run.versions["onnxruntime_qnn"]
    for k in ("p", "q"):
        assert psnr(ref[k], run.outputs[k]) > 50, k  # fp16 on the HTP; a swapped x/y or p/q would be near 0 dB
    assert psnr(ref["p"], run.outputs["q"]) < 20  # ...as this shows
    swapped = simulate(results[0].file, {"x": feeds["x"], "y": -feeds["y"]})
    assert psnr(ref["q"], swapped["q"]) < 20  # the simulator's output depends on its inputs


def test_check_compiled_reports_psnr_against_floor(compiled, tiny_tflite):
    p = check_compiled(tiny_tflite, compiled[0][1].file, floor=40.0, seed=0)
    assert p.soc == "SM8650" and p.passed is True and p.psnr >= 40 and set(p.per_output) == {"p", "q"}
    assert check_compiled(tiny_tflite, compiled[0][1].file, floor=200.0, seed=0).passed is False


def test_int8_weight_only_stays_on_fallback_with_the_reason(qnn_host, tiny_tflite, tmp_path):
    """int8 weight-only (per-channel, explicit DEQUANTIZE: md-export's `--quantize int8`) is rejected by QNN 2.50."""
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_quantizer import quantizer

    rule = {
        "regex": ".*",
        "operation": "*",
        "algorithm_key": "min_max_uniform_quantize",
        "op_config": {
            "compute_precision": "FLOAT",
            "explicit_dequantize": True,
            "skip_checks": False,
            "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"},
        },
    }
    q = quantizer.Quantizer(str(tiny_tflite), [rule]).quantize(None, enable_progress_bar=False, enable_progress_report=False)
    src = tmp_path / "tiny_int8.tflite"
    src.write_bytes(bytes(q.quantized_model))
    (r,) = compile_for_npu(src, ["SM8750"], tmp_path / "out")
    assert r.status == FALLBACK and r.file is None and r.sha256 is None
    assert "per-channel" in r.reason and "\n" not in r.reason
    assert Path(r.log).is_file() and "Dequantize" in Path(r.log).read_text()
    assert not list((tmp_path / "out").glob("*.tflite"))


def test_export_npu_writes_the_pack_and_check_passes(qnn_host, tiny_bundle):
    placed = export_npu(tiny_bundle, "qualcomm:SM8750")
    pack = tiny_bundle / "ai_pack"
    assert [(r.model, r.soc, r.status) for r in placed] == [("tiny", "SM8750", COMPILED)]
    assert (pack / placed[0].file).is_file() and not (pack / ".compile").exists()
    assert (pack / "tiny/src/main/assets/model#group_other/tiny.tflite").read_bytes() == (
        tiny_bundle / "tiny.tflite"
    ).read_bytes()
    doc = json.loads((pack / "npu.json").read_text())
    assert doc["models"]["tiny"]["targets"]["SM8750"]["sha256"] == placed[0].sha256
    (parity,) = check_npu_pack(tiny_bundle, floor_of=npu_floor)
    assert parity.model == "tiny" and parity.soc == "SM8750" and parity.floor == 45.0 and parity.passed


def test_simulator_in_another_interpreter_reports_a_missing_package(compiled, tmp_path):
    """$MD_EXPORT_NPU_PYTHON / python=: an interpreter without onnxruntime-qnn gives a one-line setup error."""
    from md_export.npu._errors import NpuSetupError

    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(NpuSetupError, match="onnxruntime-qnn==2.6.0"):
        run_simulator(
            compiled[0][0].file,
            {"x": np.zeros((1, 4, 8, 8), np.float32), "y": np.zeros((1, 4, 8, 8), np.float32)},
            python=bare / "bin" / "python",
        )


@pytest.mark.slow
def test_default_model_fp32_compiles_fully_and_passes_the_simulator(qnn_host, tmp_path):
    """md-export tflite (default model) -> every model on the NPU for SM8750 -> simulator PSNR over the fp32 floor."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "md_export.cli.app", "tflite", "-o", str(out), "--no-check", "-q"], check=True)
    bundle = out / "tflite"
    placed = export_npu(bundle, "qualcomm:SM8750")
    assert {r.model for r in placed} == {"text_encoder", "unet", "vae_decoder"}
    assert all(r.status == COMPILED and r.ops_on_npu == r.ops_total for r in placed)
    parity = check_npu_pack(bundle, floor_of=npu_floor)
    assert len(parity) == 3 and all(p.passed for p in parity), [p.to_json() for p in parity]
