"""Core ML reference evaluator for Linux: runs a saved .mlpackage's MIL program op by op in numpy.

    from md_export.milrun import MilEvaluator, run_mlpackage, op_histogram
    ev = MilEvaluator("model.mlpackage")
    out = ev.predict({"sample": x, ...})   # {output name: np.ndarray}

See :mod:`md_export.milrun.evaluator` for the execution model (declared dtypes, fp16 rounding,
compressed weights) and :data:`md_export.milrun.kernels.KERNELS` for the implemented ops.
"""

from md_export.milrun.evaluator import MilEvaluator, op_histogram, run_mlpackage
from md_export.milrun.kernels import KERNELS

__all__ = ["MilEvaluator", "run_mlpackage", "op_histogram", "KERNELS"]
