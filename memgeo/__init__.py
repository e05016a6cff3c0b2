"""memgeo: the geometry of generalization and memorization, re-runnable at any scale.

Flow: config -> data -> model -> train (checkpoints) -> probe (activations) -> geometry -> figures.
"""
__version__ = "0.1.0"
