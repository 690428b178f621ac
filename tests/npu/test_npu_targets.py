"""Fast NPU tests: target parsing, vendor errors, the AI Pack layout against LiteRT's own writer, failure reasons,
host-library discovery and the Lpai alias, feed checks, PSNR. Nothing here runs the QNN compiler or simulator."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from md_export.npu._errors import InputError, NpuSetupError, UnknownNameError
from md_export.core.metrics import psnr
from md_export.npu.check import seeded_feeds
from md_export.verify.floors import npu_floor as floor_for
from md_export.npu.compile import COMPILED, FALLBACK, NpuResult, failure_reason, targeting_xml, write_ai_pack
from md_export.npu.qnn_host import ENV_LIB_DIR, LPAI, REQUIRED_LIBS, find_qnn_host, plugin_library_path
from md_export.npu.simulate import DispatchModel, IoTensor, _coerce_feeds
from md_export.npu.targets import NpuTarget, known_qualcomm_socs, parse_npu_targets

pytest.importorskip("ai_edge_litert.aot")


def test_parse_qualcomm_socs_keeps_order_and_drops_duplicates():
    got = parse_npu_targets("qualcomm:SM8650,sm8750, SM8650")
    assert got == [NpuTarget("qualcomm", "SM8650"), NpuTarget("qualcomm", "SM8750")]
    assert [t.group for t in got] == ["Qualcomm_SM8650", "Qualcomm_SM8750"]
    assert parse_npu_targets(["Qualcomm:SM8550", "qualcomm:SM8750"]) == [
        NpuTarget("qualcomm", "SM8550"),
        NpuTarget("qualcomm", "SM8750"),
    ]


def test_known_socs_come_from_litert_enum():
    from ai_edge_litert.aot.vendors.qualcomm import target as qnn_target

    socs = known_qualcomm_socs()
    assert socs == [m.value for m in qnn_target.SocModel if m.value != "ALL"]
    assert {"SM8650", "SM8750"} <= set(socs) and "ALL" not in socs


def test_all_means_every_phone_soc():
    got = [t.soc for t in parse_npu_targets("qualcomm:all")]
    assert "SM8750" in got and "SA8295" not in got and "SA8255" not in got
    assert got == [s for s in known_qualcomm_socs() if not s.startswith("SA")]


def test_unknown_soc_lists_known_ones():
    with pytest.raises(UnknownNameError) as e:
        parse_npu_targets("qualcomm:SM9999")
    msg = str(e.value)
    assert "SM9999" in msg and "SM8750" in msg and "\n" not in msg and e.value.exit_code == 2


@pytest.mark.parametrize("spec", ["qualcomm", "qualcomm:", "qualcomm: , "])
def test_qualcomm_without_socs_is_an_input_error(spec):
    with pytest.raises(InputError, match="name the SoCs"):
        parse_npu_targets(spec)


def test_unknown_vendor_lists_known_vendors():
    with pytest.raises(UnknownNameError) as e:
        parse_npu_targets("nvidia:orin")
    assert "qualcomm" in str(e.value) and "mediatek" in str(e.value)


@pytest.mark.parametrize(
    "spec,sdk,where",
    [
        ("mediatek:MT6989", "MediaTek NeuroPilot SDK", "ai_edge_litert_sdk_mediatek"),
        ("google_tensor:Tensor_G4", "Google Tensor ML SDK", "GOOGLE_TENSOR_COMPILER_LIB"),
        ("google-tensor:Tensor_G5", "Google Tensor ML SDK", "ai_edge_litert_sdk_google_tensor"),
        ("samsung:E2500", "Samsung", "ai_edge_litert_sdk_samsung"),
    ],
)
def test_other_vendors_fail_with_one_line_naming_the_sdk(spec, sdk, where, monkeypatch):
    monkeypatch.delenv("GOOGLE_TENSOR_COMPILER_LIB", raising=False)
    with pytest.raises(NpuSetupError) as e:
        parse_npu_targets(spec)
    msg = str(e.value)
    assert sdk in msg and where in msg and "not found" in msg
    assert "\n" not in msg and e.value.exit_code == 2


def test_vendor_sdk_found_still_fails_but_says_where(tmp_path, monkeypatch):
    (tmp_path / "libfoo.so").write_bytes(b"")
    monkeypatch.setenv("GOOGLE_TENSOR_COMPILER_LIB", str(tmp_path))
    with pytest.raises(NpuSetupError) as e:
        parse_npu_targets("google_tensor:Tensor_G4")
    assert f"found at {tmp_path}" in str(e.value) and "qualcomm" in str(e.value)


def test_targeting_xml_matches_litert_writer():
    from ai_edge_litert.aot.ai_pack import export_lib
    from ai_edge_litert.aot.vendors.qualcomm import qualcomm_backend

    targets = parse_npu_targets("qualcomm:SM8750,SM8650,SA8295")
    backends = [qualcomm_backend.QualcommBackend.create({"backend_id": "qualcomm", "soc_model": t.soc}) for t in targets]
    assert targeting_xml(targets) == export_lib._build_targeting_config(backends)
    assert "SA8295" not in targeting_xml(targets)


def _fake(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _result(model, soc, status, file=None):
    return NpuResult(
        model,
        soc,
        status,
        str(file) if file else None,
        "x" if file else None,
        3 if file else None,
        5,
        5,
        1,
        "2.50",
        None if status == COMPILED else "Op Dequantize does not support per-channel quant tensor",
        0.1,
    )


def test_ai_pack_layout_matches_litert_export(tmp_path):
    """Same files, same bytes, same XML as ai_edge_litert.aot.ai_pack.export_lib.export for one model."""
    from ai_edge_litert.aot.ai_pack import export_lib
    from ai_edge_litert.aot.core import aot_types
    from ai_edge_litert.aot.vendors import fallback_backend
    from ai_edge_litert.aot.vendors.qualcomm import qualcomm_backend

    fb = _fake(tmp_path / "bundle" / "unet.tflite", b"fallback")
    c50 = _fake(tmp_path / "work" / "unet_Qualcomm_SM8750.tflite", b"compiled-8750")
    c65 = _fake(tmp_path / "work" / "unet_Qualcomm_SM8650.tflite", b"compiled-8650")
    targets = parse_npu_targets("qualcomm:SM8750,SM8650")

    res = aot_types.CompilationResult()
    res.models_with_backend.append(
        (fallback_backend.FallbackBackend.create({"backend_id": "fallback"}), aot_types.Model(path=fb))
    )
    for t, f in zip(targets, (c50, c65)):
        b = qualcomm_backend.QualcommBackend.create({"backend_id": "qualcomm", "soc_model": t.soc})
        res.models_with_backend.append((b, aot_types.Model(model_bytes=f.read_bytes())))
    export_lib.export(res, tmp_path / "litert", "unet", "unet")

    placed = write_ai_pack(
        tmp_path / "ours",
        {"unet": fb},
        [_result("unet", "SM8750", COMPILED, c50), _result("unet", "SM8650", COMPILED, c65)],
        targets,
        gradle=False,
    )

    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "npu.json"}

    assert tree(tmp_path / "ours") == tree(tmp_path / "litert")
    assert {r.file for r in placed} == {
        f"unet/src/main/assets/model#group_Qualcomm_{s}/unet.tflite" for s in ("SM8750", "SM8650")
    }
    assert not c50.exists()  # compiled files are moved, not copied


def test_ai_pack_puts_fallback_where_a_model_failed_and_records_why(tmp_path):
    fb_te = _fake(tmp_path / "b" / "text_encoder.tflite", b"te-fallback")
    fb_u = _fake(tmp_path / "b" / "unet.tflite", b"unet-fallback")
    c = _fake(tmp_path / "w" / "unet_Qualcomm_SM8750.tflite", b"unet-8750")
    targets = parse_npu_targets("qualcomm:SM8750")
    results = [_result("text_encoder", "SM8750", FALLBACK), _result("unet", "SM8750", COMPILED, c)]
    write_ai_pack(
        tmp_path / "pack", {"text_encoder": fb_te, "unet": fb_u}, results, targets, extra={"unet": {"precision": "w8a8"}}
    )
    a = tmp_path / "pack"
    assert (a / "text_encoder/src/main/assets/model#group_Qualcomm_SM8750/text_encoder.tflite").read_bytes() == b"te-fallback"
    assert (a / "unet/src/main/assets/model#group_Qualcomm_SM8750/unet.tflite").read_bytes() == b"unet-8750"
    assert (a / "unet/src/main/assets/model#group_other/unet.tflite").read_bytes() == b"unet-fallback"
    assert 'packName = "unet"' in (a / "unet/build.gradle.kts").read_text()
    doc = json.loads((a / "npu.json").read_text())
    te = doc["models"]["text_encoder"]["targets"]["SM8750"]
    assert te["status"] == FALLBACK and te["file"] is None and "per-channel" in te["reason"]
    assert doc["models"]["unet"]["precision"] == "w8a8" and doc["models"]["unet"]["asset_path"] == "model/unet.tflite"
    assert doc["groups"] == ["Qualcomm_SM8750"]


_LOG = """INFO: [compiler_plugin.cc:948] Applying plugin with SDK version: v2.50.40.260831140417
INFO: [compiler_plugin.cc:742] Partitioned subgraph<0>, selected 137 ops, from a total of 137 ops. resulted in 1 partitions.
     0.0ms [  INFO ]   <I> QnnGraph_addNode started.
     0.0ms [ ERROR ]   <E> Op Dequantize does not support per-channel quant tensor
     0.0ms [ERROR: [qnn_compose_graph.cc:1908] Failed to add node, error: 1000, message: QNN_COMMON_ERROR_NOT_SUPPORTED: API
ERROR: [apply_plugin.cc:455] ERROR: [litert/compiler/plugin/compiler_plugin.cc:504]
 ERROR ]   <E> Failed to construct common node for graph 256
