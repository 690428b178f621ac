"""Chained chunks: one runner from the runners of a model's pieces, in run order."""

from __future__ import annotations

import numpy as np


def chain(runners, input_names):
    """One runner from chunk runners: chunk i is fed its inputs from the model inputs and the
    outputs of the chunks before it; the result is the last chunk's outputs."""

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        out: dict[str, np.ndarray] = {}
        for runner, names in zip(runners, input_names):
            missing = [k for k in names if k not in env]
            if missing:
                raise ValueError(f"chunk input(s) {', '.join(missing)} are produced by no earlier chunk")
            out = runner({k: env[k] for k in names})
            env.update(out)
        return out

    return run
