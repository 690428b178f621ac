"""Sweeps: recipes x targets x compression levels, one export + check per cell, on Ray or serially."""
