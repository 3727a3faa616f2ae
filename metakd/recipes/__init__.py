"""End-to-end recipes that reproduce a paper with the library's primitives.

The command line (``metakd train ...``) and the ``examples/`` scripts are thin front-ends over
these functions.
"""

from metakd.recipes.maml import MAMLConfig, run_maml

__all__ = ["MAMLConfig", "run_maml"]