"""


def test_failure_reason_is_qnns_first_specific_error():
    assert failure_reason(_LOG, 3) == "Op Dequantize does not support per-channel quant tensor (QNN_COMMON_ERROR_NOT_SUPPORTED)"
    load = "WARNING: Failed to load plugin\n└ Could not load shared library /x/libPlugin.so: libQnnLpai.so: cannot open\n"
    assert failure_reason(load, 1).startswith("Could not load shared library") and "libQnnLpai.so" in failure_reason(load, 1)
    assert "exited with 7" in failure_reason("", 7)


def test_qnn_host_from_env_and_lpai_alias(tmp_path, monkeypatch):
    for n in REQUIRED_LIBS:
        (tmp_path / n).write_bytes(b"")
    monkeypatch.setenv(ENV_LIB_DIR, str(tmp_path))
    host = find_qnn_host()
    assert host.lib_dir == tmp_path and host.source == "env" and not host.has_lpai
    with plugin_library_path(host) as path:
        parts = path.split(os.pathsep)
        assert parts[0] == str(tmp_path)
        alias = Path(parts[1]) / LPAI
        assert alias.is_symlink() and os.readlink(alias) == str(tmp_path / "libQnnSaver.so")
    assert not alias.exists()  # the alias folder is removed afterwards


def test_qnn_host_env_missing_libs_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "libQnnHtp.so").write_bytes(b"")
    monkeypatch.setenv(ENV_LIB_DIR, str(tmp_path))
    with pytest.raises(NpuSetupError) as e:
        find_qnn_host()
    assert "libQnnSystem.so" in str(e.value) and "libQnnHtp.so," not in str(e.value) and "\n" not in str(e.value)


def test_real_lpai_is_used_when_present(tmp_path, monkeypatch):
    for n in (*REQUIRED_LIBS, LPAI):
        (tmp_path / n).write_bytes(b"")
    monkeypatch.setenv(ENV_LIB_DIR, str(tmp_path))
    with plugin_library_path(find_qnn_host()) as path:
        assert path == str(tmp_path)


def _dm():
    t = IoTensor("sample", "unet_sample", (2, 4), "float32")
    ids = IoTensor("input_ids", "te_input_ids", (1, 3), "int32")
    return DispatchModel(Path("m.tflite"), "unet", "qnn_partition_0", 10, 10, "Qualcomm", "SM8750", (t, ids), ())


def test_feeds_are_keyed_by_signature_names_and_checked():
    d = _dm()
    out = _coerce_feeds(d, {"sample": np.zeros((2, 4)), "input_ids": np.arange(3, dtype=np.int64).reshape(1, 3)})
    assert (
        set(out) == {"unet_sample", "te_input_ids"}
        and out["unet_sample"].dtype == np.float32
        and out["te_input_ids"].dtype == np.int32
    )
    with pytest.raises(InputError, match="'sample' has shape"):
        _coerce_feeds(d, {"sample": np.zeros((1, 4)), "input_ids": np.zeros((1, 3), np.int32)})
    with pytest.raises(InputError, match="missing input"):
        _coerce_feeds(d, {"sample": np.zeros((2, 4))})
    with pytest.raises(InputError, match="is float64"):
        _coerce_feeds(d, {"sample": np.zeros((2, 4)), "input_ids": np.zeros((1, 3))})


def test_psnr_and_floors():
    assert psnr(np.array([1.0, -1.0]), np.array([1.1, -1.0])) == pytest.approx(20 * math.log10(1 / math.sqrt(0.005)))
    assert psnr(np.ones(3), np.ones(3)) == math.inf
    assert floor_for("fp32", "none") == floor_for("fp32", None) and floor_for("fp32", "w8a8") < floor_for("fp16", "fp16")
    feeds = seeded_feeds([IoTensor("input_ids", "t", (1, 77), "int32"), IoTensor("timestep", "s", (2,), "float32")], seed=1)
    assert feeds["input_ids"].dtype == np.int32 and 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 1000
    assert np.array_equal(feeds["input_ids"], seeded_feeds([IoTensor("input_ids", "t", (1, 77), "int32")], seed=1)["input_ids"])


def _fake_sdk(root: Path, with_libs: bool) -> Path:
    pkg = root / "ai_edge_litert_sdk_qualcomm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    libs = pkg / "data" / "lib" / "x86_64-linux-clang"
    if with_libs:
        libs.mkdir(parents=True)
        for n in REQUIRED_LIBS:
            (libs / n).write_bytes(b"")
    return libs


def test_litert_sdk_package_is_used_when_its_download_worked(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_LIB_DIR, raising=False)
    libs = _fake_sdk(tmp_path, with_libs=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = find_qnn_host()
    assert host.source == "ai-edge-litert-sdk-qualcomm" and host.lib_dir == libs


def test_litert_sdk_package_without_its_sdk_is_skipped(tmp_path, monkeypatch):
    """pip installs ai-edge-litert-sdk-qualcomm with exit 0 even when its build could not download QAIRT."""
    monkeypatch.delenv(ENV_LIB_DIR, raising=False)
    libs = _fake_sdk(tmp_path, with_libs=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = find_qnn_host()
    except NpuSetupError as e:
        assert str(libs) in str(e) and "onnxruntime-qnn==2.6.0" in str(e)
    else:
        assert host.source == "onnxruntime-qnn"
