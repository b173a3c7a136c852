"""Batching: the same keys as a sample; tensors stacked on a new batch dim, everything else as lists.

Prompts have different lengths; they stay strings here (the model tokenises and pads them itself,
per sample, so results do not depend on batch-mates). ``ref_points`` keep their float64 dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from llmva_gebc.errors import UserError


def collate_gebc(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """List of sample dicts -> batch dict: tensors (B, ...), strings/None/floats as lists of length B."""
    if len(samples) == 0:
        raise ValueError("collate_gebc: empty list of samples")
    keys = list(samples[0].keys())
    for i, s in enumerate(samples[1:], 1):
        if set(s.keys()) != set(keys):
            raise ValueError(
                f"collate_gebc: sample {i} ({s.get('boundary_id')}) has keys {sorted(s)}, sample 0 has {sorted(keys)}"
            )
    batch: Dict[str, Any] = {}
    for key in keys:
        values: List[Any] = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                detail = ", ".join(f"{s.get('boundary_id')}: {tuple(s[key].shape)}" for s in samples[:8])
                hint = ("; every features file must have the same T (extract them with one "
                        "datasets.<name>.vis_processor.num_frames)" if key == "q_tokens" else "")
                raise UserError(f"key '{key}' has different shapes in one batch ({detail}){hint}")
            batch[key] = torch.stack(values, 0)  # (B, ...)
        else:
            batch[key] = values
    return batch


def collate_for(dataset: Any) -> Callable[[Sequence[Dict[str, Any]]], Dict[str, Any]]:
    """The dataset's own ``collater`` if it has one, else :func:`collate_gebc`."""
    return getattr(dataset, "collater", None) or collate_gebc


def to_device(batch: Dict[str, Any], device: Optional[torch.device]) -> Dict[str, Any]:
    """Move a batch's tensors to ``device`` (None: leave them where they are)."""
    if device is None:
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


__all__ = ["collate_gebc", "collate_for", "to_device"]
