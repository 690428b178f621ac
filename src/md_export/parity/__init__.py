"""Parity: run each saved artifact in its own runtime and compare it with the fp32 PyTorch reference."""
