"""Fan out a picklable function over items: as Ray tasks when Ray is there (a local instance started
for the call, or an existing cluster), else one item after another in this process.

    results = map_tasks(fn, items)                                   # Ray if installed, else serial
    results = map_tasks(fn, items, ray_address="auto")               # an existing cluster (RAY_ADDRESS)
    results = map_tasks(fn, items, backend="serial")                 # never Ray
    results = map_tasks(fn, items, resources_per_task=lambda it: {"num_cpus": 1, "memory": 2 << 30})

Results come back in the items' order. A task whose worker died (killed, out of memory, node lost)
is run again up to `max_retries` times by Ray; an exception raised by `fn` is never retried. With
`return_exceptions=True` a failed item's slot holds the exception instead of raising it.
`fn` must be importable by the workers (a module-level function of an installed package).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import RAY_HINT, InputError

BACKENDS = ("auto", "ray", "serial")
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # results are small dicts: keep /dev/shm free on shared machines


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray(what: str = "--ray"):
    try:
        import ray
    except ImportError:
        raise InputError(f"{what}: Ray is not installed; install it with: {RAY_HINT}") from None
    return ray


def choose_backend(backend: str = "auto", ray_address: str | None = None) -> str:
    if backend not in BACKENDS:
        raise InputError(f"backend '{backend}': use {', '.join(BACKENDS)}")
    if backend == "serial":
        return "serial"
    if backend == "ray" or ray_address is not None:
        require_ray("--ray" if ray_address is None else f"--ray {ray_address}")
        return "ray"
    return "ray" if ray_available() else "serial"


class RaySession:
    """ray.init for the duration of a `with` block: a local instance (num_cpus) or `address=`
    (auto, ray://host:port); an instance already initialised in this process is reused and left up."""

    def __init__(self, ray_address: str | None = None, num_cpus: int | None = None, **init_kwargs):
        self.address, self.num_cpus, self.init_kwargs = ray_address, num_cpus, init_kwargs
        self.started = False
        self.local = ray_address is None

    def __enter__(self):
        ray = require_ray()
        if ray.is_initialized():
            return self
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                  "logging_level": logging.ERROR, **self.init_kwargs}
        if self.address is None:
            kwargs.setdefault("object_store_memory", LOCAL_OBJECT_STORE_BYTES)
            # a local instance for this call only: never join a cluster named by RAY_ADDRESS by accident
            env = os.environ.pop("RAY_ADDRESS", None)
            # Ray renices its workers by 15 by default; here the tasks are the work, so they keep the
            # caller's niceness (`nice -n 10 md-export sweep ...` means nice 10 for every cell)
            nice = os.environ.setdefault("RAY_worker_niceness", "0") if "RAY_worker_niceness" not in os.environ else None
            try:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, **kwargs)
            finally:
                if env is not None:
                    os.environ["RAY_ADDRESS"] = env
                if nice is not None:
                    os.environ.pop("RAY_worker_niceness", None)
        else:
            ray.init(address=self.address, **kwargs)
        self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            import ray

            ray.shutdown()
        return False

    @staticmethod
    def describe() -> dict:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"ray_version": ray.__version__, "nodes": len(nodes), "cluster_resources": ray.cluster_resources()}


def _largest_node() -> dict[str, float]:
    import ray

    best: dict[str, float] = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        for k, v in n.get("Resources", {}).items():
            best[k] = max(best.get(k, 0.0), float(v))
    return best


def _options(req: dict, max_retries: int) -> dict:
    out: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False}
    for k in ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy"):
        if req.get(k) is not None:
            out[k] = req[k]
    if "memory" in out:
        out["memory"] = int(out["memory"])
    return out


def infeasible(req: dict, node: dict[str, float]) -> str | None:
    """Why no node can take this request, or None."""
    for k, have_key in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        want = req.get(k)
        if want and float(want) > node.get(have_key, 0.0) + 1e-9:
            have = node.get(have_key, 0.0)
            if k == "memory":
                return f"memory {float(want) / 2**30:.1f} GiB > {have / 2**30:.1f} GiB on the largest node"
            return f"{k} {want:g} > {have:g} on the largest node"
    return None


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], *, ray_address: str | None = None,
              num_cpus: int | None = None, resources_per_task: dict | Callable[[Any], dict] | None = None,
              max_retries: int = 1, backend: str = "auto", return_exceptions: bool = False,
              on_result: Callable[[int, Any], None] | None = None, init_kwargs: dict | None = None) -> list:
    """fn(item) for every item, in parallel on Ray or one after another; results in items' order.

    ray_address: None = a local Ray instance with `num_cpus` CPUs (all cores by default);
    "auto" or "ray://host:port" = an existing cluster. backend: "auto" (Ray if installed),
    "ray" (error with the install command if not), "serial". resources_per_task: Ray options per
    task ({"num_cpus": 1, "memory": bytes, ...}) or a function of the item giving them.
    on_result(index, result) is called as each result arrives (exceptions included).
    """
    items = list(items)
    if not items:
        return []
    mode = choose_backend(backend, ray_address)
    if mode == "serial":
        return _serial(fn, items, return_exceptions, on_result)
    with RaySession(ray_address, num_cpus, **(init_kwargs or {})) as session:
        return _on_ray(fn, items, resources_per_task, max_retries, return_exceptions, on_result, check_fit=session.local)


def _serial(fn, items: Sequence, return_exceptions: bool, on_result) -> list:
    out = []
    for i, item in enumerate(items):
        try:
            r = fn(item)
        except Exception as e:
            if not return_exceptions:
                raise
            r = e
        out.append(r)
        if on_result is not None:
            on_result(i, r)
    return out


def _on_ray(fn, items: Sequence, resources_per_task, max_retries: int, return_exceptions: bool, on_result,
            check_fit: bool) -> list:
    import ray

    remote = ray.remote(fn)
    node = _largest_node() if check_fit else {}
    results: list[Any] = [None] * len(items)
    pending: dict[Any, int] = {}
    for i, item in enumerate(items):
        req = resources_per_task(item) if callable(resources_per_task) else dict(resources_per_task or {})
        why = infeasible(req, node) if check_fit else None
        if why is not None:
            err = InputError(f"task {i}: no node can run it ({why}); lower its request or add a bigger node")
            if not return_exceptions:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise err
            results[i] = err
            if on_result is not None:
                on_result(i, err)
            continue
        pending[remote.options(**_options(req, max_retries)).remote(item)] = i
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                r = ray.get(ref)
            except Exception as e:  # noqa: BLE001
                r = _unwrap(e)
                if not return_exceptions:
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise r from None
            results[i] = r
            if on_result is not None:
                on_result(i, r)
    return results


def _unwrap(e: Exception) -> Exception:
    """A RayTaskError carrying fn's own exception -> that exception; worker or node loss stays as Ray's."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, Exception) else e
