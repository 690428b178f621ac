"""Writing bundles: tokenizer, scheduler and manifest files beside the models."""
