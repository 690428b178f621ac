"""Snapdragon NPU models compiled ahead of time (issue #15).

    targets   parse `qualcomm:SM8650,SM8750`; vendor SDK errors for mediatek / google_tensor / samsung
    qnn_host  where the x86-64 QNN host libraries come from (onnxruntime-qnn) and the libQnnLpai.so alias
    compile   LiteRT AOT compile per model and SoC -> NpuResult; the AI Pack layout + npu.json
    simulate  run a compiled model's QNN context binary in onnxruntime-qnn's x86 HTP simulator (child process)
    check     simulator vs uncompiled .tflite PSNR, floors per precision

Nothing here is imported by md_export at import time; every heavy dependency is imported inside functions.
"""

from md_export.npu.compile import NpuResult, compile_for_npu, export_npu, write_ai_pack
from md_export.npu.targets import NpuTarget, parse_npu_targets

__all__ = ["NpuResult", "NpuTarget", "compile_for_npu", "export_npu", "parse_npu_targets", "write_ai_pack"]
