"""md-export: diffusion checkpoints to Core ML, TFLite and ONNX, with parity checks."""

__version__ = "0.1.0"
