"""Runtime-independent text-to-image loop: CLIP tokenizer, numpy schedulers, the denoising loop
the apps run (over any runtime's callables), PNG helpers."""

from md_export.pipeline.image import save_png, side_by_side, to_uint8
from md_export.pipeline.loop import GUIDANCE_MODES, encode_text, generate, guidance_embedding
from md_export.pipeline.schedulers import SCHEDULERS, Scheduler, make_scheduler
from md_export.pipeline.tokenizer import ClipTokenizer

__all__ = [
    "GUIDANCE_MODES",
    "SCHEDULERS",
    "ClipTokenizer",
    "Scheduler",
    "encode_text",
    "generate",
    "guidance_embedding",
    "make_scheduler",
    "save_png",
    "side_by_side",
    "to_uint8",
]
