"""llmva-gebc: Generic Event Boundary Captioning with a frozen LLM (LLMVA-GEBC).

Importing the package registers every dataset builder, model, processor, task, runner and LR
scheduler, through the explicit imports below (no star-imports, no import-time I/O or network).
"""
from llmva_gebc import registry  # noqa: F401
from llmva_gebc import config  # noqa: F401

# Registration: each import below runs the module's @REGISTRY.register decorators.
# (model registration import is added when models/llmva_gebc.py lands)

__version__ = "0.1.0"
