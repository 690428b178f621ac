"""Model families: registered units naming a checkpoint's components (configs at a tiny and a full
size), how to recognise them, pipeline facts and per-target defaults. base.py defines a family,
registry.py finds them, sd.py and mobilediffusion.py declare them."""
