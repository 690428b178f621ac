"""The names md-export is built around, defined once: targets, components, precisions,
deployment targets, compute units, schedulers, parity keys."""

from __future__ import annotations

TARGETS = ("coreml", "tflite", "onnx")
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")  # also the order they are exported in
PARITY_KEYS = COMPONENTS + ("end_to_end", "all")
PRECISIONS = ("fp32", "fp16")
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
SCHEDULERS = ("ddim", "euler", "dpmpp-2m", "lcm")  # md-export's loop names
LAYOUTS = ("md-export", "apple")  # bundle layouts: md-export's own contract; Apple's ml-stable-diffusion Swift package (Core ML)
TEXT_LENGTH = 77  # CLIP's context length: every text encoder input is [1, 77]
