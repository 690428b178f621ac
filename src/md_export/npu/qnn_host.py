"""Where the x86-64 QNN host libraries come from, and how LiteRT's Qualcomm compiler plugin is made to load them.

Sources, first found wins:
1. `$MD_EXPORT_QNN_LIB_DIR`: a folder with the QNN host libraries (e.g. a QAIRT SDK's lib/x86_64-linux-clang).
2. `ai_edge_litert_sdk_qualcomm`: LiteRT's own SDK package, when its build managed to download QAIRT.
3. `onnxruntime_qnn` (PyPI `onnxruntime-qnn`): its wheel carries libQnnHtp.so, libHtpPrepare.so, libQnnSystem.so,
   libQnnIr.so and libQnnSaver.so for x86-64 Linux. 2.6.0 carries QNN 2.50.40, the release ai-edge-litert 2.3.0's
   plugin was built against (QAIRT 2.50).

LiteRT's plugin (`libLiteRtCompilerPlugin_Qualcomm.so`) lists `libQnnLpai.so` as DT_NEEDED, but imports no symbol
from any QNN library (it dlopens libQnnHtp.so / libQnnSystem.so by name), and it opens the LPAI backend only when asked
to compile for LPAI, which md-export never does. The onnxruntime-qnn wheel has no libQnnLpai.so. So the loader's need
is met with a symlink named libQnnLpai.so pointing at the wheel's own libQnnSaver.so (also DT_NEEDED by the plugin,
so glibc maps the same file once): no binary is built or downloaded. The symlink lives in a private temporary folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from md_export.npu._errors import NpuSetupError

ENV_LIB_DIR = "MD_EXPORT_QNN_LIB_DIR"
# What LiteRT 2.3.x's plugin was built against; recorded as the pairing to install.
PAIRED_ORT_QNN = "onnxruntime-qnn==2.6.0"
REQUIRED_LIBS = ("libQnnHtp.so", "libHtpPrepare.so", "libQnnSystem.so", "libQnnIr.so", "libQnnSaver.so")
LPAI = "libQnnLpai.so"
INSTALL_HINT = f"pip install {PAIRED_ORT_QNN} (or run scripts/setup_npu.sh)"


@dataclasses.dataclass(frozen=True)
class QnnHost:
    lib_dir: Path
    source: str  # "env", "ai-edge-litert-sdk-qualcomm" or "onnxruntime-qnn"
    version: str | None  # QNN version the source declares (the compile log states the one actually loaded)

    @property
    def has_lpai(self) -> bool:
        return (self.lib_dir / LPAI).exists()


def _missing(d: Path) -> list[str]:
    return [n for n in REQUIRED_LIBS if not (d / n).is_file()]


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _ort_qnn_version(pkg: Path) -> str | None:
    info = pkg / "build_and_package_info.py"
    if not info.is_file():
        return None
    m = re.search(r"qnn_version\s*=\s*['\"]([^'\"]+)['\"]", info.read_text())
    return m.group(1) if m else None


def find_qnn_host() -> QnnHost:
    """The QNN host libraries, or a one-line NpuSetupError saying how to install them and where it looked."""
    looked: list[str] = []
    env = os.environ.get(ENV_LIB_DIR)
    if env:
        d = Path(env)
        miss = _missing(d)
        if miss:
            raise NpuSetupError(f"${ENV_LIB_DIR}={env} lacks {', '.join(miss)}; point it at a folder with the QNN host libraries")
        return QnnHost(d, "env", None)
    sdk = _package_dir("ai_edge_litert_sdk_qualcomm")
    if sdk is not None:
        d = sdk / "data" / "lib" / "x86_64-linux-clang"
        looked.append(str(d))
        if d.is_dir() and not _missing(d):
            return QnnHost(d, "ai-edge-litert-sdk-qualcomm", None)
    pkg = _package_dir("onnxruntime_qnn")
    if pkg is not None:
        looked.append(str(pkg))
        if not _missing(pkg):
            return QnnHost(pkg, "onnxruntime-qnn", _ort_qnn_version(pkg))
    else:
        looked.append("the onnxruntime_qnn package (not installed)")
    raise NpuSetupError(f"QNN host libraries not found (looked in {'; '.join(looked)}); install them with: {INSTALL_HINT}")


@contextlib.contextmanager
def plugin_library_path(host: QnnHost) -> Iterator[str]:
    """LD_LIBRARY_PATH entries (host libs first) under which LiteRT's Qualcomm plugin loads; removed on exit."""
    if host.has_lpai:
        yield str(host.lib_dir)
        return
    with tempfile.TemporaryDirectory(prefix="md-export-qnn-") as tmp:
        os.symlink(host.lib_dir / "libQnnSaver.so", Path(tmp) / LPAI)
        yield os.pathsep.join([str(host.lib_dir), tmp])
