"""llmva_gebc.data: datasets, processors, samplers. The GEBC terms below are here, free of torch, so
that score mode (``evaluate.py --score``) imports no torch."""

# The caption types of a boundary, in the order of a boundary's samples and of a submission.
TYPES = ("subject", "status_before", "status_after")
# The five GEBC boundary labels.
LABELS = (
    "Change of Action", "Change of Subject", "Change of Object Being Interacted", "Change of Color", "Multiple",
)


def is_number(value: object) -> bool:
    """A real number (int, float, numpy scalar), not a bool (``True`` would read as 1 s) and not a string
    (``"2.5"`` hides a broken export). The one rule for timestamps and durations in every input."""
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def caption_problem(value: object) -> "str | None":
    """Why a reference caption cannot be one, or None: it must be a string with a visible character.
    An empty or blank reference scores every prediction of its boundary 0 and trains the model to say
    nothing, silently; the release has none. One rule for the dataset and for scoring."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r}"
    if not value.strip():
        return f"is empty or blank ({value!r}); a reference caption needs words"
    return None
