"""Lowering: the captured component to a saved Core ML, TFLite or ONNX file, at the precision
export.py chose. Lowering never compresses."""
