"""Shapes: a synthetic captioned image set, a rule-based judge and an evaluator for text-to-image models.

The bundled default model is trained on this vocabulary ("shapes-v1"), so an exported bundle can be
checked for what it draws, not only for how close it is to PyTorch:

- :mod:`md_export.shapes.dataset` draws captioned images ("a small red circle on the left on a blue
  background") on the fly, deterministic given a seed, and lists a fixed evaluation prompt set;
- :mod:`md_export.shapes.judge` reads an image back without a learned model (background from the
  border, the shape from the pixels far from it, its class from the mask's geometry);
- :mod:`md_export.shapes.evaluate` runs any ``generate_fn(prompt, seed) -> image`` over prompts and
  seeds and reports the prompt accuracy and a PNG grid.
"""

VOCABULARY = "shapes-v1"
VOCABULARY_FIELD = "_md_export_vocabulary"

__all__ = ["VOCABULARY", "VOCABULARY_FIELD"]
