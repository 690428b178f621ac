"""Verification: parity floors, per-model and end-to-end checks of saved bundles, reports, lint."""
