"""memgeo: the geometry of generalization and memorization, re-runnable at any scale.

Flow: config -> data -> model -> train (run folders) -> analyses (probe + geometry, rewind, sweep,
gradients; results in the result cache) -> verdicts (the claims' rules) -> reports (what each page
says) -> the notebooks in book/, which glue the reports' values and draw their tables (plotting).
The README's "The library" section lists every module.
"""
__version__ = "0.1.0"
