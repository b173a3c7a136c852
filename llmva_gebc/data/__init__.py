"""llmva_gebc.data: datasets, processors, samplers. The GEBC terms below are here, free of torch, so
that score mode (``evaluate.py --score``) imports no torch."""

# The caption types of a boundary, in the order of a boundary's samples and of a submission.
TYPES = ("subject", "status_before", "status_after")
# The five GEBC boundary labels.
LABELS = (
    "Change of Action", "Change of Subject", "Change of Object Being Interacted", "Change of Color", "Multiple",
)
