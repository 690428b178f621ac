"""Open a saved model in its own runtime (milrun or Core ML, LiteRT, onnxruntime) as a callable
from dict of arrays to dict of arrays; chunked models as a chain."""
