"""Task functions for the executor tests: a module the Ray workers import (the tests put this folder
on their PYTHONPATH)."""

import os
import time


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def crash_once(arg):
    """The first attempt kills its own worker process (as an OOM kill or a lost node would)."""
    marker, value = arg
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
    return value * 10, os.getpid()


def where(x):
    import ray

    time.sleep(1.5)
    return x, ray.get_runtime_context().get_node_id()
