"""Capture: one torch.export of a wrapped component, shared by every backend."""
