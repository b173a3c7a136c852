"""Precision names → torch dtypes, with the CPU fallback for fp16."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device | str | None = None, what: str = "precision") -> torch.dtype:
    """``"fp16"`` → torch.float16, except on CPU where fp16 matmuls are slow or missing: fp32 then."""
    try:
        dtype = _DTYPES[str(name).lower()]
    except KeyError:
        from llmva_gebc.config import ConfigError

        raise ConfigError(f"{what} must be one of {sorted(_DTYPES)}, got {name!r}") from None
    if dtype == torch.float16 and torch.device(device or "cpu").type == "cpu":
        log.info("%s=fp16 on CPU: using fp32", what)
        return torch.float32
    return dtype
