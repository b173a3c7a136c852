"""The only module that touches ``torch.distributed`` (single-process fallbacks until initialised)."""
from __future__ import annotations

import torch.distributed as _td


def is_initialized() -> bool:
    return _td.is_available() and _td.is_initialized()


def get_rank() -> int:
    return _td.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return _td.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        _td.barrier()


def all_gather_object(obj) -> list:
    if not is_initialized():
        return [obj]
    out = [None] * get_world_size()
    _td.all_gather_object(out, obj)
    return out
