"""AdamW parameter groups and the registered LR schedules against their formulas."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmva_gebc.engine.optim import build_optimizer, build_scheduler, param_groups
from llmva_gebc.registry import LR_SCHEDULERS

KW = dict(init_lr=8e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=100, lr_decay_rate=0.9)


def _opt():
    return torch.optim.AdamW([nn.Parameter(torch.zeros(2, 2))], lr=1.0)


def test_original_names_registered():
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant_lr"} <= set(LR_SCHEDULERS.names())


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 550, 999, 1000, 5000])
def test_warmup_cosine_formula_by_global_step(step):
    opt = _opt()
    s = build_scheduler("linear_warmup_cosine_lr", opt, total_steps=1000, steps_per_epoch=37, **KW)
    # the epoch argument must not matter: warmup and cosine are indexed by the global step
    lr = s.step(step, epoch=step // 37)
    if step < 100:
        want = 1e-6 + (8e-5 - 1e-6) * step / 100
    else:
        p = min(1.0, (step - 100) / 900)
        want = 1e-5 + (8e-5 - 1e-5) * 0.5 * (1 + math.cos(math.pi * p))
    assert lr == pytest.approx(want, rel=1e-12)
    assert opt.param_groups[0]["lr"] == lr
    assert s.lr_at(step, 0) == s.lr_at(step, 99)


def test_warmup_cosine_endpoints():
    s = build_scheduler("linear_warmup_cosine_lr", _opt(), total_steps=1000, steps_per_epoch=10, **KW)
    assert s.lr_at(0) == pytest.approx(1e-6)
    assert s.lr_at(100) == pytest.approx(8e-5)
    assert s.lr_at(1000) == pytest.approx(1e-5)
    lrs = [s.lr_at(i) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_step_lr_formula():
    s = build_scheduler("linear_warmup_step_lr", _opt(), total_steps=0, steps_per_epoch=10, **KW)
    assert s.lr_at(50, epoch=0) == pytest.approx(1e-6 + (8e-5 - 1e-6) * 0.5)
    assert s.lr_at(150, epoch=1) == pytest.approx(8e-5 * 0.9)
    assert s.lr_at(150, epoch=3) == pytest.approx(8e-5 * 0.9 ** 3)
    assert s.lr_at(150, epoch=40) == pytest.approx(1e-5)  # floor at min_lr


def test_constant_and_state_roundtrip():
    s = build_scheduler("constant_lr", _opt(), total_steps=10, steps_per_epoch=10, **dict(KW, warmup_steps=0))
    assert s.step(7) == 8e-5
    assert s.state_dict() == {"step": 7}
    t = build_scheduler("constant_lr", _opt(), total_steps=10, steps_per_epoch=10, **dict(KW, warmup_steps=0))
    t.load_state_dict(s.state_dict())
    assert t.last_step == 7


def test_unknown_schedule_lists_known():
    with pytest.raises(KeyError, match="linear_warmup_cosine_lr"):
        build_scheduler("cosine", _opt(), total_steps=1, steps_per_epoch=1, **KW)


def test_weight_decay_only_on_matrices():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    m[2].weight.requires_grad_(False)
    groups = param_groups(m.named_parameters(), 0.01)
    decay = {id(p) for g in groups if g["weight_decay"] == 0.01 for p in g["params"]}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decay == {id(m[0].weight)}
    assert no_decay == {id(m[0].bias), id(m[1].weight), id(m[1].bias)}
    opt = build_optimizer(m.named_parameters(), 1e-3, 0.01, [0.9, 0.98])
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups([("w", nn.Parameter(torch.zeros(2), requires_grad=False))], 0.1)
