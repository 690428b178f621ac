"""Compression of a saved model: levels (one parser), per-target compression, size accounting,
calibration, per-layer sensitivity, chunking."""
