"""Per-layer sensitivity as Ray tasks: `md-export sensitivity --ray ...`.

Every layer's score is independent of the others (md_export.compress.sensitivity.analyze with
`only=`), so a component's layers are split into pieces, one task each. The driver records the
calibration inputs once and sends them with every task; a worker rebuilds the component from the
checkpoint (kept for its next task) and scores its piece. The scores come back in the serial
order, the same numbers the serial run gives at the same thread count, so the mixed-bit recipe
built from them is the same. The checkpoint path must exist on every node of a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from md_export.compress import sensitivity as S
from md_export.sweep.executor import map_tasks

_BUILT: dict = {}  # in a worker: (checkpoint, component) -> the component, reused by its next tasks


def score_piece(task: dict) -> list[S.LayerScore]:
    """One task: rebuild `task['component']` from `task['checkpoint']` and score `task['layers']`."""
    import torch

    from md_export.checkpoint.folder import Checkpoint
    from md_export.components.plan import attach_modules, make_plan

    torch.set_num_threads(int(task["threads"]))
    key = (task["checkpoint"], task["component"])
    if key not in _BUILT:
        _BUILT.clear()  # one component per worker at a time: memory stays that of one model
        ckpt = Checkpoint.open(task["checkpoint"])
        plan = make_plan(ckpt)
        attach_modules(plan, ckpt, only=(task["component"],))
        _BUILT[key] = plan.components[task["component"]]
    return S.analyze(_BUILT[key], task["feeds"], task["target"], only=task["layers"])


def ray_analyzer(checkpoint: Path | None, ray_address: str | None, *, num_cpus: int | None = None, pieces: int | None = None,
                 threads: int = 1, on_piece: Callable[[int, int], None] | None = None):
    """An `analyze(component, feeds, target)` for md_export.tools.sensitivity that fans the layers
    out as Ray tasks (`ray_address`: None = a local instance of `num_cpus` CPUs; "auto" or
    "ray://host:port" = that cluster). `pieces`: tasks per component (default: 2 per CPU)."""
    ckpt = None if checkpoint is None else str(Path(checkpoint).resolve())

    def analyze(component, feeds: list[dict[str, np.ndarray]], target: str) -> list[S.LayerScore]:
        names = [n for n, _ in S.layers(component.module)]
        n = max(1, min(len(names), pieces or 2 * (num_cpus or _cpus())))
        # round robin: big and small layers mixed in every piece, so the pieces take about as long
        chunks = [names[i::n] for i in range(n) if names[i::n]]
        tasks = [{"checkpoint": ckpt, "component": component.name, "layers": c, "target": target, "feeds": feeds,
                  "threads": threads} for c in chunks]
        done = []

        def progress(i, _r):
            done.append(i)
            if on_piece is not None:
                on_piece(len(done), len(tasks))

        results = map_tasks(score_piece, tasks, ray_address=ray_address, num_cpus=num_cpus, backend="ray",
                            resources_per_task={"num_cpus": threads}, on_result=progress)
        by_name = {s.name: s for piece in results for s in piece}
        return [by_name[name] for name in names]

    return analyze


def _cpus() -> int:
    import os

    return os.cpu_count() or 1
