"""Checkpoint files, weights_only loading and atomic replacement under injected crashes."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from llmva_gebc.engine import checkpointing as ckpt


def _write(target, value: float, step: int):
    return ckpt.save_checkpoint(target, {"w": torch.full((2, 3), value)},
                                {"global_step": step, "rng": [ckpt.get_rng_state()], "opt": {"lr": 0.1}})


def test_roundtrip_weights_only(tmp_path):
    d = _write(tmp_path / "checkpoint_last", 1.0, 3)
    assert sorted(os.listdir(d)) == ["model.safetensors", "trainer_state.pt"]
    torch.load(d / "trainer_state.pt", weights_only=True)  # no pickled objects inside
    w, st, where = ckpt.load_checkpoint(d)
    assert torch.equal(w["w"], torch.full((2, 3), 1.0)) and st["global_step"] == 3 and where == d
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last"]  # no .tmp / .old left


def test_rng_state_roundtrip():
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    st = ckpt.get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    ckpt.set_rng_state(st)
    b = (random.random(), np.random.rand(), torch.rand(1))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_call", [1, 2])
def test_crash_between_write_and_rename_keeps_previous(tmp_path, monkeypatch, fail_call):
    """Call 1: renaming the old checkpoint away; call 2: moving the new one into place."""
    target = tmp_path / "checkpoint_last"
    _write(target, 1.0, 1)
    calls = {"n": 0}
    real_replace = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_call:
            raise Boom("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", flaky)
    with pytest.raises(Boom):
        _write(target, 2.0, 2)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    w, st, where = ckpt.load_checkpoint(target)
    assert st["global_step"] == 1 and torch.equal(w["w"], torch.full((2, 3), 1.0))
    assert where.name == ("checkpoint_last" if fail_call == 1 else "checkpoint_last.old")
    # the next save recovers the normal layout
    _write(target, 3.0, 3)
    w, st, where = ckpt.load_checkpoint(target)
    assert st["global_step"] == 3 and where == target
    assert not (tmp_path / "checkpoint_last.old").exists()


def test_crash_while_writing_files_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    _write(target, 1.0, 1)

    def broken_save(*a, **k):
        raise Boom("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(Boom):
        _write(target, 2.0, 2)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(target)[1]["global_step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ckpt.load_checkpoint(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="checkpoint_last"):
        ckpt.find_resume_dir(tmp_path)
    _write(tmp_path / "checkpoint_last", 1.0, 5)
    assert ckpt.find_resume_dir(tmp_path) == tmp_path / "checkpoint_last"  # a run dir is accepted
