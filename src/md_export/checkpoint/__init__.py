"""Checkpoints on disk: diffusers folders, component folders, single files, LoRA; random-weight
checkpoints of a family (`md-export init`)."""
