"""Mobile rewrites: small registered units that swap modules before capture.

Each rewrite says which targets it is for, whether it keeps numerics (equal up to float
rounding) or changes them (then it runs only when asked for by name, and the manifest records
it), what it matches, and its apply step returns how many places it changed. A requested rewrite
that matches nothing is an error saying why. Rewrites swap modules (or set a diffusers attention
processor) on copies of the reference modules; no global switches, no load_state_dict hooks:
when a weight changes shape it is reshaped visibly at the swap.

Names may carry a family before '=' (``attention=split-einsum``); a family takes one value per
target, so ``--rewrite attention=original`` replaces the default ``attention=split-einsum``.
"""

# Importing the package registers every rewrite (catalog.py) in the registry (registry.py).
from md_export.rewrites import catalog  # noqa: E402,F401
