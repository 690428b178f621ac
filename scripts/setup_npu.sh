#!/usr/bin/env bash
# Put the QNN host libraries in place for `md-export tflite --npu qualcomm:...` and the HTP simulator, from PyPI only.
#
#   scripts/setup_npu.sh                 install onnxruntime-qnn into .venv (no conflict: it is a plugin execution
#                                        provider in its own module, onnxruntime_qnn, on top of onnxruntime>=1.24.2)
#   NPU_VENV=/path scripts/setup_npu.sh  instead make a separate venv with just the simulator side (numpy,
#                                        onnxruntime, onnxruntime-qnn) and print the MD_EXPORT_NPU_PYTHON and
#                                        MD_EXPORT_QNN_LIB_DIR to export
#
# onnxruntime-qnn 2.6.0 carries QNN 2.50.40 for x86-64 Linux (libQnnHtp.so, libHtpPrepare.so, libQnnSystem.so,
# libQnnIr.so, libQnnSaver.so), the release ai-edge-litert 2.3.0's Qualcomm compiler plugin was built against.
# Nothing is downloaded at run time and nothing is compiled: the plugin's unused libQnnLpai.so dependency is met by a
# symlink md-export makes in a temporary folder (src/md_export/npu/qnn_host.py).
# The QNN libraries are Qualcomm's, under the "AI Stack License" in the wheel (onnxruntime_qnn/Qualcomm_LICENSE.pdf).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ORT_QNN="onnxruntime-qnn==2.6.0"
if [ -n "${NPU_VENV:-}" ]; then
  [ -x "$NPU_VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$NPU_VENV"
  "$NPU_VENV/bin/python" -m pip install -q -c constraints/ci.txt "$ORT_QNN" numpy onnxruntime
  LIB=$("$NPU_VENV/bin/python" -c 'import onnxruntime_qnn, os; print(os.path.dirname(onnxruntime_qnn.__file__))')
  echo "export MD_EXPORT_NPU_PYTHON=$NPU_VENV/bin/python"
  echo "export MD_EXPORT_QNN_LIB_DIR=$LIB"
else
  .venv/bin/python -m pip install -q -c constraints/ci.txt "$ORT_QNN"
  .venv/bin/python -c 'from md_export.npu.qnn_host import find_qnn_host as f; h = f(); print(f"QNN host libraries: {h.lib_dir} ({h.source} {h.version})")'
fi
