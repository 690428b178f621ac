"""Lowering backends: Core ML, TFLite, ONNX. Each is imported lazily so its package is optional."""
