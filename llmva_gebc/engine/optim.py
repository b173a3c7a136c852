"""AdamW over the trainable parameters and the LR schedules (registered in ``LR_SCHEDULERS``).

Every schedule is a pure function of the global optimizer step (and, for the step schedule, the
epoch), so its whole state is ``{"step": s}`` and resuming restores it exactly. Each schedule is a
class built as ``LR_SCHEDULERS.get(run.lr_sched)(optimizer, total_steps=..., steps_per_epoch=...,
**schedule_kwargs(run))`` and applied with ``sched.step(global_step, epoch)`` *before* the optimizer
step that ``global_step`` counts (step 0 is the first update).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from llmva_gebc.registry import LR_SCHEDULERS


def param_groups(named_params: Iterable[Tuple[str, nn.Parameter]], weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups: ``ndim >= 2`` (matrices, embeddings) with ``weight_decay``; the rest (biases,
    LayerNorm weights, 1-D query tokens ...) with 0. Frozen parameters are left out."""
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(named_params: Iterable[Tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                    betas: Tuple[float, float], fused: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW as the original (``betas`` from ``run.betas``), weight decay on ``ndim >= 2`` only.

    ``fused`` (``run.fused_adamw``): None = torch's fused kernel when every parameter is on CUDA, the
    default implementation otherwise; True/False force it (the same update either way)."""
    b = tuple(float(x) for x in betas)
    if len(b) != 2:
        from llmva_gebc.config import ConfigError

        raise ConfigError(f"run.betas must have two values, got {list(betas)}")
    groups = param_groups(named_params, weight_decay)
    if fused is None:
        fused = all(p.device.type == "cuda" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=b, fused=bool(fused) or None)  # type: ignore[arg-type]


class _Schedule:
    """Base: ``lr_at(step, epoch)`` is the formula; ``step()`` writes it into every param group."""

    def __init__(self, optimizer: torch.optim.Optimizer, **_: Any) -> None:
        self.optimizer = optimizer
        self.last_step = 0
        self.last_lr = self.lr_at(0, 0)

    def lr_at(self, step: int, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, global_step: int, epoch: int = 0) -> float:
        lr = self.lr_at(global_step, epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step, self.last_lr = global_step, lr
        return lr

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.last_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_step = int(state["step"])


def _warmup(step: int, warmup_steps: int, warmup_lr: float, init_lr: float) -> float:
    return warmup_lr + (init_lr - warmup_lr) * step / warmup_steps


@LR_SCHEDULERS.register("linear_warmup_cosine_lr")
class LinearWarmupCosineLR(_Schedule):
    """Linear warmup then cosine decay, both indexed by the GLOBAL optimizer step ``s`` (0-based):

    * ``s < W``:  ``lr = warmup_lr + (init_lr - warmup_lr) * s / W``
    * ``s >= W``: ``p = min(1, (s - W) / max(1, S - W))``;
      ``lr = min_lr + (init_lr - min_lr) * 0.5 * (1 + cos(pi * p))``

    with ``W = warmup_steps`` and ``S = total_steps`` (all optimizer steps of the run: ``run.max_steps``
    if set, else ``max_epoch * steps_per_epoch``). The original restarts the warmup index in every
    epoch and decays the cosine per epoch; we do neither.
    """

    def __init__(self, optimizer, *, init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int,
                 total_steps: int, **kw: Any) -> None:
        self.init_lr, self.min_lr, self.warmup_lr = init_lr, min_lr, warmup_lr
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        super().__init__(optimizer)

    def lr_at(self, step: int, epoch: int = 0) -> float:
        W, S = self.warmup_steps, self.total_steps
        if step < W:
            return _warmup(step, W, self.warmup_lr, self.init_lr)
        p = min(1.0, (step - W) / max(1, S - W))
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


@LR_SCHEDULERS.register("linear_warmup_step_lr")
class LinearWarmupStepLR(_Schedule):
    """Linear warmup by GLOBAL step, then step decay per epoch ``e`` (0-based):

    * ``s < W``:  ``lr = warmup_lr + (init_lr - warmup_lr) * s / W``
    * ``s >= W``: ``lr = max(min_lr, init_lr * lr_decay_rate ** e)``
    """

    def __init__(self, optimizer, *, init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int,
                 lr_decay_rate: float, **kw: Any) -> None:
        self.init_lr, self.min_lr, self.warmup_lr = init_lr, min_lr, warmup_lr
        self.warmup_steps, self.decay_rate = int(warmup_steps), lr_decay_rate
        super().__init__(optimizer)

    def lr_at(self, step: int, epoch: int = 0) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, self.init_lr)
        return max(self.min_lr, self.init_lr * self.decay_rate ** epoch)


@LR_SCHEDULERS.register("constant_lr")
class ConstantLR(_Schedule):
    """``lr = init_lr`` at every step (after an optional linear warmup as above when ``W > 0``)."""

    def __init__(self, optimizer, *, init_lr: float, warmup_lr: float = 0.0, warmup_steps: int = 0, **kw: Any) -> None:
        self.init_lr, self.warmup_lr, self.warmup_steps = init_lr, warmup_lr, int(warmup_steps)
        super().__init__(optimizer)

    def lr_at(self, step: int, epoch: int = 0) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, self.init_lr)
        return self.init_lr


def schedule_kwargs(run) -> Dict[str, Any]:
    """The schedule arguments from a ``run:`` config node."""
    return {"init_lr": float(run.init_lr), "min_lr": float(run.min_lr), "warmup_lr": float(run.warmup_lr),
            "warmup_steps": int(run.warmup_steps), "lr_decay_rate": float(run.lr_decay_rate)}


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, steps_per_epoch: int,
                    **kwargs: Any) -> _Schedule:
    return LR_SCHEDULERS.get(name)(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch, **kwargs)


__all__ = ["param_groups", "build_optimizer", "build_scheduler", "schedule_kwargs", "LinearWarmupCosineLR",
           "LinearWarmupStepLR", "ConstantLR"]
