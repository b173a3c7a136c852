"""Models: the frozen image encoder, the trainable adapter and the LLMVA-GEBC captioner."""
from __future__ import annotations

from llmva_gebc.registry import MODELS


def build_model(mcfg, device=None):
    """Build the model named by ``model.arch`` (registry ``MODELS``)."""
    return MODELS.get(mcfg.arch)(mcfg, device=device)
