"""Child process of md_export.npu.simulate: run one EPContext ONNX model in onnxruntime's QNN HTP simulator.

Runs as a plain script (`python _htp_child.py request.json`) so the interpreter needs only numpy, onnxruntime and
onnxruntime-qnn, not md-export. Protocol:
  request.json  {"model": EPContext .onnx path, "inputs": .npz path (keyed by the node's input names),
                 "outputs": [output names], "out": .npz path to write, "provider_options": {...}}
  stdout        one JSON line: {"load_seconds", "run_seconds", "onnxruntime", "onnxruntime_qnn", "qnn_version"}
  exit code     0 ok; 2 a package is missing; 3 the simulator failed (one line on stderr)
"""

import json
import sys
import time


def main(argv):
    try:
        import numpy as np
        import onnxruntime as ort
        import onnxruntime_qnn as qnn
    except ImportError as e:
        print(
            f"the simulator's interpreter {sys.executable} lacks a package ({e}); pip install onnxruntime-qnn==2.6.0",
            file=sys.stderr,
        )
        return 2
    with open(argv[1]) as f:
        req = json.load(f)
    try:
        ort.register_execution_provider_library(qnn.get_ep_name(), qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.get_ep_name()]
        if not devices:
            print(f"onnxruntime {ort.__version__} lists no {qnn.get_ep_name()} device after registering it", file=sys.stderr)
            return 3
        so = ort.SessionOptions()
        so.log_severity_level = 2
        so.add_provider_for_devices(devices, req.get("provider_options", {"backend_type": "htp"}))
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        t0 = time.perf_counter()
        sess = ort.InferenceSession(req["model"], so)
        t1 = time.perf_counter()
        with np.load(req["inputs"]) as z:
            feeds = {k: z[k] for k in z.files}
        outs = sess.run(req["outputs"], feeds)
        t2 = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - the parent turns this line into its own error
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 3
    np.savez(req["out"], **dict(zip(req["outputs"], outs)))
    info = getattr(qnn, "build_and_package_info", None)
    print(
        json.dumps(
            {
                "load_seconds": round(t1 - t0, 3),
                "run_seconds": round(t2 - t1, 3),
                "onnxruntime": ort.__version__,
                "onnxruntime_qnn": qnn.__version__,
                "qnn_version": getattr(info, "qnn_version", None),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
