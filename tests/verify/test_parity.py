"""`md-export check`: passes on honest bundles, fails on corrupted ones, and never counts a
check that did not run as a pass."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from md_export.cli.app import main
from md_export.core.metrics import compare, cosine, psnr

TARGETS = ("coreml", "tflite", "onnx")


def test_psnr_and_cosine():
    ref = np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32)
    assert psnr(ref, ref) == math.inf
    noisy = ref + np.array([0.02, 0.0, 0.0, 0.0], dtype=np.float32)
    # RMSE = 0.02 / 2 = 0.01; peak 2 -> 20*log10(200)
    assert psnr(ref, noisy) == pytest.approx(20 * math.log10(200), rel=1e-5)
    assert cosine(ref, -ref) == pytest.approx(-1.0)
    m = compare(ref, noisy)
    assert m["max_abs"] == pytest.approx(0.02, rel=1e-5) and m["mean_abs"] == pytest.approx(0.005, rel=1e-5)
    with pytest.raises(ValueError):
        compare(ref, ref[:2])


@pytest.fixture(scope="module")
def checked(default_export, tmp_path_factory):
    """`md-export check out/` on the shared default bundles, once."""
    out_dir = default_export["onnx"].bundle.parent
    report = tmp_path_factory.mktemp("report") / "report.json"
    code = main(["check", str(out_dir), "--samples", "2", "--seed", "0", "--json", str(report), "-q"])
    return code, json.loads(report.read_text()), out_dir


def test_check_passes_on_default_bundles(checked):
    code, reports, out_dir = checked
    assert code == 0, json.dumps(reports, indent=1)[:3000]
    assert sorted(r["target"] for r in reports) == sorted(TARGETS)
    for r in reports:
        assert r["status"] == "pass"
        models = {c["model"] for c in r["checks"]}
        assert models == {"text_encoder", "unet", "vae_decoder", "end_to_end"}
        for c in r["checks"]:
            assert c["status"] == "pass" and c["psnr"] != "-inf"
    runtimes = {r["target"]: {c["runtime"] for c in r["checks"] if c["model"] == "unet"} for r in reports}
    assert runtimes["coreml"] >= {"milrun"} and runtimes["tflite"] == {"ai-edge-litert"} and runtimes["onnx"] == {"onnxruntime"}


def test_report_files_and_manifest_summary(checked):
    _, _, out_dir = checked
    for t in TARGETS:
        bundle = out_dir / t
        parity = json.loads((bundle / "parity.json").read_text())
        assert parity["schema_version"] == 1 and parity["status"] == "pass"
        assert "| unet |" in (bundle / "parity.md").read_text()
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["parity"]["status"] == "pass" and manifest["parity"]["report"] == "parity.json"
        assert (bundle / "parity_end_to_end.png").is_file()


def _negate_tensor_bytes(path, weight: np.ndarray) -> int:
    """Negate every copy of `weight` (fp32 or fp16, as stored or transposed) found in the file(s)
    under `path`. Returns how many copies were changed."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    candidates = [weight, weight.T] if weight.ndim == 2 else [weight]
    changed = 0
    for f in files:
        data = bytearray(f.read_bytes())
        for w in candidates:
            for dt in (np.float32, np.float16):
                needle = np.ascontiguousarray(w, dtype=dt).tobytes()
                start = data.find(needle)
                while start != -1:
                    data[start : start + len(needle)] = (-np.frombuffer(needle, dtype=dt)).tobytes()
                    changed += 1
                    start = data.find(needle, start + len(needle))
        f.write_bytes(bytes(data))
    return changed


@pytest.mark.parametrize("target", TARGETS)
def test_corrupted_weight_fails_check(target, bundle_copy, capsys):
    """Mutation guard: negate one weight tensor inside the saved artifact -> check exits 1."""
    from md_export.checkpoint.folder import Checkpoint

    bundle = bundle_copy(target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    te = Checkpoint.open(None).load_text_encoder()
    # the second MLP weight of the first layer: a plain [out, in] matrix in every format, fed by GELU so
    # no converter folds anything into it (fc1 takes the trained LayerNorm's scale in TFLite)
    weight = next(p for n, p in te.named_parameters() if n.endswith("layers.0.mlp.fc2.weight")).detach().numpy()
    n = _negate_tensor_bytes(bundle / manifest["models"]["text_encoder"]["file"], weight)
    assert n >= 1, f"weight bytes not found in the {target} artifact"
    code = main(["check", str(bundle), "--no-e2e", "--samples", "1", "-q"])
    capsys.readouterr()
    assert code == 1
    report = json.loads((bundle / "parity.json").read_text())
    te_check = next(c for c in report["checks"] if c["model"] == "text_encoder")
    assert te_check["status"] == "fail"
    assert {c["status"] for c in report["checks"] if c["model"] != "text_encoder"} == {"pass"}


def test_runtime_missing_is_not_run_not_pass(bundle_copy, monkeypatch, capsys):
    from md_export.runtime import onnx as onnx_runtime
    from md_export.core.errors import MissingDependencyError

    bundle = bundle_copy("onnx")

    def missing(*a, **k):
        raise MissingDependencyError("onnxruntime", "onnx")

    monkeypatch.setattr(onnx_runtime, "load", missing)
    code = main(["check", str(bundle), "--no-e2e", "--samples", "1", "-q"])
    assert code == 1
    report = json.loads((bundle / "parity.json").read_text())
    assert report["status"] == "not-run"
    assert all(c["status"] == "not-run" and "onnxruntime" in c["reason"] for c in report["checks"])
    assert main(["check", str(bundle), "--no-e2e", "--samples", "1", "-q", "--allow-skip"]) == 0
    capsys.readouterr()


def test_threshold_override_can_fail_a_check(bundle_copy, capsys):
    bundle = bundle_copy("coreml")
    code = main(["check", str(bundle), "--no-e2e", "--samples", "1", "-q", "--threshold", "unet=200"])
    capsys.readouterr()
    assert code == 1
    report = json.loads((bundle / "parity.json").read_text())
    unet = next(c for c in report["checks"] if c["model"] == "unet")
    assert unet["status"] == "fail" and unet["threshold"]["psnr"] == 200


def test_bad_threshold_is_input_error(bundle_copy, capsys):
    code = main(["check", str(bundle_copy("onnx")), "--threshold", "unet:45"])
    assert code == 2
    assert "MODEL=DB" in capsys.readouterr().err


def test_check_on_non_bundle(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "no md-export bundle" in capsys.readouterr().err


def test_generate_writes_png(default_export, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "fox.png"
    code = main(["generate", str(default_export["tflite"].bundle), "--prompt", "a red fox in snow", "--steps", "2",
                 "--seed", "0", "-o", str(png), "-q"])
    capsys.readouterr()
    assert code == 0
    img = Image.open(png)
    assert img.size == (128, 128) and img.mode == "RGB"
    assert np.asarray(img).std() > 0


def test_quiet_check_prints_nothing(bundle_copy, capfd):
    """-q: not even the TFLite runtime's C++ "Created TensorFlow Lite XNNPACK delegate" line."""
    bundle = bundle_copy("tflite")
    capfd.readouterr()
    assert main(["check", str(bundle), "-q", "--samples", "1", "--no-e2e"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
