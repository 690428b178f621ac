"""Runtime-independent text-to-image loop: CLIP tokenizer, numpy schedulers, the denoising loop
the apps run (over any runtime's callables), PNG helpers."""

from md_export.pipeline.tokenizer import ClipTokenizer

__all__ = ["ClipTokenizer"]
