"""Torch-frontend op translations that coremltools 9.0 lacks for the torch.export path.

`register_missing_torch_ops()` adds them to coremltools' torch op registry. It is idempotent:
an op that coremltools already knows (its own translation, or ours from an earlier call) is left
alone. The Core ML backend calls it before every conversion.

Registered:
- ``alias``: a view with no data movement (torch.export emits it, e.g. in transformers' CLIP
  text model). Translated as identity: the MIL value of its input becomes its output.
"""

from __future__ import annotations


def _alias(context, node):
    # node.inputs[0] is the name of the aliased tensor; later args (none for aten.alias) ignored.
    x = context[node.inputs[0]]
    context.add(x, torch_name=node.name)


_MISSING = {"alias": _alias}


def register_missing_torch_ops() -> list[str]:
    """Register the translations above that coremltools does not have yet.

    Returns the names registered by this call (empty on a repeated call).
    """
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    mapping = _TORCH_OPS_REGISTRY.name_to_func_mapping
    added = []
    for name, func in _MISSING.items():
        if name not in mapping:
            _TORCH_OPS_REGISTRY.set_func_by_name(func, name)
            added.append(name)
    return added
